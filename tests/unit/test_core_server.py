"""The services' call interceptor on a real loopback gRPC server: every handler kind maps errors to codes.

Requests and responses are raw bytes (no serializers); the request's first message names what to raise.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from prometheus_client import REGISTRY

from taxonstream.core.errors import FailedPrecondition, InvalidArgument, NotFound, Transient
from taxonstream.core.server import CallInterceptor, Relayed

SERVICE = "test.Interceptor"
SENT_BEFORE_ERROR = [b"one", b"two"]


def _raise_for(name: bytes) -> None:
    errors: dict[bytes, Exception] = {
        b"transient": Transient("the object store is unreachable"),
        b"invalid": InvalidArgument("no texts given"),
        b"missing": NotFound("no job 'nope'"),
        b"precondition": FailedPrecondition("the model is not installed"),
        b"relayed": Relayed(grpc.StatusCode.RESOURCE_EXHAUSTED, "query text: too many requests"),
        b"unexpected": ZeroDivisionError("division by zero"),
    }
    if name in errors:
        raise errors[name]


def unary_unary(request: bytes, context) -> bytes:
    _raise_for(request)
    return b"ok:" + request


def stream_unary(requests: Iterator[bytes], context) -> bytes:
    first = next(requests)
    _raise_for(first)
    return b"ok:" + b"".join([first, *requests])


def unary_stream(request: bytes, context) -> Iterator[bytes]:
    yield from SENT_BEFORE_ERROR  # sent before the error: the caller must still get these
    _raise_for(request)


def stream_stream(requests: Iterator[bytes], context) -> Iterator[bytes]:
    first = next(requests)
    yield from SENT_BEFORE_ERROR
    _raise_for(first)
    yield from requests


def aborts_itself(request: bytes, context) -> bytes:
    context.abort(grpc.StatusCode.PERMISSION_DENIED, "the handler's own abort")


HANDLERS = {
    "UnaryUnary": grpc.unary_unary_rpc_method_handler(unary_unary),
    "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary),
    "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream),
    "StreamStream": grpc.stream_stream_rpc_method_handler(stream_stream),
    "AbortsItself": grpc.unary_unary_rpc_method_handler(aborts_itself),
}
KINDS = ["UnaryUnary", "StreamUnary", "UnaryStream", "StreamStream"]
EXPECTED = [
    (b"transient", grpc.StatusCode.UNAVAILABLE, "the object store is unreachable"),
    (b"invalid", grpc.StatusCode.INVALID_ARGUMENT, "no texts given"),
    (b"missing", grpc.StatusCode.NOT_FOUND, "no job 'nope'"),
    (b"precondition", grpc.StatusCode.FAILED_PRECONDITION, "the model is not installed"),
    (b"relayed", grpc.StatusCode.RESOURCE_EXHAUSTED, "query text: too many requests"),
]


@pytest.fixture(scope="module")
def channel() -> Iterator[grpc.Channel]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[CallInterceptor()])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, HANDLERS)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as open_channel:
        yield open_channel
    server.stop(grace=None)


def call(channel: grpc.Channel, kind: str, message: bytes) -> tuple[list[bytes], grpc.StatusCode, str]:
    """What the caller received (responses), and the status the call ended with."""
    path = f"/{SERVICE}/{kind}"
    received: list[bytes] = []
    try:
        if kind in {"UnaryUnary", "AbortsItself"}:
            received.append(channel.unary_unary(path)(message, timeout=30))
        elif kind == "StreamUnary":
            received.append(channel.stream_unary(path)(iter([message, b"+more"]), timeout=30))
        elif kind == "UnaryStream":
            received.extend(channel.unary_stream(path)(message, timeout=30))
        else:
            received.extend(channel.stream_stream(path)(iter([message, b"+more"]), timeout=30))
    except grpc.RpcError as error:
        return received, error.code(), error.details()
    return received, grpc.StatusCode.OK, ""


def calls_counted(kind: str, code: str) -> float:
    labels = {"method": f"/{SERVICE}/{kind}", "code": code}
    return REGISTRY.get_sample_value("taxonstream_grpc_seconds_count", labels) or 0.0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("message", "code", "details"), EXPECTED, ids=[m.decode() for m, _, _ in EXPECTED])
def test_each_handler_kind_answers_an_error_with_its_code(channel, kind, message, code, details):
    received, got_code, got_details = call(channel, kind, message)
    assert (got_code, got_details) == (code, details)
    # A streaming response keeps what was sent before the error; a unary one has nothing to keep.
    assert received == (SENT_BEFORE_ERROR if kind in {"UnaryStream", "StreamStream"} else [])


@pytest.mark.parametrize("kind", KINDS)
def test_an_unexpected_error_is_internal_with_a_message_and_no_traceback(channel, kind):
    received, code, details = call(channel, kind, b"unexpected")
    assert code == grpc.StatusCode.INTERNAL
    assert details == f"internal error in /{SERVICE}/{kind}: ZeroDivisionError: division by zero"
    assert "Traceback" not in details
    assert received == (SENT_BEFORE_ERROR if kind in {"UnaryStream", "StreamStream"} else [])


@pytest.mark.parametrize("kind", KINDS)
def test_a_call_that_succeeds_is_answered_unchanged(channel, kind):
    received, code, _ = call(channel, kind, b"fine")
    assert code == grpc.StatusCode.OK
    expected = {
        "UnaryUnary": [b"ok:fine"],
        "StreamUnary": [b"ok:fine+more"],
        "UnaryStream": SENT_BEFORE_ERROR,
        "StreamStream": [*SENT_BEFORE_ERROR, b"+more"],
    }
    assert received == expected[kind]


def test_a_handler_that_aborts_itself_keeps_its_code(channel):
    before = calls_counted("AbortsItself", "PERMISSION_DENIED")
    _, code, details = call(channel, "AbortsItself", b"")
    assert (code, details) == (grpc.StatusCode.PERMISSION_DENIED, "the handler's own abort")
    assert calls_counted("AbortsItself", "PERMISSION_DENIED") == before + 1


@pytest.mark.parametrize("kind", KINDS)
def test_the_histogram_counts_each_call_by_method_and_code(channel, kind):
    before_ok, before_unavailable = calls_counted(kind, "OK"), calls_counted(kind, "UNAVAILABLE")
    for _ in range(3):
        call(channel, kind, b"fine")
    call(channel, kind, b"transient")
    # Observed before the status goes out (when the handler returns or its stream ends), so already counted.
    assert calls_counted(kind, "OK") == before_ok + 3
    assert calls_counted(kind, "UNAVAILABLE") == before_unavailable + 1
