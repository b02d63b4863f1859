"""Who may call, on a real service: a second fetcher started with a token (on other ports; the suite's stack
runs without one) refuses SubmitJob without it and changes nothing, and takes the job with it.

The second fetcher joins the fetcher group like any replica, so either replica may download the records.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from pipeline_helpers import Replica, extra_replica, submit, unique_job, wait_done

from taxonstream.core.channels import open_channel
from taxonstream.v1 import fetcher_pb2, fetcher_pb2_grpc

TOKEN = "integration-token-7f3a"


@pytest.fixture(scope="module")
def guarded_fetcher(local_stack, tmp_path_factory) -> Iterator[Replica]:
    log = tmp_path_factory.mktemp("auth") / "fetcher.log"
    env = {"TAXONSTREAM_TOKEN": TOKEN, "TAXONSTREAM_FETCH_ALLOW_NETWORKS": "127.0.0.0/8"}
    with extra_replica("fetcher", log, env) as replica:
        yield replica


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
