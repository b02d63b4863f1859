"""Process bootstrap shared by the five services: gRPC server, health, reflection, metrics, drain.

A service describes itself as a `Service` (its servicers and its background loops); `run` does the
rest. On SIGTERM health turns NOT_SERVING, the loops finish their batch (outputs flushed, offsets
committed), in-flight RPCs get `drain_seconds`, and the process exits 0.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from taxonstream.core import logs, metrics
from taxonstream.core.bus import Bus
from taxonstream.core.errors import Transient
from taxonstream.core.settings import CoreSettings
from taxonstream.core.store import ObjectStore

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


class MetricsInterceptor(grpc.ServerInterceptor):
    """Times every unary RPC by method and status code; a Transient error answers UNAVAILABLE."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        inner = handler.unary_unary

        def timed(request, context):
            started = time.perf_counter()
            code = "OK"
            try:
                return inner(request, context)
            except Transient as error:  # a dependency is down: the caller may retry, as workers do
                code = "UNAVAILABLE"
                context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
            except Exception:
                code = "INTERNAL"
                raise
            finally:
                code = _code_name(context) or code
                metrics.GRPC_SECONDS.labels(method, code).observe(time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            timed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


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
    service = build(settings)
    metrics.serve(settings.bind_host, settings.metrics_port)

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="grpc"),
        interceptors=[MetricsInterceptor()],
        options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)],
    )
    names = list(service.register(server))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    address = f"{settings.bind_host}:{settings.grpc_port}"
    if server.add_insecure_port(address) == 0:
        sys.exit(f"{name}: cannot listen on {address}")
    server.start()

    stop = threading.Event()
    crashed: list[BaseException] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    def guarded(loop: Loop) -> None:
        try:
            loop(stop)
        except BaseException as error:  # a dead loop must take the pod down so it is replaced
            log.exception("background loop died")
            crashed.append(error)
            stop.set()

    threads = [threading.Thread(target=guarded, args=(loop,), name=f"loop-{i}") for i, loop in enumerate(service.loops)]
    for thread in threads:
        thread.start()

    def serve_when_ready() -> None:
        while service.ready is not None and not service.ready():
            if stop.wait(0.2):
                return
        for service_name in ["", *names]:
            health_servicer.set(service_name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", extra={"grpc": address, "metrics_port": settings.metrics_port})

    for service_name in ["", *names]:
        health_servicer.set(service_name, health_pb2.HealthCheckResponse.NOT_SERVING)
    threading.Thread(target=serve_when_ready, name="readiness", daemon=True).start()

    stop.wait()
    log.info("draining")
    health_servicer.enter_graceful_shutdown()
    deadline = time.monotonic() + settings.drain_seconds
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    if service.on_stop:
        service.on_stop()
    server.stop(grace=max(0.0, deadline - time.monotonic())).wait()
    log.info("stopped")
    sys.exit(1 if crashed else 0)
