"""The Jobs pages: every job with live progress, one job's failures and report, submit, retry, cancel."""

from __future__ import annotations

import contextlib
import csv
import io
import time
from collections.abc import Iterator
from typing import Annotated

import grpc
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse

from taxonstream.v1 import fetcher_pb2
from taxonstream.v1.messages_pb2 import Outcome

from .backends import Backends, ServiceError, service_error
from .security import Forbidden, check_csrf, check_token
from .uploads import UploadError, url_list_records
from .web import backends, json_error, render

router = APIRouter()
REPORT_FIELDS = ["record_id", "job_id", "url", "state", "image_id", "stage", "reason", "message"]
EXAMPLES_PER_REASON = 3
OptionalForm = Annotated[str | None, Form()]


def job_view(job: fetcher_pb2.JobStatus) -> dict:
    finished = job.indexed + job.duplicate + job.failed
    state = "cancelled" if job.cancelled else "done" if job.done else "running"
    return {
        "job_id": job.job_id,
        "source": job.source,
        "total": job.total,
        "indexed": job.indexed,
        "duplicate": job.duplicate,
        "failed": job.failed,
        "finished": finished,
        "state": state,
        "percent": 100.0 * finished / job.total if job.total else 0.0,
        "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(job.created_ms / 1000)) if job.created_ms else "",
        "failed_by_reason": dict(sorted(job.failed_by_reason.items(), key=lambda kv: -kv[1])),
    }


def _jobs(portal: Backends) -> list[dict]:
    jobs = portal.call("fetcher", portal.fetcher.ListJobs, fetcher_pb2.ListJobsRequest(), timeout=30).jobs
    return [job_view(j) for j in sorted(jobs, key=lambda j: -j.created_ms)]


def _job(portal: Backends, job_id: str) -> dict:
    return job_view(portal.call("fetcher", portal.fetcher.GetJob, fetcher_pb2.GetJobRequest(job_id=job_id), timeout=30))


def _outcomes(portal: Backends, job_id: str, states: list[int] | None = None) -> Iterator[Outcome]:
    request = fetcher_pb2.ListOutcomesRequest(job_id=job_id, states=states or [])
    try:
        yield from portal.fetcher.ListOutcomes(request, timeout=300)
    except grpc.RpcError as error:
        raise service_error("fetcher", portal.address("fetcher"), error) from None


def _failure_examples(portal: Backends, job_id: str) -> dict[str, list[Outcome]]:
    found: dict[str, list[Outcome]] = {}
    for outcome in _outcomes(portal, job_id, [Outcome.FAILED]):
        examples = found.setdefault(f"{outcome.stage}:{outcome.reason}", [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(outcome)
    return found


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request) -> HTMLResponse:
    try:
        return render(request, "jobs.html", jobs=_jobs(backends(request)), error="")
    except ServiceError as error:
        return render(request, "jobs.html", error.status, jobs=[], error=str(error))


@router.get("/api/jobs")
def jobs_json(request: Request) -> JSONResponse:
    try:
        return JSONResponse({"jobs": _jobs(backends(request))})
    except ServiceError as error:
        return json_error(error.status, str(error))


@router.post("/jobs")
def submit_job(
    request: Request,
    urls: Annotated[UploadFile | None, File()] = None,
    csrf: Annotated[str | None, Form()] = None,
    token: Annotated[str | None, Form()] = None,
    job_id: Annotated[str, Form()] = "",
) -> Response:
    portal = backends(request)
    try:
        check_csrf(request, csrf)
        check_token(request, portal.settings.portal_token, token)
        if urls is None or not urls.filename:
            raise UploadError("choose a URL list (CSV, TSV, JSONL or Parquet with a url column)")
        cap = portal.settings.url_list_max_bytes
        first, rest = url_list_records(urls.file.read(cap + 1), urls.filename, cap)

        def stream() -> Iterator[fetcher_pb2.SubmitJobRequest]:
            spec = fetcher_pb2.JobSpec(job_id=job_id.strip(), source=urls.filename)
            yield fetcher_pb2.SubmitJobRequest(spec=spec)
            yield fetcher_pb2.SubmitJobRequest(record=first)
            for record in rest:
                yield fetcher_pb2.SubmitJobRequest(record=record)

        status = portal.call("fetcher", portal.fetcher.SubmitJob, stream(), timeout=3600)
    except (UploadError, Forbidden, ServiceError) as error:
        code = error.status if isinstance(error, ServiceError) else 403 if isinstance(error, Forbidden) else 400
        jobs = []
        with contextlib.suppress(ServiceError):  # the list beside the error is a nicety
            jobs = _jobs(portal)
        return render(request, "jobs.html", code, jobs=jobs, error=str(error))
    # Post/redirect/get: reloading the job's page never submits the list again.
    return RedirectResponse(f"/jobs/{status.job_id}", status_code=303)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> HTMLResponse:
    portal = backends(request)
    try:
        job = _job(portal, job_id)
        examples = _failure_examples(portal, job_id) if job["failed"] else {}
    except ServiceError as error:
        return render(request, "job.html", error.status, job=None, job_id=job_id, examples={}, error=str(error))
    return render(request, "job.html", job=job, job_id=job_id, examples=examples, error="")


@router.get("/api/jobs/{job_id}")
def job_json(request: Request, job_id: str) -> JSONResponse:
    try:
        return JSONResponse(_job(backends(request), job_id))
    except ServiceError as error:
        return json_error(error.status, str(error))


def _report_rows(portal: Backends, job_id: str) -> Iterator[dict]:
    for outcome in _outcomes(portal, job_id):
        yield {**{f: getattr(outcome, f) for f in REPORT_FIELDS}, "state": Outcome.State.Name(outcome.state).lower()}


@router.get("/jobs/{job_id}/report.{fmt}")
def report(request: Request, job_id: str, fmt: str) -> Response:
    """Every record's outcome (the same columns as `taxonstream jobs JOB --report`)."""
    portal = backends(request)
    if fmt not in ("csv", "parquet"):
        return json_error(404, f"no report format {fmt!r}: use report.csv or report.parquet")
    try:
        _job(portal, job_id)  # a job that does not exist is a 404, not an empty file
        rows = list(_report_rows(portal, job_id))
    except ServiceError as error:
        return json_error(error.status, str(error))
    headers = {"Content-Disposition": f'attachment; filename="{job_id}-report.{fmt}"'}
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        out = io.BytesIO()
        table = pa.Table.from_pylist(rows) if rows else pa.table({f: pa.array([], pa.string()) for f in REPORT_FIELDS})
        pq.write_table(table, out)
        return Response(out.getvalue(), media_type="application/vnd.apache.parquet", headers=headers)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=REPORT_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return StreamingResponse(iter([text.getvalue()]), media_type="text/csv; charset=utf-8", headers=headers)


def _change(request: Request, job_id: str, csrf: str | None, token: str | None, action: str) -> Response:
    portal = backends(request)
    try:
        check_csrf(request, csrf)
        check_token(request, portal.settings.portal_token, token)
        if action == "retry":
            portal.call("fetcher", portal.fetcher.RetryJob, fetcher_pb2.RetryJobRequest(job_id=job_id), timeout=300)
        else:
            portal.call("fetcher", portal.fetcher.CancelJob, fetcher_pb2.GetJobRequest(job_id=job_id), timeout=30)
    except (Forbidden, ServiceError) as error:
        code = error.status if isinstance(error, ServiceError) else 403
        return render(request, "job.html", code, job=None, job_id=job_id, examples={}, error=str(error))
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


@router.post("/jobs/{job_id}/retry")
def retry(request: Request, job_id: str, csrf: OptionalForm = None, token: OptionalForm = None) -> Response:
    return _change(request, job_id, csrf, token, "retry")


@router.post("/jobs/{job_id}/cancel")
def cancel(request: Request, job_id: str, csrf: OptionalForm = None, token: OptionalForm = None) -> Response:
    return _change(request, job_id, csrf, token, "cancel")
