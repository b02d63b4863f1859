"""Servicers tested in-process on a loopback gRPC server with the services' interceptor: status codes and answers."""

from __future__ import annotations

import hashlib
from concurrent import futures

import grpc
import pytest
from pydantic import ValidationError

from taxonstream.checksummer.servicer import ChecksummerServicer
from taxonstream.core.server import CallInterceptor
from taxonstream.core.settings import CoreSettings
from taxonstream.fetcher.jobs import JobTable
from taxonstream.fetcher.servicer import FetcherServicer
from taxonstream.v1 import checksummer_pb2, checksummer_pb2_grpc, fetcher_pb2, fetcher_pb2_grpc
from taxonstream.v1.messages_pb2 import Job, Outcome

# A servicer's errors become status codes in the interceptor, so each call goes through a real server with it.
_STUBS = {
    "taxonstream.v1.Checksummer": (
        checksummer_pb2_grpc.add_ChecksummerServicer_to_server,
        checksummer_pb2_grpc.ChecksummerStub,
    ),
    "taxonstream.v1.Fetcher": (fetcher_pb2_grpc.add_FetcherServicer_to_server, fetcher_pb2_grpc.FetcherStub),
}


def unary(servicer, descriptor, method: str, request):
    add, stub_type = _STUBS[descriptor.full_name]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[CallInterceptor()])
    add(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                response = getattr(stub_type(channel), method)(request, timeout=30)
            except grpc.RpcError as error:
                return None, error.code(), error.details()
            return response, grpc.StatusCode.OK, ""
    finally:
        server.stop(grace=None)


CHECKSUMMER = checksummer_pb2.DESCRIPTOR.services_by_name["Checksummer"]
FETCHER = fetcher_pb2.DESCRIPTOR.services_by_name["Fetcher"]


def test_checksum_of_bytes_matches_hashlib():
    data = b"specimen bytes"
    request = checksummer_pb2.ChecksumRequest(data=data, algorithms=["md5", "sha256", "sha1"])
    response, code, _ = unary(ChecksummerServicer(store=None, registry=None), CHECKSUMMER, "Checksum", request)
    assert code == grpc.StatusCode.OK
    assert dict(response.digests) == {name: hashlib.new(name, data).hexdigest() for name in ["md5", "sha256", "sha1"]}
    assert response.size_bytes == len(data)


def test_unknown_algorithm_is_invalid_argument():
    request = checksummer_pb2.ChecksumRequest(data=b"x", algorithms=["md55"])
    _, code, details = unary(ChecksummerServicer(store=None, registry=None), CHECKSUMMER, "Checksum", request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "md55" in details


@pytest.fixture
def table() -> JobTable:
    table = JobTable()
    table.add_job(Job(job_id="j1", source="list.csv", total=3, created_ms=1))
    for row, state, reason in [(0, Outcome.INDEXED, ""), (1, Outcome.FAILED, "http_404"), (2, Outcome.DUPLICATE, "")]:
        table.add_outcome(Outcome(record_id=f"j1:{row}", job_id="j1", state=state, stage="fetcher", reason=reason))
    # A re-delivered stage repeats a state: it must not count twice.
    table.add_outcome(Outcome(record_id="j1:0", job_id="j1", state=Outcome.INDEXED))
    return table


def test_get_job_counts_each_record_once(table):
    servicer = FetcherServicer(bus=None, jobs=table)
    status, code, _ = unary(servicer, FETCHER, "GetJob", fetcher_pb2.GetJobRequest(job_id="j1"))
    assert code == grpc.StatusCode.OK
    assert (status.total, status.indexed, status.failed, status.duplicate, status.done) == (3, 1, 1, 1, True)
    assert dict(status.failed_by_reason) == {"fetcher:http_404": 1}


def test_unknown_job_is_not_found(table):
    _, code, details = unary(
        FetcherServicer(bus=None, jobs=table), FETCHER, "GetJob", fetcher_pb2.GetJobRequest(job_id="nope")
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert "nope" in details


def test_a_job_is_not_done_until_every_record_has_ended():
    table = JobTable()
    table.add_job(Job(job_id="j2", total=2))
    table.add_outcome(Outcome(record_id="j2:0", job_id="j2", state=Outcome.INDEXED))
    assert not table.status("j2").done
    table.add_outcome(Outcome(record_id="j2:1", job_id="j2", state=Outcome.FAILED))
    assert table.status("j2").done


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("TAXONSTREAM_TOPIC_PREFIX", "lab.")
    monkeypatch.setenv("TAXONSTREAM_TOPIC_PARTITIONS", "12")
    settings = CoreSettings()
    assert (settings.topic_prefix, settings.topic_partitions) == ("lab.", 12)
    with pytest.raises(ValidationError):  # frozen: read once, never changed under a running worker
        settings.topic_prefix = "other."
