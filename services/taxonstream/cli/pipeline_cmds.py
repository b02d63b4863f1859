"""The commands that talk to the running pipeline: ingest a URL list, follow and retry jobs, search, stats."""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from taxonstream.cli import clients, flags
from taxonstream.fetching.inputs import URL_COLUMNS, InputError, InputStats, read_records
from taxonstream.fetching.tables import TableError, count_lines
from taxonstream.v1 import fetcher_pb2, fetcher_pb2_grpc, indexer_pb2, indexer_pb2_grpc
from taxonstream.v1.messages_pb2 import Outcome


def _submit(
    stub: fetcher_pb2_grpc.FetcherStub,
    path: Path,
    url_col: str | None,
    job_id: str,
    force: bool = False,
    reading: dict | None = None,
    stats: InputStats | None = None,
) -> fetcher_pb2.JobStatus:
    """`reading`: read_records' keyword options (delimiter, encoding, limit, on_skip)."""
    if path.is_file() and path.suffix.lower() not in (".zip", ".parquet"):
        count_lines(path, (reading or {}).get("encoding"))  # an undecodable byte refuses the file before a row goes
    records = read_records(path, url_col, stats, skip_empty_urls=True, **(reading or {}))
    first = next(records, None)  # read one row before opening the stream: a bad file fails fast
    if first is None:
        raise InputError(f"{path}: no rows with a URL to submit")

    def requests() -> Iterator[fetcher_pb2.SubmitJobRequest]:
        spec = fetcher_pb2.JobSpec(job_id=job_id, source=path.name, force=force)
        yield fetcher_pb2.SubmitJobRequest(spec=spec)
        yield fetcher_pb2.SubmitJobRequest(record=first)
        for record in records:
            yield fetcher_pb2.SubmitJobRequest(record=record)

    return stub.SubmitJob(requests(), timeout=3600)


def _follow(stub: fetcher_pb2_grpc.FetcherStub, status: fetcher_pb2.JobStatus, timeout: float) -> fetcher_pb2.JobStatus:
    deadline = time.monotonic() + timeout
    with tqdm(total=status.total, unit="img", desc=f"job {status.job_id}", file=sys.stderr) as bar:
        while True:
            finished = status.indexed + status.duplicate + status.failed
            bar.update(finished - bar.n)
            bar.set_postfix(indexed=status.indexed, duplicate=status.duplicate, failed=status.failed, refresh=False)
            if status.done:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {status.job_id} not finished after {timeout:.0f} s")
            time.sleep(0.5)
            status = stub.GetJob(fetcher_pb2.GetJobRequest(job_id=status.job_id), timeout=30)


def _print_summary(stub: fetcher_pb2_grpc.FetcherStub, status: fetcher_pb2.JobStatus, show_failed: int) -> None:
    print(
        f"job {status.job_id} ({status.source}): {status.total} records — {status.indexed} indexed, "
        f"{status.duplicate} duplicate, {status.failed} failed" + (" — cancelled" if status.cancelled else "")
    )
    for reason, count in sorted(status.failed_by_reason.items(), key=lambda kv: -kv[1]):
        print(f"  failed {count:>6}  {reason}")
    if status.failed and show_failed:
        request = fetcher_pb2.ListOutcomesRequest(job_id=status.job_id, states=[Outcome.FAILED])
        for n, outcome in enumerate(stub.ListOutcomes(request, timeout=60)):
            if n == show_failed:
                print(f"  … and {status.failed - show_failed} more (taxonstream jobs {status.job_id} --report FILE)")
                break
            print(f"  {outcome.record_id}  {outcome.url[:60]}  {outcome.stage}:{outcome.reason}  {outcome.message}")


def _write_report(stub: fetcher_pb2_grpc.FetcherStub, job_id: str, path: Path) -> int:
    """Every record's outcome, as CSV or Parquet (by the file's extension)."""
    request = fetcher_pb2.ListOutcomesRequest(job_id=job_id)
    fields = ["record_id", "job_id", "url", "state", "image_id", "stage", "reason", "message"]
    rows = [
        {**{f: getattr(o, f) for f in fields}, "state": Outcome.State.Name(o.state).lower()}
        for o in stub.ListOutcomes(request, timeout=300)
    ]
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    return len(rows)


def cmd_ingest(args: argparse.Namespace) -> int:
    with clients.channel("fetcher") as channel:
        stub = fetcher_pb2_grpc.FetcherStub(channel)
        stats = InputStats()
        skipped: list[dict[str, str]] = []
        reading = {
            "delimiter": args.delimiter,
            "encoding": args.encoding,
            "limit": args.limit,
            "on_skip": lambda line, reason, row: skipped.append({"line": str(line), "reason": reason, **row}),
        }
        try:
            status = _submit(stub, Path(args.file), args.url_col, args.job_id or "", args.force, reading, stats)
        except TableError as error:
            raise InputError(str(error)) from None
        print(f"submitted job {status.job_id}: {status.total} records", file=sys.stderr)
        for reason, count in stats.skipped.most_common():  # rows not submitted, so the job never hears of them
            print(f"  skipped {count:>6}  {reason}", file=sys.stderr)
        if args.skipped and skipped:
            fields = list(dict.fromkeys(k for row in skipped for k in row))
            with open(args.skipped, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=fields)
                writer.writeheader()
                writer.writerows(skipped)
            print(f"  skipped rows written to {args.skipped}", file=sys.stderr)
        if args.no_wait:
            print(status.job_id)
            return 0
        status = _follow(stub, status, args.timeout)
        _print_summary(stub, status, show_failed=10)
        if args.report:
            print(f"wrote {_write_report(stub, status.job_id, Path(args.report))} outcomes to {args.report}")
    return 0


def cmd_jobs_list(args: argparse.Namespace) -> int:
    with clients.channel("fetcher") as channel:
        jobs = fetcher_pb2_grpc.FetcherStub(channel).ListJobs(fetcher_pb2.ListJobsRequest(), timeout=30).jobs
    if not jobs:
        print("no jobs yet (submit one with `taxonstream ingest FILE`)")
    for job in jobs:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(job.created_ms / 1000))
        state = "cancelled" if job.cancelled else "done" if job.done else "running"
        print(
            f"{job.job_id}  {created}  {state:<9} {job.total:>7} records  {job.indexed:>7} indexed  "
            f"{job.duplicate:>6} duplicate  {job.failed:>6} failed  {job.source}"
        )
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    with clients.channel("fetcher") as channel:
        stub = fetcher_pb2_grpc.FetcherStub(channel)
        request = fetcher_pb2.GetJobRequest(job_id=args.job_id)
        status = stub.CancelJob(request, timeout=30) if args.cancel else stub.GetJob(request, timeout=30)
        _print_summary(stub, status, show_failed=args.show_failed)
        if args.report:
            print(f"wrote {_write_report(stub, args.job_id, Path(args.report))} outcomes to {args.report}")
    return 0


def cmd_jobs_retry(args: argparse.Namespace) -> int:
    with clients.channel("fetcher") as channel:
        stub = fetcher_pb2_grpc.FetcherStub(channel)
        request = fetcher_pb2.RetryJobRequest(job_id=args.job_id, reasons=args.reason)
        status = stub.RetryJob(request, timeout=300)
        print(f"re-queued failed records of job {args.job_id}", file=sys.stderr)
        status = _follow(stub, status, args.timeout)
        _print_summary(stub, status, show_failed=args.show_failed)
    return 0


JOBS_ACTIONS = {"list", "show", "retry", "-h", "--help"}


def jobs_shorthand(argv: list[str]) -> list[str]:
    """`jobs JOB …` is `jobs show JOB …`: a job id where an action would stand."""
    if argv[:1] == ["jobs"] and len(argv) > 1 and argv[1] not in JOBS_ACTIONS:
        return ["jobs", "show", *argv[1:]]
    return argv


def cmd_search(args: argparse.Namespace) -> int:
    common = {"k": args.k, "filters": clients.index_filters(args.filter), **clients.index_version(args.model)}
    if args.image:
        path = Path(args.image)
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        request = indexer_pb2.SearchRequest(image=path.read_bytes(), **common)
    elif args.text:
        request = indexer_pb2.SearchRequest(text=args.text, **common)
    else:
        request = indexer_pb2.SearchRequest(image_id=args.id, **common)
    with clients.channel("indexer") as channel:
        response = indexer_pb2_grpc.IndexerStub(channel).Search(request, timeout=120)
    print(f"{len(response.hits)} hits (model {response.model}/{response.model_version})")
    print(f"{'rank':>4}  {'score':>7}  {'image':<14}  source")
    for rank, hit in enumerate(response.hits, start=1):
        label = hit.metadata.get("scientificName") or hit.metadata.get("scientific_name") or ""
        print(f"{rank:>4}  {hit.score:7.4f}  {hit.image_id[:12]:<14}  {hit.metadata.get('url', '')}  {label}".rstrip())
        if args.thumbnails and hit.thumbnail_url:
            print(f"{'':>25}{hit.thumbnail_url}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with clients.channel("indexer") as channel:
        filters = clients.index_filters(args.filter)
        request = indexer_pb2.StatsRequest(filters=filters, **clients.index_version(args.model))
        stats = indexer_pb2_grpc.IndexerStub(channel).Stats(request, timeout=60)
    matching = f" matching {' and '.join(args.filter)}" if args.filter else ""
    print(f"{stats.images} images indexed{matching} ({stats.kind} index, model {stats.model}/{stats.model_version})")
    if len(stats.versions) > 1:
        print(
            "  versions  "
            + ", ".join(
                f"{v.model}/{v.model_version}{' (serving)' if v.serving else ''} {v.images}" for v in stats.versions
            )
        )
    for field in sorted(stats.by_field):
        counts = sorted(stats.by_field[field].counts.items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{value} {count}" for value, count in counts[: args.top])
        more = f" … (+{len(counts) - args.top} more)" if len(counts) > args.top else ""
        print(f"  {field:<9} {shown}{more}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("ingest", help="submit a URL list and follow it until every record has ended")
    p.add_argument(
        "file",
        help="CSV, TSV, TXT, JSONL or Parquet (optionally .gz), or a Darwin Core Archive (.zip or folder); "
        "other columns travel as metadata",
    )
    p.add_argument("--delimiter", help="field delimiter of a text list, e.g. ',' or '\\t' (default: sniffed)")
    p.add_argument("--encoding", help="text encoding (default: UTF-8, or UTF-16 with a BOM), e.g. latin-1")
    p.add_argument("--limit", type=int, help="only the first N input rows")
    p.add_argument("--skipped", metavar="FILE", help="write the rows left out (not a still image, no URL) to FILE.csv")
    p.add_argument("--url-col", help=f"column holding the URL (default: the first of {', '.join(URL_COLUMNS)})")
    p.add_argument("--job-id", help="name the job (default: generated); re-submitting a name re-runs its rows")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    p.add_argument(
        "--force", action="store_true", help="download every URL again, even those whose bytes are already stored"
    )
    p.add_argument("--report", metavar="FILE", help="write every record's outcome to FILE (.csv or .parquet)")
    p.add_argument("--timeout", type=float, default=24 * 3600, help="give up following after this many seconds")
    p.set_defaults(run=cmd_ingest)

    jobs = flags.add_described(
        commands,
        "jobs",
        help="list jobs, show one, cancel it, or retry its failures",
        description="taxonstream jobs                      every job and how it ended\n"
        "taxonstream jobs JOB [--report F]     one job: counts, failures by reason, every outcome to a file\n"
        "taxonstream jobs JOB --cancel         records not yet fetched end as cancelled\n"
        "taxonstream jobs retry JOB --failed   queue the failed records again and follow them",
    )
    jobs.set_defaults(run=cmd_jobs_list)
    actions = jobs.add_subparsers(dest="action", metavar="[list | show JOB | retry JOB]")
    actions.add_parser("list", help="every job and how it ended (the default)").set_defaults(run=cmd_jobs_list)
    p = actions.add_parser("show", help="one job (`jobs JOB` is short for `jobs show JOB`)")
    p.add_argument("job_id", metavar="JOB")
    p.add_argument("--show-failed", type=int, default=20, metavar="N", help="failed records to list (default 20)")
    p.add_argument("--cancel", action="store_true", help="cancel the job: records not yet fetched end as cancelled")
    p.add_argument("--report", metavar="FILE", help="write every record's outcome to FILE (.csv or .parquet)")
    p.set_defaults(run=cmd_jobs_show)
    p = actions.add_parser("retry", help="queue a job's failed records again and follow them")
    p.add_argument("job_id", metavar="JOB")
    p.add_argument("--failed", action="store_true", required=True, help="the failed records (the only kind retried)")
    p.add_argument(
        "--reason",
        action="append",
        default=[],
        metavar="CODE",
        help="only failures with this reason code (repeatable), e.g. http_429 or timeout",
    )
    p.add_argument("--timeout", type=float, default=24 * 3600, help="stop following after this many seconds")
    p.add_argument("--show-failed", type=int, default=20, metavar="N", help="failed records to list (default 20)")
    p.set_defaults(run=cmd_jobs_retry)

    p = commands.add_parser("search", help="nearest images to an image file, an indexed image or a text")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", metavar="PATH", help="an image file; it is cropped and embedded like ingested ones")
    query.add_argument("--id", metavar="IMAGE_ID", help="an indexed image's id (its sha256)")
    query.add_argument("--text", metavar="TEXT", help='a description, e.g. "a photo of Danaus plexippus"')
    p.add_argument("-k", type=int, default=10, help="hits to return (default 10)")
    flags.add_filter_flag(
        p, flags.FILTER_HELP + "; repeat to require several; applied inside the search, so k hits still come back"
    )
    p.add_argument("--thumbnails", action="store_true", help="print a presigned URL of each hit's 256-px crop")
    p.add_argument("--model", metavar="MODEL[/VERSION]", help="search this index version (default: the serving one)")
    p.set_defaults(run=cmd_search)

    p = commands.add_parser("stats", help="how many images, and how they spread over ranks, providers, licences")
    p.add_argument("--top", type=int, default=8, help="values to show per field (default 8)")
    flags.add_filter_flag(
        p,
        "count only the images matching (as search --filter), e.g. --filter F_small>=0.5 (repeatable)",
        metavar="FIELD=VALUE | COLUMN>=NUMBER",
    )
    p.add_argument("--model", metavar="MODEL[/VERSION]", help="this index version (default: the serving one)")
    p.set_defaults(run=cmd_stats)
