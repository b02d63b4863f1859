"""Who may call: the token interceptor and TLS on a real loopback gRPC server serving every RPC of the protos.

Each RPC's handler only records that it ran, so "refused" means the handler was never called. The
certificate is self-signed, made here with the openssl command line (the `cryptography` package is not
installed in this environment).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from taxonstream.core.channels import CredentialsError, exposure_refusal, open_channel, server_credentials
from taxonstream.core.server import STATE_CHANGING, interceptors
from taxonstream.core.settings import CoreSettings
from taxonstream.v1 import checksummer_pb2, detector_pb2, embedder_pb2, fetcher_pb2, indexer_pb2

TOKEN = "s3cret-token"
MODULES = (checksummer_pb2, detector_pb2, embedder_pb2, fetcher_pb2, indexer_pb2)
METHODS: list[MethodDescriptor] = [
    method
    for module in MODULES
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]
# Reviewed by hand: these only read (or compute without storing). A new RPC lands in neither list and fails
# test_every_rpc_is_classified until someone decides which it is.
READS = {
    "/taxonstream.v1.Checksummer/Checksum",
    "/taxonstream.v1.Checksummer/FindDuplicates",
    "/taxonstream.v1.Checksummer/BuddyCheck",
    "/taxonstream.v1.Checksummer/JobDuplicates",
    "/taxonstream.v1.Detector/Detect",
    "/taxonstream.v1.Embedder/EmbedImages",
    "/taxonstream.v1.Embedder/EmbedTexts",
    "/taxonstream.v1.Fetcher/GetJob",
    "/taxonstream.v1.Fetcher/ListJobs",
    "/taxonstream.v1.Fetcher/ListOutcomes",
    "/taxonstream.v1.Indexer/Search",
    "/taxonstream.v1.Indexer/Stats",
    "/taxonstream.v1.Indexer/ListImages",
    "/taxonstream.v1.Indexer/Classify",
}


def path_of(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def _handler(method: MethodDescriptor, calls: list[str]) -> grpc.RpcMethodHandler:
    """Records the call and answers an empty response; a request stream is read to its end first."""
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    path = path_of(method)

    def respond(request, context):
        if method.client_streaming:
            list(request)
        calls.append(path)
        return iter([response_type()]) if method.server_streaming else response_type()

    kind = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(method.client_streaming, method.server_streaming)]
    return kind(
        respond, request_deserializer=request_type.FromString, response_serializer=response_type.SerializeToString
    )


@dataclass
class Server:
    port: int
    calls: list[str]


def _serve(settings: CoreSettings) -> Iterator[Server]:
    calls: list[str] = []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=interceptors(settings))
    by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
    for method in METHODS:
        by_service.setdefault(method.containing_service.full_name, {})[method.name] = _handler(method, calls)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(name, handlers) for name, handlers in by_service.items()]
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    credentials = server_credentials(settings)
    address = "127.0.0.1:0"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    server.start()
    try:
        yield Server(port, calls)
    finally:
        server.stop(grace=None)


def call(channel: grpc.Channel, method: MethodDescriptor) -> grpc.StatusCode:
    """The status one call of `method` (an empty request) ends with."""
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    io = {"request_serializer": request_type.SerializeToString, "response_deserializer": response_type.FromString}
    path = path_of(method)
    try:
        if method.client_streaming and method.server_streaming:
            list(channel.stream_stream(path, **io)(iter([request_type()]), timeout=10))
        elif method.client_streaming:
            channel.stream_unary(path, **io)(iter([request_type()]), timeout=10)
        elif method.server_streaming:
            list(channel.unary_stream(path, **io)(request_type(), timeout=10))
        else:
            channel.unary_unary(path, **io)(request_type(), timeout=10)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def guarded() -> Iterator[Server]:
    yield from _serve(CoreSettings(token=TOKEN))


@pytest.fixture(scope="module")
def guarded_reads() -> Iterator[Server]:
    yield from _serve(CoreSettings(token=TOKEN, auth_reads=True))


CHANGING = [m for m in METHODS if path_of(m) in STATE_CHANGING]
READING = [m for m in METHODS if path_of(m) not in STATE_CHANGING]


def test_every_rpc_is_classified():
    paths = {path_of(m) for m in METHODS}
    assert paths >= STATE_CHANGING, f"the table names RPCs the protos lack: {sorted(STATE_CHANGING - paths)}"
    unclassified = paths - STATE_CHANGING - READS
    assert not unclassified, f"decide whether these change state: {sorted(unclassified)}"
    assert {"/taxonstream.v1.Fetcher/SubmitJob", "/taxonstream.v1.Indexer/Delete"} <= STATE_CHANGING


@pytest.mark.parametrize("token", [None, "wrong-token", TOKEN + "x", ""], ids=["none", "wrong", "longer", "empty"])
@pytest.mark.parametrize("method", CHANGING, ids=path_of)
def test_state_changing_rpc_without_the_right_token_is_refused_before_its_handler(guarded, method, token):
    with open_channel(f"127.0.0.1:{guarded.port}", token=token or "") as channel:
        before = list(guarded.calls)
        assert call(channel, method) == grpc.StatusCode.UNAUTHENTICATED
    assert path_of(method) not in guarded.calls[len(before) :], "the handler ran"


@pytest.mark.parametrize("method", CHANGING, ids=path_of)
def test_state_changing_rpc_with_the_token_runs(guarded, method):
    with open_channel(f"127.0.0.1:{guarded.port}", token=TOKEN) as channel:
        assert call(channel, method) == grpc.StatusCode.OK
    assert path_of(method) in guarded.calls


@pytest.mark.parametrize("method", READING, ids=path_of)
def test_reads_need_no_token_by_default(guarded, method):
    with open_channel(f"127.0.0.1:{guarded.port}") as channel:
        assert call(channel, method) == grpc.StatusCode.OK
    assert path_of(method) in guarded.calls


def test_reads_need_the_token_when_configured_but_health_never(guarded_reads):
    read = next(m for m in READING if m.name == "Search")
    with open_channel(f"127.0.0.1:{guarded_reads.port}") as channel:
        assert call(channel, read) == grpc.StatusCode.UNAUTHENTICATED
        assert path_of(read) not in guarded_reads.calls
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    with open_channel(f"127.0.0.1:{guarded_reads.port}", token=TOKEN) as channel:
        assert call(channel, read) == grpc.StatusCode.OK
    assert path_of(read) in guarded_reads.calls


def test_no_token_configured_checks_nothing():
    for server in _serve(CoreSettings()):
        with open_channel(f"127.0.0.1:{server.port}") as channel:
            assert all(call(channel, m) == grpc.StatusCode.OK for m in CHANGING)
        assert {path_of(m) for m in CHANGING} <= set(server.calls)


# --- TLS ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "server.crt", folder / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def tls_server(certificate) -> Iterator[Server]:
    cert, key = certificate
    yield from _serve(CoreSettings(token=TOKEN, tls_cert=str(cert), tls_key=str(key)))


def test_tls_client_with_the_ca_and_token_is_served(tls_server, certificate):
    submit = next(m for m in CHANGING if m.name == "SubmitJob")
    with open_channel(f"127.0.0.1:{tls_server.port}", token=TOKEN, ca_file=str(certificate[0])) as channel:
        assert call(channel, submit) == grpc.StatusCode.OK
    assert path_of(submit) in tls_server.calls


def test_tls_server_refuses_a_plaintext_client(tls_server):
    before = len(tls_server.calls)
    with open_channel(f"127.0.0.1:{tls_server.port}", token=TOKEN) as channel:
        assert call(channel, next(m for m in READING if m.name == "GetJob")) == grpc.StatusCode.UNAVAILABLE
    assert len(tls_server.calls) == before


def test_tls_settings_that_cannot_work_are_named(tmp_path, certificate):
    with pytest.raises(CredentialsError, match="set both or neither"):
        server_credentials(CoreSettings(tls_cert=str(certificate[0])))
    with pytest.raises(CredentialsError, match="cannot read the TLS key"):
        server_credentials(CoreSettings(tls_cert=str(certificate[0]), tls_key=str(tmp_path / "absent.key")))
    with pytest.raises(CredentialsError, match="cannot read the TLS CA file"):
        open_channel("127.0.0.1:1", ca_file=str(tmp_path / "absent.pem"))


# --- exposure -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "refused"),
    [
        ({"bind_host": "127.0.0.1"}, False),
        ({"bind_host": "::1"}, False),
        ({"bind_host": "localhost"}, False),
        ({"bind_host": "0.0.0.0"}, True),
        ({"bind_host": "10.1.2.3"}, True),
        ({"bind_host": "my-host.example"}, True),
        ({"bind_host": "0.0.0.0", "token": TOKEN}, False),
        ({"bind_host": "0.0.0.0", "insecure": True}, False),
    ],
)
def test_only_loopback_runs_without_a_token(settings, refused):
    refusal = exposure_refusal(CoreSettings(**settings))
    assert (refusal is not None) == refused
    if refused:
        assert "TAXONSTREAM_TOKEN" in refusal and settings["bind_host"] in refusal


def test_a_service_bound_beyond_loopback_without_a_token_refuses_before_building(tmp_path):
    probe = (
        "import sys\n"
        "from taxonstream.core.server import run\n"
        "from taxonstream.core.settings import CoreSettings\n"
        "run('probe', CoreSettings, lambda settings: sys.exit('built'))\n"
    )
    env = {"TAXONSTREAM_BIND_HOST": "0.0.0.0", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "probe: refusing to listen on 0.0.0.0 without a token" in done.stderr
    assert "built" not in done.stderr and "Traceback" not in done.stderr


def test_cli_token_flag_reaches_the_channel(guarded, monkeypatch):
    from taxonstream.cli import clients

    monkeypatch.setenv("TAXONSTREAM_TOKEN", "")  # recorded, so the use_token below is undone after the test
    monkeypatch.setenv("TAXONSTREAM_FETCHER_ADDR", f"127.0.0.1:{guarded.port}")
    submit = next(m for m in CHANGING if m.name == "CancelJob")
    with clients.channel("fetcher") as channel:
        assert call(channel, submit) == grpc.StatusCode.UNAUTHENTICATED
    clients.use_token(TOKEN)
    with clients.channel("fetcher") as channel:
        assert call(channel, submit) == grpc.StatusCode.OK


def test_guarded_server_is_thread_safe_under_mixed_callers(guarded):
    """Right and wrong callers at once: each gets its own answer (the interceptor keeps no per-call state)."""
    submit = next(m for m in CHANGING if m.name == "RetryJob")
    results: dict[str, list[grpc.StatusCode]] = {"right": [], "wrong": []}
    barrier = threading.Barrier(8)

    def caller(kind: str) -> None:
        with open_channel(f"127.0.0.1:{guarded.port}", token=TOKEN if kind == "right" else "nope") as channel:
            barrier.wait()
            results[kind].extend(call(channel, submit) for _ in range(5))

    threads = [threading.Thread(target=caller, args=("right" if i % 2 else "wrong",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results["right"] == [grpc.StatusCode.OK] * 20
    assert results["wrong"] == [grpc.StatusCode.UNAUTHENTICATED] * 20
