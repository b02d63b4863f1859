"""Process bootstrap shared by the five services: gRPC server, health, reflection, metrics, drain.

A service describes itself as a `Service` (its servicers and its background loops); `run` does the
rest. On SIGTERM health turns NOT_SERVING, the loops finish their batch (outputs flushed, offsets
committed), in-flight RPCs get `drain_seconds`, and the process exits 0.
"""

from __future__ import annotations

import hmac
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import NoReturn, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from taxonstream.core import logs, metrics
from taxonstream.core.bus import Bus
from taxonstream.core.channels import AUTH_METADATA, CredentialsError, bearer, exposure_refusal, server_credentials
from taxonstream.core.errors import FailedPrecondition, InvalidArgument, NotFound, Transient
from taxonstream.core.settings import CoreSettings
from taxonstream.core.store import ObjectStore
from taxonstream.core.supervision import Health, LateHandlers, exit_after_drain, supervised, until_available

log = logging.getLogger(__name__)

S = TypeVar("S", bound=CoreSettings)
Loop = Callable[[threading.Event], None]


@dataclass
class Service:
    name: str
    # Adds the servicers to the server and returns their full service names (for health/reflection).
    register: Callable[[grpc.Server], Sequence[str]]
    loops: Sequence[Loop] = field(default_factory=list)
    on_stop: Callable[[], None] | None = None
    # Health stays NOT_SERVING until this returns True (e.g. an indexer replaying its topic), so a
    # readiness probe, and `stack up`, keep clients away from a replica that would answer from stale state.
    ready: Callable[[], bool] | None = None


class Relayed(Exception):
    """Another service refused a call made for this request: the caller gets that service's code, and what for."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code

    @classmethod
    def of(cls, error: grpc.RpcError, what: str) -> Relayed:
        return cls(error.code(), f"{what}: {error.details()}")


# The one table from the error taxonomy (core/errors.py) to the status a caller sees. A Transient error means
# a dependency is down: UNAVAILABLE tells the caller to retry, as the workers do.
STATUS_CODES: dict[type[Exception], grpc.StatusCode] = {
    Transient: grpc.StatusCode.UNAVAILABLE,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
}
_INTERNAL_DETAIL_CHARS = 300  # what an unexpected error tells the caller: its type and message, never a traceback


def status_of(error: Exception) -> grpc.StatusCode | None:
    """The status code an error answers a call with, or None for an unexpected one."""
    if isinstance(error, Relayed):
        return error.code
    return next((STATUS_CODES[kind] for kind in type(error).__mro__ if kind in STATUS_CODES), None)


class _Call:
    """One call's outcome: the status it ends with (an error mapped to its code) and its time in the histogram."""

    def __init__(self, method: str, context: grpc.ServicerContext) -> None:
        self.method = method
        self.context = context
        self.code = "OK"
        self.started = time.perf_counter()

    def fail(self, error: Exception) -> NoReturn:
        code = status_of(error)
        if code is None:
            if (already := _code_name(self.context)) is not None:  # the handler aborted or set a code itself
                self.code = already
                raise error
            log.exception("unexpected error answering a call", extra={"method": self.method})
            code = grpc.StatusCode.INTERNAL
            detail = f"internal error in {self.method}: {type(error).__name__}: {error}"[:_INTERNAL_DETAIL_CHARS]
        else:
            detail = str(error)
        self.code = code.name
        self.context.abort(code, detail)
        raise AssertionError("abort returned")  # grpc's abort always raises

    def observe(self) -> None:
        code = _code_name(self.context) or self.code
        metrics.GRPC_SECONDS.labels(self.method, code).observe(time.perf_counter() - self.started)


def _answer_unary(method: str, behavior: Callable) -> Callable:
    """A unary-response behavior (unary-unary or stream-unary) whose errors end the call with their code."""

    def answer(request, context):
        call = _Call(method, context)
        try:
            return behavior(request, context)
        except Exception as error:
            call.fail(error)
        finally:
            call.observe()

    return answer


def _answer_stream(method: str, behavior: Callable) -> Callable:
    """A streaming-response behavior: the iteration is wrapped, so an error mid-way ends the stream with its
    code after the responses already sent."""

    def answer(request, context) -> Iterator:
        call = _Call(method, context)
        try:
            yield from behavior(request, context)
        except GeneratorExit:  # the caller went away: the server closes the stream
            call.code = "CANCELLED"
            raise
        except Exception as error:
            call.fail(error)
        finally:
            call.observe()

    return answer


class CallInterceptor(grpc.ServerInterceptor):
    """For all four kinds of handler: maps errors to status codes (`STATUS_CODES`, `Relayed`, INTERNAL for the
    unexpected) and times each call by method and code."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        io = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_answer_unary(method, handler.unary_unary), **io)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(_answer_unary(method, handler.stream_unary), **io)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(_answer_stream(method, handler.unary_stream), **io)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(_answer_stream(method, handler.stream_stream), **io)
        return handler


# The one table of RPCs that change state (submit, cancel, retry, delete, re-embed, serve, retire, and a
# manifest written to S3): with a token configured, none of them runs without it. Reads need it only under
# `auth_reads`; health never does (the kubelet's probes carry no token).
STATE_CHANGING: frozenset[str] = frozenset(
    f"/taxonstream.v1.{service}/{method}"
    for service, methods in {
        "Fetcher": ("SubmitJob", "CancelJob", "RetryJob"),
        "Indexer": ("Delete", "Reembed", "Serve", "Retire"),
        "Checksummer": ("JobManifest",),
    }.items()
    for method in methods
)
ALWAYS_OPEN: frozenset[str] = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


def needs_token(method: str, reads_too: bool) -> bool:
    if method in ALWAYS_OPEN:
        return False
    return reads_too or method in STATE_CHANGING


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuses, with UNAUTHENTICATED and before the handler runs, a call that needs the token and lacks it."""

    def __init__(self, token: str, reads_too: bool = False) -> None:
        self.expected = bearer(token).encode() if token else None
        self.reads_too = reads_too

    def intercept_service(self, continuation, handler_call_details):
        if self.expected is None or not needs_token(handler_call_details.method, self.reads_too):
            return continuation(handler_call_details)
        sent = dict(handler_call_details.invocation_metadata or ()).get(AUTH_METADATA)
        if isinstance(sent, str) and hmac.compare_digest(sent.encode(), self.expected):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return _refusal(handler, handler_call_details.method, "no token" if sent is None else "a wrong token")


def _refusal(handler: grpc.RpcMethodHandler, method: str, what: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind that ends the call at once (a request stream is never read)."""

    def refuse(request, context):
        log.warning("refused a call", extra={"method": method, "reason": what, "peer": context.peer()})
        context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{method} needs the deployment's token; the call had {what}")

    io = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse, **io)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse, **io)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse, **io)
    return grpc.stream_stream_rpc_method_handler(refuse, **io)


def interceptors(settings: CoreSettings) -> list[grpc.ServerInterceptor]:
    """Errors mapped and calls timed (a refusal too, as UNAUTHENTICATED), then the token checked."""
    return [CallInterceptor(), AuthInterceptor(settings.token.get_secret_value(), settings.auth_reads)]


def listen(server: grpc.Server, settings: CoreSettings, credentials: grpc.ServerCredentials | None) -> tuple[str, int]:
    """Binds the server's port, TLS with `credentials`; (address, port bound, 0 on failure)."""
    address = f"{settings.bind_host}:{settings.grpc_port}"
    if credentials is None:
        return address, server.add_insecure_port(address)
    return address, server.add_secure_port(address, credentials)


def _health_only_server(settings: CoreSettings, servicer: health.HealthServicer) -> grpc.Server | None:
    """Health alone, in plaintext, on `health_port`: the kubelet's gRPC probes cannot speak TLS."""
    if not settings.health_port:
        return None
    probes = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, probes)
    address = f"{settings.bind_host}:{settings.health_port}"
    if probes.add_insecure_port(address) == 0:
        sys.exit(f"cannot listen on {address} (health port)")
    probes.start()
    return probes


def registrar(module, service: str, add: Callable[[object, grpc.Server], None], servicer: object):
    """`Service.register` for one generated servicer: adds it and names it for health and reflection."""

    def register(server: grpc.Server) -> list[str]:
        add(servicer, server)
        return [module.DESCRIPTOR.services_by_name[service].full_name]

    return register


def connect(settings: CoreSettings) -> tuple[Bus, ObjectStore]:
    """The bus and the store every service starts with, topics and bucket created if missing."""
    bus = Bus(settings)
    bus.ensure_topics()
    store = ObjectStore(settings)
    store.ensure_bucket()
    return bus, store


def _code_name(context) -> str | None:
    code = context.code() if hasattr(context, "code") else None
    return code.name if isinstance(code, grpc.StatusCode) else None


def run(name: str, settings_type: type[S], build: Callable[[S], Service]) -> None:
    """Entry point of `python -m taxonstream.<service>`."""
    settings = settings_type()
    logs.configure(name, settings.log_level)
    # Refused before `build`, which can take minutes (the checksummer loads its registry).
    if (refusal := exposure_refusal(settings)) is not None:
        sys.exit(f"{name}: {refusal}")
    try:
        credentials = server_credentials(settings)
    except CredentialsError as error:
        sys.exit(f"{name}: {error}")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    metrics.serve(settings.bind_host, settings.metrics_port)

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="grpc"),
        interceptors=interceptors(settings),
        options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)],
    )
    # Listening (health NOT_SERVING) before `build`, which waits for Kafka/S3 and can take minutes.
    late = LateHandlers()
    server.add_generic_rpc_handlers((late,))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    status = Health(health_servicer)
    probes = _health_only_server(settings, health_servicer)
    address, bound = listen(server, settings, credentials)
    if bound == 0:
        sys.exit(f"{name}: cannot listen on {address}")
    server.start()

    service = _build_until_available(build, settings, status, stop)
    if service is None:  # stopped while waiting for a dependency
        server.stop(grace=0).wait()
        log.info("stopped before start-up ended")
        exit_after_drain(0)
    names = list(service.register(late.collector))
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], late.collector)
    late.open()
    status.add_names(names)
    crashed: list[BaseException] = []

    def guarded(loop: Loop) -> None:
        try:
            loop(stop)
        except BaseException as error:  # a bug (outages are waited out by `supervised`): the pod is replaced
            log.exception("background loop died")
            crashed.append(error)
            stop.set()

    # Daemon threads: a loop hung in a call cannot keep the process alive past its drain.
    threads = [
        threading.Thread(target=guarded, args=(supervised(_loop_name(i, loop), loop, status),), name=f"loop-{i}")
        for i, loop in enumerate(service.loops)
    ]
    for thread in threads:
        thread.daemon = True
        thread.start()

    def serve_when_ready() -> None:
        while service.ready is not None and not service.ready():
            if stop.wait(0.2):
                return
        status.set_ready()
        log.info("serving", extra={"grpc": address, "metrics_port": settings.metrics_port})

    threading.Thread(target=serve_when_ready, name="readiness", daemon=True).start()

    stop.wait()
    log.info("draining")
    status.drain()
    deadline = time.monotonic() + settings.drain_seconds
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    if service.on_stop:
        _within(deadline, service.on_stop)
    server.stop(grace=max(0.0, deadline - time.monotonic())).wait()
    if probes is not None:
        probes.stop(grace=None)
    log.info("stopped")
    exit_after_drain(1 if crashed else 0)


def _build_until_available(build: Callable[[S], Service], settings: S, status: Health, stop: threading.Event):
    """`build` retried while a dependency is out, in a thread so that SIGTERM meanwhile still exits at once."""
    outcome: list[Service | BaseException | None] = []
    done = threading.Event()

    def attempt() -> None:
        try:
            outcome.append(until_available("start-up", lambda: build(settings), status, stop))
        except BaseException as error:  # a bug: raised again below, on the main thread
            outcome.append(error)
        done.set()

    threading.Thread(target=attempt, name="start-up", daemon=True).start()
    while not done.wait(0.2):
        if stop.is_set():
            return None
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _within(deadline: float, step: Callable[[], None]) -> None:
    """A drain step (a final snapshot) that may neither outlast the drain nor, with S3 away, crash the exit."""

    def guarded() -> None:
        try:
            step()
        except Exception:  # noqa: BLE001 - the last snapshot is an optimisation: replay covers its absence
            log.exception("drain step failed")

    thread = threading.Thread(target=guarded, name="drain-step", daemon=True)
    thread.start()
    thread.join(timeout=max(1.0, deadline - time.monotonic()))


def _loop_name(index: int, loop: Loop) -> str:
    return f"loop-{index} {getattr(loop, '__qualname__', type(loop).__name__)}"
