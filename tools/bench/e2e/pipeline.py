"""The same URL list through the running stack, and the busy time each service spent on it.

Submit: the Fetcher's SubmitJob stream, exactly as `taxonstream ingest` sends it, under a fresh job id.
Follow: GetJob until the job is done; the time is from just before the submit to the last outcome's
timestamp (ListOutcomes at_ms), so the polling interval is not counted.

Busy seconds come from each service's own Prometheus /metrics (SERVICE_PORTS), scraped before and after:
the delta of a seconds counter (or a histogram's _sum) is the seconds spent meanwhile. STAGE_METRICS says
which sample feeds which column; a column a service does not export prints "n/a".
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import grpc
from prometheus_client.parser import text_string_to_metric_families

from taxonstream.cli import clients
from taxonstream.core.settings import SERVICE_PORTS
from taxonstream.v1 import fetcher_pb2, fetcher_pb2_grpc
from taxonstream.v1.messages_pb2 import SourceRecord

STAGES = ("fetcher", "checksummer", "detector", "embedder", "indexer")
# column -> (sample name, the label naming the service's stage, other labels it must carry). The delta of
# the sample over the run is busy seconds. "busy" exists today (core worker: wall time of each polled
# batch, outputs flushed). The parts are the split core.metrics.timed() counts, summed over threads
# (being added as this was written: "n/a" until the services export it). Rename here if they change.
STAGE_METRICS: dict[str, tuple[str, str, dict[str, str]]] = {
    "busy": ("taxonstream_batch_seconds_sum", "stage", {}),
    "s3": ("taxonstream_stage_seconds_total", "service", {"part": "s3"}),
    "decode": ("taxonstream_stage_seconds_total", "service", {"part": "decode"}),
    "hash": ("taxonstream_stage_seconds_total", "service", {"part": "hash"}),
    "model": ("taxonstream_stage_seconds_total", "service", {"part": "model"}),
    "kafka": ("taxonstream_stage_seconds_total", "service", {"part": "kafka"}),
}
POLL_S = 0.5


def scrape(stage: str) -> dict[str, float] | None:
    """column -> its sample's value now, for one service; None when its /metrics does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{SERVICE_PORTS[stage].metrics}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    samples = [sample for family in text_string_to_metric_families(text) for sample in family.samples]
    sums: dict[str, float] = {}
    for column, (name, stage_label, labels) in STAGE_METRICS.items():
        wanted = {stage_label: stage, **labels}
        values = [x.value for x in samples if x.name == name and all(x.labels.get(k) == v for k, v in wanted.items())]
        if values:
            sums[column] = sum(values)
    return sums


def scrape_all() -> dict[str, dict[str, float] | None]:
    return {stage: scrape(stage) for stage in STAGES}


def busy_per_record(
    before: dict[str, dict[str, float] | None], after: dict[str, dict[str, float] | None], good: int
) -> dict[str, dict[str, float | None]]:
    """stage -> column -> busy seconds per good record over the run (None: not exported, or no scrape)."""
    table: dict[str, dict[str, float | None]] = {}
    for stage in STAGES:
        start, end = before.get(stage), after.get(stage)
        row: dict[str, float | None] = {}
        for column in STAGE_METRICS:
            if start is None or end is None or column not in end:
                row[column] = None
            else:
                row[column] = (end[column] - start.get(column, 0.0)) / max(good, 1)
        table[stage] = row
    return table


@dataclass
class PipelineResult:
    job_id: str
    records: int
    indexed: int = 0
    duplicate: int = 0
    failed: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    done: bool = False

    @property
    def good(self) -> int:
        return self.indexed + self.duplicate


def _requests(job_id: str, urls: Sequence[str], hosts: Sequence[str]) -> Iterator[fetcher_pb2.SubmitJobRequest]:
    yield fetcher_pb2.SubmitJobRequest(spec=fetcher_pb2.JobSpec(job_id=job_id, source="bench-e2e"))
    for url, host in zip(urls, hosts, strict=True):
        yield fetcher_pb2.SubmitJobRequest(record=SourceRecord(url=url, metadata={"provider": host}))


def run_job(job_id: str, urls: Sequence[str], hosts: Sequence[str], timeout_s: float) -> PipelineResult:
    """Submit, follow until done (or timeout_s), and read the outcomes' last timestamp."""
    result = PipelineResult(job_id=job_id, records=len(urls))
    with clients.channel("fetcher") as channel:
        stub = fetcher_pb2_grpc.FetcherStub(channel)
        submitted_ms = time.time() * 1000
        started = time.perf_counter()
        status = stub.SubmitJob(_requests(job_id, urls, hosts), timeout=600)
        deadline = started + timeout_s
        while not status.done and time.perf_counter() < deadline:
            time.sleep(POLL_S)
            status = stub.GetJob(fetcher_pb2.GetJobRequest(job_id=job_id), timeout=30)
        polled_s = time.perf_counter() - started
        result.indexed, result.duplicate, result.failed = status.indexed, status.duplicate, status.failed
        result.failed_by_reason = dict(status.failed_by_reason)
        result.done = status.done
        last_ms = 0
        for outcome in stub.ListOutcomes(fetcher_pb2.ListOutcomesRequest(job_id=job_id), timeout=300):
            last_ms = max(last_ms, outcome.at_ms)
        # The outcomes' clock is the services' wall clock, on this machine: the same as submitted_ms.
        result.seconds = (last_ms - submitted_ms) / 1000 if result.done and last_ms else polled_s
    return result


def fetcher_serving() -> bool:
    """Whether the fetcher answers GetJob at all (an unknown job id is NOT_FOUND: that is an answer)."""
    with clients.channel("fetcher") as channel:
        try:
            fetcher_pb2_grpc.FetcherStub(channel).GetJob(fetcher_pb2.GetJobRequest(job_id="bench-e2e-probe"), timeout=5)
        except grpc.RpcError as error:
            return error.code() != grpc.StatusCode.UNAVAILABLE
    return True
