"""Helpers the integration tests share: submitting jobs, waiting, reading outcomes."""

from __future__ import annotations

import random
import socket
import time

from taxonstream.v1 import fetcher_pb2
from taxonstream.v1.messages_pb2 import Outcome, SourceRecord


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
