"""Who may call, on a real service: a second fetcher started with a token (on other ports; the suite's stack
runs without one) refuses SubmitJob without it and changes nothing, and takes the job with it.

The second fetcher joins the fetcher group like any replica, so either replica may download the records.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from pipeline_helpers import closed_port, submit, unique_job, wait_done

from taxonstream.core.channels import open_channel
from taxonstream.v1 import fetcher_pb2, fetcher_pb2_grpc
from tools.stack import local_stack as stack

TOKEN = "integration-token-7f3a"


@dataclass
class GuardedFetcher:
    port: int
    log: Path


@pytest.fixture(scope="module")
def guarded_fetcher(local_stack, tmp_path_factory) -> Iterator[GuardedFetcher]:
    grpc_port, metrics_port = closed_port(), closed_port()
    log_path = tmp_path_factory.mktemp("auth") / "fetcher.log"
    env = {
        **os.environ,
        **stack.s3_env(),
        "TAXONSTREAM_GRPC_PORT": str(grpc_port),
        "TAXONSTREAM_METRICS_PORT": str(metrics_port),
        "TAXONSTREAM_TOKEN": TOKEN,
        "TAXONSTREAM_FETCH_ALLOW_NETWORKS": "127.0.0.0/8",
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "taxonstream.fetcher"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 120
        while not stack.healthy(grpc_port):
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the guarded fetcher did not become healthy"
            time.sleep(0.3)
        yield GuardedFetcher(grpc_port, log_path)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_submit_without_the_token_is_refused_and_changes_nothing(guarded_fetcher, site):
    job = unique_job("auth-refused")
    for token in ("", "not-the-token"):
        with open_channel(f"127.0.0.1:{guarded_fetcher.port}", token=token) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                submit(fetcher_pb2_grpc.FetcherStub(channel), job, [site.url("img", p) for p in site.images(1)])
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Reads need no token by default: the job was never created.
    with open_channel(f"127.0.0.1:{guarded_fetcher.port}") as channel:
        with pytest.raises(grpc.RpcError) as missing:
            fetcher_pb2_grpc.FetcherStub(channel).GetJob(fetcher_pb2.GetJobRequest(job_id=job), timeout=30)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_submit_with_the_token_runs_the_job(guarded_fetcher, site):
    job = unique_job("auth-allowed")
    images = site.images(2)
    with open_channel(f"127.0.0.1:{guarded_fetcher.port}", token=TOKEN) as channel:
        fetcher = fetcher_pb2_grpc.FetcherStub(channel)
        status = submit(fetcher, job, [site.url("img", p) for p in images])
        assert status.job_id == job
        done = wait_done(fetcher, job, timeout=300)
    assert done.indexed == len(images), done
