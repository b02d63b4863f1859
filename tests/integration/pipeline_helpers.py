"""Helpers the integration tests share: submitting jobs, waiting, reading outcomes, an extra service replica."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaAdminClient, TopicPartition

from taxonstream.core.bus import Bus, decode
from taxonstream.core.errors import Poison
from taxonstream.core.store import ObjectStore
from taxonstream.v1 import fetcher_pb2, indexer_pb2
from taxonstream.v1.messages_pb2 import Outcome, SourceRecord
from tools.stack import local_stack as stack


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Replica:
    """A service process started by a test beside the stack's own, on ports of its own."""

    port: int
    metrics_port: int
    log: Path


@contextlib.contextmanager
def extra_replica(service: str, log: Path, env: Mapping[str, str] | None = None) -> Iterator[Replica]:
    """Run `python -m taxonstream.<service>` with the stack's S3 settings plus `env` until it is healthy (120 s at
    most); on exit SIGTERM it and wait for its drain (60 s), then kill it. Its output goes to `log`."""
    grpc_port, metrics_port = closed_port(), closed_port()
    environment = {
        **os.environ,
        **stack.s3_env(),
        "TAXONSTREAM_GRPC_PORT": str(grpc_port),
        "TAXONSTREAM_METRICS_PORT": str(metrics_port),
        **(env or {}),
    }
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", f"taxonstream.{service}"], env=environment, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 120
        while not stack.healthy(grpc_port):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"the extra {service} did not become healthy"
            time.sleep(0.3)
        yield Replica(grpc_port, metrics_port, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def submit(fetcher, job_id: str, urls: list[str], metadata: list[dict[str, str]] | None = None):
    metadata = metadata or [{} for _ in urls]
    requests = [fetcher_pb2.SubmitJobRequest(spec=fetcher_pb2.JobSpec(job_id=job_id, source="test"))]
    requests += [
        fetcher_pb2.SubmitJobRequest(record=SourceRecord(url=u, metadata=m))
        for u, m in zip(urls, metadata, strict=True)
    ]
    return fetcher.SubmitJob(iter(requests), timeout=120)


def wait_done(fetcher, job_id: str, timeout: float = 600.0) -> fetcher_pb2.JobStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = fetcher.GetJob(fetcher_pb2.GetJobRequest(job_id=job_id), timeout=30)
        if status.done:
            return status
        assert time.monotonic() < deadline, f"job {job_id} not done in {timeout} s: {status}"
        time.sleep(0.5)


def wait_indexed(fetcher, job_id: str, at_least: int, timeout: float = 300.0) -> None:
    """Until part of a job is through: the moment to disturb it."""
    deadline = time.monotonic() + timeout
    while fetcher.GetJob(fetcher_pb2.GetJobRequest(job_id=job_id), timeout=30).indexed < at_least:
        assert time.monotonic() < deadline, f"job {job_id} never got {at_least} records indexed"
        time.sleep(0.2)


def outcomes(fetcher, job_id: str) -> dict[int, Outcome]:
    """The job's outcomes by row number."""
    found = fetcher.ListOutcomes(fetcher_pb2.ListOutcomesRequest(job_id=job_id), timeout=60)
    return {int(o.record_id.rsplit(":", 1)[1]): o for o in found}


def unique_job(prefix: str) -> str:
    return f"{prefix}-{random.SystemRandom().randrange(16**8):08x}"


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    """Poll an outside condition (a topic's lag, a job's progress) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never saw {what} in {timeout:.0f} s"
        time.sleep(0.05)


def uncommitted(bus: Bus, group: str, ends: Mapping[TopicPartition, int]) -> int:
    """Messages below `ends` that the consumer group `group` has not committed (its lag at `ends`)."""
    admin = KafkaAdminClient(bootstrap_servers=bus.bootstrap)
    try:
        committed = admin.list_group_offsets({group: list(ends)}).get(group, {})
    finally:
        admin.close()
    # No commit yet (-1 or absent): the group starts from the beginning (auto_offset_reset=earliest).
    at = {tp: max(0, meta.offset) for tp, meta in committed.items()}
    return sum(max(0, end - at.get(tp, 0)) for tp, end in ends.items())


def snapshot_key(indexer) -> str:
    """The S3 key of the serving index version's latest snapshot (indexer/worker.py Snapshots: one per version)."""
    stats = indexer.Stats(indexer_pb2.StatsRequest(), timeout=30)
    backend = "milvus" if stats.kind.startswith("milvus") else "faiss"
    return f"index/{stats.model}/{stats.model_version}/{backend}/latest.json"


def unsnapshotted(store: ObjectStore, key: str, ends: Mapping[TopicPartition, int]) -> int:
    """Messages of `embedded` below `ends` that the snapshot at `key` does not include: a restarted indexer
    has to replay them (it restores the snapshot, then reads on from the offsets stored with it)."""
    latest = store.get_json(key) or {}
    included = {int(p): int(o) for p, o in latest.get("offsets", {}).items()}
    return sum(max(0, end - included.get(tp.partition, 0)) for tp, end in ends.items())


def outcome_messages(bus: Bus, job_id: str, start: Mapping[TopicPartition, int]) -> list[Outcome]:
    """Every message on the outcomes topic for `job_id` from `start` to the end as it is now, repeats included
    (ListOutcomes, like the compacted topic, keeps only each record's last one)."""
    topic = bus.topics.outcomes
    ends = bus.end_offsets(topic)
    consumer = bus.reader([topic], start)
    found: list[Outcome] = []
    deadline = time.monotonic() + 120
    try:
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            assert time.monotonic() < deadline, f"could not read {topic} to its end in 120 s"
            for part in consumer.poll(timeout_ms=500).values():
                for raw in part:
                    try:
                        message = decode(raw.value, raw.headers, Outcome)
                    except Poison:
                        continue  # not an outcome at all; the jobs table skips these too
                    if message.job_id == job_id:
                        found.append(message)
    finally:
        consumer.close(autocommit=False)
    return found


def terminal_outcomes(bus: Bus, job: str, start: Mapping[TopicPartition, int]) -> tuple[dict[str, set[tuple]], int]:
    """Each record's distinct terminal outcomes on the topic, and how many messages were read."""
    by_record: dict[str, set[tuple]] = defaultdict(set)
    messages = outcome_messages(bus, job, start)
    for message in messages:
        if message.state != Outcome.STATE_UNSPECIFIED:  # "queued again" markers of a job retry: none here
            by_record[message.record_id].add((message.state, message.image_id, message.stage, message.reason))
    return by_record, len(messages)


def assert_each_record_ended_once(
    bus: Bus, job: str, start: Mapping[TopicPartition, int], rows: int
) -> tuple[dict[str, tuple], int]:
    """Every record of `job` ended, each in exactly one terminal outcome (identical repeats from a replay
    are at-least-once delivery with one effect; two different outcomes are a bug). Returns record -> its
    outcome, and how many outcome messages were read (repeats included)."""
    by_record, read = terminal_outcomes(bus, job, start)
    expected = {f"{job}:{row}" for row in range(rows)}
    assert set(by_record) == expected, f"missing: {sorted(expected - set(by_record))[:5]}"
    doubled = {record: ends for record, ends in by_record.items() if len(ends) != 1}
    assert not doubled, f"records with more than one terminal outcome: {dict(list(doubled.items())[:5])}"
    return {record: next(iter(ends)) for record, ends in by_record.items()}, read
