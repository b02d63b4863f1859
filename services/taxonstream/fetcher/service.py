"""Fetcher service: the job API (gRPC) and the download worker (records → fetched)."""

from __future__ import annotations

import functools
import hashlib
import logging
import time
import uuid
from collections.abc import Iterator

import grpc
from google.protobuf.json_format import MessageToDict, ParseDict
from kafka import KafkaProducer

from taxonstream.core.bus import Bus, Emit, send_all
from taxonstream.core.errors import Failed
from taxonstream.core.server import Service, connect, registrar
from taxonstream.core.store import ObjectStore, job_records_key, job_records_prefix, original_key
from taxonstream.core.worker import StreamWorker, each
from taxonstream.fetcher.jobs import JobTable, follow
from taxonstream.fetching.download import Downloader, RetryLater
from taxonstream.fetching.engine import NOT_SENT
from taxonstream.fetching.hosts import HostGates
from taxonstream.fetching.politeness import RatePolicy
from taxonstream.fetching.robots import Robots, fetch_robots, unreachable
from taxonstream.fetching.safety import host_of
from taxonstream.fetching.settings import FetcherSettings
from taxonstream.fetching.validate import inspect_image
from taxonstream.v1 import fetcher_pb2, fetcher_pb2_grpc
from taxonstream.v1.messages_pb2 import FetchedImage, Job, Outcome, Record

log = logging.getLogger(__name__)
STAGE = "fetcher"
CHUNK = 1000  # records per produce batch and per kept chunk


def url_key(url: str) -> str:
    """Where the fetcher remembers what a URL gave: the bytes' sha256 and what they are."""
    digest = hashlib.sha256(url.strip().encode()).hexdigest()
    return f"urls/{digest[:2]}/{digest}.json"


class FetchWorker:
    """records → download, validate, store the original → fetched."""

    def __init__(self, settings: FetcherSettings, bus: Bus, store: ObjectStore, jobs: JobTable) -> None:
        self.settings = settings
        self.bus = bus
        self.store = store
        self.jobs = jobs
        self.downloader = Downloader(settings)
        self.hosts = HostGates(RatePolicy.from_settings(settings))
        self.agent = settings.robots_agent

    def handle(self, record: Record) -> list[Emit]:
        job = self.jobs.job(record.job_id)
        if job is not None and job.cancelled:
            raise Failed("cancelled", f"job {record.job_id} was cancelled")
        if not record.force and (known := self._already_stored(record)) is not None:
            return [Emit(self.bus.topics.fetched, known.sha256, known)]
        if self.settings.fetch_robots_txt:
            rules = self.hosts.robots(host_of(record.url), lambda: self._read_robots(record.url), self.agent)
            if not rules.allowed(record.url, self.agent):
                reason = "robots_unreachable" if rules.disallow_all else "robots_disallowed"
                raise Failed(reason, rules.why or "robots.txt disallows this URL")
        data, attempts = self._download(record.url)
        info = inspect_image(data, self.settings.fetch_max_pixels)
        sha256 = hashlib.sha256(data).hexdigest()
        key, _ = self.store.put_original(data, sha256, info.mime)
        seen = {"sha256": sha256, "size": len(data), "mime": info.mime, "width": info.width, "height": info.height}
        self.store.put_json(url_key(record.url), seen)
        fetched = FetchedImage(
            record=record,
            sha256=sha256,
            object_key=key,
            size_bytes=len(data),
            mime=info.mime,
            width=info.width,
            height=info.height,
            attempts=attempts,
        )
        return [Emit(self.bus.topics.fetched, sha256, fetched)]

    def _read_robots(self, url: str) -> Robots:
        for attempt in range(1, self.settings.fetch_attempts + 1):
            try:
                return fetch_robots(self.downloader, url)
            except RetryLater as retry:
                if attempt == self.settings.fetch_attempts:
                    return unreachable(f"robots.txt could not be fetched: {retry.failure.message}")
                time.sleep(min(retry.delay or 0.5 * 2**attempt, 30.0))
        raise AssertionError("unreachable")

    def _already_stored(self, record: Record) -> FetchedImage | None:
        """A URL fetched before (by any job) is not downloaded again: its stored original stands in."""
        seen = self.store.get_json(url_key(record.url))
        if seen is None or not self.store.exists(original_key(seen["sha256"])):
            return None
        return FetchedImage(
            record=record,
            sha256=seen["sha256"],
            object_key=original_key(seen["sha256"]),
            size_bytes=seen["size"],
            mime=seen["mime"],
            width=seen["width"],
            height=seen["height"],
            attempts=0,
        )

    def _download(self, url: str) -> tuple[bytes, int]:
        """Paced by the host's gate; 429/503 slow the host down (and honour Retry-After), errors back off."""
        host = host_of(url)
        throttles = 0
        for attempt in range(1, self.settings.fetch_throttled_attempts + 1):
            sent_at = self.hosts.acquire(host)
            started = time.monotonic()
            try:
                data = self.downloader.fetch(url).data
            except RetryLater as retry:
                reason = retry.failure.reason
                self.hosts.count(host, reason)
                if reason in {"http_429", "http_503"}:
                    throttles += 1
                    self.hosts.throttled(host, sent_at, retry.delay, limit=reason == "http_429")
                else:  # a body cut off mid-transfer is retried without slowing the whole host
                    self.hosts.failed(host, sent_at, congestion=reason != "incomplete_body")
                # Being told to slow down is not the record's fault: it gets more tries than errors do.
                errors = attempt - throttles
                if errors >= self.settings.fetch_attempts or attempt == self.settings.fetch_throttled_attempts:
                    raise Failed(reason, f"{retry.failure.message} (after {attempt} attempts)") from None
                continue
            except Failed as failure:
                if failure.reason in NOT_SENT:
                    self.hosts.released(host)
                else:  # a final answer (404, not an image …): the host is keeping up
                    self.hosts.count(host, failure.reason)
                    self.hosts.answered(host, sent_at, time.monotonic() - started)
                raise
            self.hosts.count(host, "http_200", len(data))
            self.hosts.answered(host, sent_at, time.monotonic() - started)
            return data, attempt
        raise AssertionError("unreachable")

    def worker(self) -> StreamWorker[Record]:
        return StreamWorker(
            stage=STAGE,
            bus=self.bus,
            source=self.bus.topics.records,
            message_type=Record,
            process=each(self.handle, threads=self.settings.fetch_concurrency),
            max_batch=self.settings.max_batch,
        )


class FetcherServicer(fetcher_pb2_grpc.FetcherServicer):
    def __init__(self, bus: Bus, jobs: JobTable, store: ObjectStore | None = None) -> None:
        self.bus = bus
        self.jobs = jobs
        self.store = store

    @functools.cached_property
    def producer(self) -> KafkaProducer:
        return self.bus.producer()

    def SubmitJob(self, request_iterator: Iterator[fetcher_pb2.SubmitJobRequest], context) -> fetcher_pb2.JobStatus:
        first = next(request_iterator, None)
        if first is None or not first.HasField("spec"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a JobSpec")
        job_id = first.spec.job_id or uuid.uuid4().hex[:12]
        created = int(time.time() * 1000)
        topics = self.bus.topics
        job = Job(job_id=job_id, source=first.spec.source, total=0, created_ms=created)
        send_all(self.producer, [Emit(topics.jobs, job_id, job)])
        total, pending = 0, []
        for item in request_iterator:
            if not item.HasField("record"):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "only records may follow the JobSpec")
            record = Record(
                record_id=f"{job_id}:{total}",
                job_id=job_id,
                row=total,
                url=item.record.url,
                metadata=item.record.metadata,
                force=first.spec.force,
            )
            pending.append(Emit(topics.records, host_of(record.url), record))
            total += 1
            if len(pending) >= CHUNK:
                self._keep(job_id, total // CHUNK - 1, pending)
                send_all(self.producer, pending)
                pending = []
        job.total = total
        if pending:
            self._keep(job_id, total // CHUNK, pending)
        send_all(self.producer, [*pending, Emit(topics.jobs, job_id, job)])
        if not self.jobs.wait_for(job_id, total, timeout=30):
            log.warning("job table is behind the jobs topic", extra={"job_id": job_id})
        log.info("job submitted", extra={"job_id": job_id, "records": total})
        return self.jobs.status(job_id) or fetcher_pb2.JobStatus(job_id=job_id, total=total, created_ms=created)

    def _keep(self, job_id: str, chunk: int, emits: list[Emit]) -> None:
        rows = [MessageToDict(e.message, preserving_proto_field_name=True) for e in emits]
        self.store.put_json(job_records_key(job_id, chunk), rows)

    def RetryJob(self, request, context) -> fetcher_pb2.JobStatus:
        job = self.jobs.job(request.job_id)
        if job is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id!r}")
        wanted = set(request.reasons)
        failed = {
            o.record_id
            for o in self.jobs.outcomes(job.job_id)
            if o.state == Outcome.FAILED and (not wanted or o.reason in wanted)
        }
        topics = self.bus.topics
        emits: list[Emit] = []
        for key in sorted(self.store.list(job_records_prefix(job.job_id))):
            for row in self.store.get_json(key) or []:
                record = ParseDict(row, Record())
                if record.record_id in failed:
                    # The record's outcome is cleared first, so the job counts as running until it ends again.
                    emits.append(
                        Emit(
                            topics.outcomes,
                            record.record_id,
                            Outcome(record_id=record.record_id, job_id=job.job_id, url=record.url),
                        )
                    )
                    emits.append(Emit(topics.records, host_of(record.url), record))
        send_all(self.producer, emits)
        for emit in emits:
            if isinstance(emit.message, Outcome):
                self.jobs.add_outcome(emit.message)
        log.info("job retried", extra={"job_id": job.job_id, "records": len(emits) // 2})
        return self.jobs.status(job.job_id)

    def GetJob(self, request, context) -> fetcher_pb2.JobStatus:
        status = self.jobs.status(request.job_id)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id!r}")
        return status

    def ListJobs(self, request, context) -> fetcher_pb2.ListJobsResponse:
        return fetcher_pb2.ListJobsResponse(jobs=[self.jobs.status(j) for j in self.jobs.job_ids()])

    def CancelJob(self, request, context) -> fetcher_pb2.JobStatus:
        job = self.jobs.job(request.job_id)
        if job is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id!r}")
        cancelled = Job()
        cancelled.CopyFrom(job)
        cancelled.cancelled = True
        send_all(self.producer, [Emit(self.bus.topics.jobs, job.job_id, cancelled)])
        self.jobs.add_job(cancelled)
        return self.jobs.status(job.job_id)

    def ListOutcomes(self, request, context):
        if self.jobs.job(request.job_id) is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id!r}")
        wanted = set(request.states)
        for outcome in self.jobs.outcomes(request.job_id):
            if not wanted or outcome.state in wanted:
                yield outcome


def build(settings: FetcherSettings) -> Service:
    bus, store = connect(settings)
    jobs = JobTable()
    fetch = FetchWorker(settings, bus, store, jobs)
    servicer = FetcherServicer(bus, jobs, store)

    return Service(
        name=STAGE,
        register=registrar(fetcher_pb2, "Fetcher", fetcher_pb2_grpc.add_FetcherServicer_to_server, servicer),
        loops=[lambda stop: follow(bus, jobs, stop), fetch.worker().run],
        on_stop=fetch.downloader.close,
    )
