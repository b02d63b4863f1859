"""A dependency outage is a state, not a crash: health, supervised loops, start-up steps and a bounded exit.

Kafka, S3 or Triton gone — at start-up, in steady state or while draining — turns health NOT_SERVING with
the reason; the step or loop that met it waits (capped exponential backoff with jitter) and tries again,
and health turns SERVING once every loop that reported a problem works again. Only SIGTERM or a real bug
(an error that is not an outage) ends the process.

A loop reports how it is doing with `report_outage` / `report_ok` from its own thread (the worker loop does
after each batch); a loop that never reports counts as working again once it has run `settle_s` after a
restart without failing.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import grpc
import tenacity
import urllib3
from grpc_health.v1 import health, health_pb2
from kafka.errors import (
    IllegalArgumentError,
    IllegalStateError,
    IncompatibleBrokerVersion,
    InvalidConfigurationError,
    KafkaError,
    UnsupportedVersionError,
)

from taxonstream.core.errors import Transient

log = logging.getLogger(__name__)

T = TypeVar("T")
Loop = Callable[[threading.Event], None]

# Kafka errors that are our own bug or misconfiguration, not the broker being away: they still end the process.
_KAFKA_BUGS = (IllegalStateError, IllegalArgumentError, InvalidConfigurationError, UnsupportedVersionError)
_KAFKA_BUGS += (IncompatibleBrokerVersion,)
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0  # a gateway restart here takes 5-20 s; a broker's 10-40 s: retry well within that
SETTLE_S = 10.0


def is_outage(error: BaseException) -> bool:
    """Whether `error` means a dependency is unavailable (worth waiting for), as opposed to a bug."""
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 5:  # the cause chain: a library may wrap the connection error
        if isinstance(current, Transient | ConnectionError | TimeoutError | urllib3.exceptions.HTTPError):
            return True
        if isinstance(current, KafkaError) and not isinstance(current, _KAFKA_BUGS):
            return True
        current, seen = current.__cause__, seen + 1
    return False


def backoff(failures: int, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_CAP_S) -> float:
    """Seconds to wait after the `failures`-th outage in a row: base x 2^(n-1) up to `cap`, with full jitter
    (tenacity's exponential-random), so that pods that lost a dependency together do not return together."""
    state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
    state.attempt_number = max(1, failures)
    return tenacity.wait_random_exponential(multiplier=base, max=cap)(state)


class Health:
    """The gRPC health status of every service name: SERVING when ready, not draining and no outage reported."""

    def __init__(self, servicer: health.HealthServicer) -> None:
        self.servicer = servicer
        self._lock = threading.Lock()
        self._names: list[str] = [""]
        self._outages: dict[str, str] = {}  # who -> why
        self._ready = False
        self._draining = False
        self._publish()

    @property
    def serving(self) -> bool:
        with self._lock:
            return self._ready and not self._draining and not self._outages

    def outages(self) -> dict[str, str]:
        with self._lock:
            return dict(self._outages)

    def add_names(self, names: Iterable[str]) -> None:
        with self._lock:
            self._names.extend(n for n in names if n not in self._names)
        self._publish()

    def set_ready(self) -> None:
        with self._lock:
            self._ready = True
        self._publish()

    def down(self, who: str, reason: str) -> None:
        with self._lock:
            new = who not in self._outages
            self._outages[who] = reason
        if new:
            log.warning("not serving: dependency unavailable", extra={"part": who, "reason": reason})
            self._publish()

    def up(self, who: str) -> None:
        with self._lock:
            was = self._outages.pop(who, None)
        if was is not None:
            log.info("dependency back", extra={"part": who, "was": was})
            self._publish()

    def drain(self) -> None:
        with self._lock:
            self._draining = True
        self.servicer.enter_graceful_shutdown()

    def _publish(self) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if self.serving else health_pb2.HealthCheckResponse.NOT_SERVING
        with self._lock:
            names = list(self._names)
        for name in names:
            self.servicer.set(name, status)


class _Watch:
    """What one supervised loop reported, from its own thread."""

    def __init__(self, health: Health | None, who: str) -> None:
        self.health, self.who = health, who
        self.reported = False

    def down(self, reason: str) -> None:
        self.reported = True
        if self.health is not None:
            self.health.down(self.who, reason)

    def ok(self) -> None:
        self.reported = True
        if self.health is not None:
            self.health.up(self.who)


_current = threading.local()


def report_outage(reason: str) -> None:
    """From inside a supervised loop: a dependency is down (health NOT_SERVING until `report_ok`)."""
    watch: _Watch | None = getattr(_current, "watch", None)
    if watch is not None:
        watch.down(reason)


def report_ok() -> None:
    """From inside a supervised loop: its dependencies answer (health SERVING again if nothing else is down)."""
    watch: _Watch | None = getattr(_current, "watch", None)
    if watch is not None:
        watch.ok()


def current_health() -> Health | None:
    """The health a supervised loop running on this thread reports to (for the loops it starts itself)."""
    watch: _Watch | None = getattr(_current, "watch", None)
    return None if watch is None else watch.health


def supervised(
    who: str, loop: Loop, health: Health | None, settle_s: float = SETTLE_S, cap: float = BACKOFF_CAP_S
) -> Loop:
    """`loop` restarted with backoff whenever it raises an outage (health NOT_SERVING meanwhile).

    Anything else it raises is a bug and propagates: the process ends and is replaced.
    """

    def run(stop: threading.Event) -> None:
        watch = _current.watch = _Watch(health, who)
        failures = 0
        while not stop.is_set():
            started = time.monotonic()
            settled = _settle_timer(watch, settle_s) if failures else None
            try:
                loop(stop)
                return
            except Exception as error:
                if not is_outage(error):
                    raise
                # A loop that ran a good while before failing starts its backoff afresh.
                failures = 1 if time.monotonic() - started > 2 * cap else failures + 1
                wait = backoff(failures, cap=cap)
                watch.down(_reason(error))
                log.warning("loop stopped by an outage; restarting", extra={"loop": who, "in_s": round(wait, 2)})
                stop.wait(wait)
            finally:
                if settled is not None:
                    settled.cancel()

    return run


def _settle_timer(watch: _Watch, settle_s: float) -> threading.Timer:
    """Marks a restarted loop that reports nothing itself as working once it has run `settle_s`."""
    watch.reported = False

    def settle() -> None:
        if not watch.reported:
            watch.ok()

    timer = threading.Timer(settle_s, settle)
    timer.daemon = True
    timer.start()
    return timer


def until_available(what: str, step: Callable[[], T], health: Health, stop: threading.Event) -> T | None:
    """`step` (a start-up step that needs Kafka/S3/Triton) tried until it works; None if stopped first."""
    failures = 0
    while not stop.is_set():
        try:
            result = step()
        except Exception as error:
            if not is_outage(error):
                raise
            failures += 1
            wait = backoff(failures)
            health.down(what, _reason(error))
            log.warning("start-up step waits for a dependency", extra={"step": what, "in_s": round(wait, 2)})
            stop.wait(wait)
            continue
        health.up(what)
        return result
    return None


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:300]


class LateHandlers(grpc.GenericRpcHandler):
    """The service's handlers, added to a server that is already answering health checks.

    The gRPC server starts before `build` (which may wait minutes for S3), so health can say NOT_SERVING
    meanwhile; calls that arrive before the handlers exist get UNAVAILABLE (retry), not UNIMPLEMENTED.
    `collector` stands in for the server when the generated `add_…_to_server` functions register handlers.
    """

    def __init__(self) -> None:
        self._generic: list[grpc.GenericRpcHandler] = []
        self._methods: dict[str, grpc.RpcMethodHandler] = {}
        self._open = False
        self.collector = _Collector(self)

    def open(self) -> None:
        self._open = True

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if not self._open:
            return grpc.unary_unary_rpc_method_handler(_starting)
        method = handler_call_details.method
        if (found := self._methods.get(method)) is not None:
            return found
        return next((h for g in self._generic if (h := g.service(handler_call_details)) is not None), None)


class _Collector:
    def __init__(self, late: LateHandlers) -> None:
        self.late = late

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self.late._generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.late._methods.update({f"/{service}/{method}": h for method, h in handlers.items()})


def _starting(request: bytes, context: grpc.ServicerContext) -> None:
    context.abort(grpc.StatusCode.UNAVAILABLE, "starting: waiting for a dependency (see health)")


def exit_after_drain(code: int, grace_s: float = 5.0) -> None:
    """Exit with `code`, and never later than `grace_s` from now.

    Python's exit joins every non-daemon thread (executor workers included), so one hung call would keep
    the process alive for ever; a daemon watchdog ends it instead. Nothing is lost that way: offsets are
    committed only after outputs are flushed, so whatever such a thread was doing is redelivered.
    """

    def give_up() -> None:
        stuck = [t.name for t in threading.enumerate() if not t.daemon and t.is_alive()]
        log.error("threads still running after the drain; exiting without them", extra={"threads": stuck[:20]})
        logging.shutdown()
        os._exit(code)

    watchdog = threading.Timer(grace_s, give_up)
    watchdog.daemon = True
    watchdog.start()
    sys.exit(code)
