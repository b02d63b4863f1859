"""Outages as a state (core/supervision.py), without servers: a supervised loop goes NOT_SERVING on an outage
and SERVING again once it works, a bug still propagates, start-up steps wait for their dependency, calls
before the handlers exist are UNAVAILABLE, and the exit after a drain does not wait for a hung thread."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from concurrent import futures

import grpc
import pytest
import urllib3
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from kafka.errors import IllegalStateError, KafkaConnectionError

from taxonstream.core.errors import Failed, Transient
from taxonstream.core.supervision import (
    Health,
    LateHandlers,
    backoff,
    is_outage,
    report_ok,
    supervised,
    until_available,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class RecordingHealth(health.HealthServicer):
    """The health servicer, with every status it was given kept in order."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[int] = []

    def set(self, service: str, status: int) -> None:
        if service == "":
            self.history.append(status)
        super().set(service, status)


def _changes(history: list[int]) -> list[int]:
    return [s for i, s in enumerate(history) if i == 0 or history[i - 1] != s]


def test_outages_are_told_from_bugs() -> None:
    assert is_outage(Transient("S3 unavailable"))
    assert is_outage(KafkaConnectionError("111 ECONNREFUSED"))
    assert is_outage(urllib3.exceptions.MaxRetryError(None, "/", "refused"))
    wrapped = RuntimeError("registry load failed")
    wrapped.__cause__ = ConnectionRefusedError(111, "refused")
    assert is_outage(wrapped), "a connection error under a wrapper counts"
    assert not is_outage(KeyError("a bug"))
    assert not is_outage(Failed("bad", "record"))
    assert not is_outage(IllegalStateError("our own misuse of the consumer"))


def test_backoff_is_capped_and_jittered() -> None:
    waits = [backoff(n, base=0.5, cap=4.0) for n in range(1, 30)]
    assert all(0.0 <= w <= 4.0 for w in waits)
    assert len({round(w, 6) for w in waits}) > 1, "jittered, not one fixed number"


def test_a_supervised_loop_goes_not_serving_on_an_outage_and_serving_again_when_it_works() -> None:
    servicer = RecordingHealth()
    status = Health(servicer)
    status.set_ready()
    stop, resumed = threading.Event(), threading.Event()
    calls: list[int] = []
    during: list[dict[str, str]] = []

    def loop(stop: threading.Event) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise KafkaConnectionError("111 ECONNREFUSED")
        during.append(status.outages())  # restarted: the outage is still on record until the loop says ok
        report_ok()
        resumed.set()
        stop.wait()

    thread = threading.Thread(target=supervised("embedder loop", loop, status, cap=0.01), args=(stop,), daemon=True)
    thread.start()
    assert resumed.wait(10)
    assert status.serving
    stop.set()
    thread.join(10)

    assert _changes(servicer.history) == [NOT_SERVING, SERVING, NOT_SERVING, SERVING]
    assert "KafkaConnectionError" in during[0]["embedder loop"], "health says which part is down, and why"
    assert len(calls) == 2 and not thread.is_alive()


def test_a_loop_that_never_reports_is_serving_again_once_it_has_run_a_while() -> None:
    status = Health(RecordingHealth())
    status.set_ready()
    stop, restarted = threading.Event(), threading.Event()
    calls: list[int] = []

    def loop(stop: threading.Event) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise Transient("S3 unavailable")
        restarted.set()
        stop.wait()

    thread = threading.Thread(
        target=supervised("observer", loop, status, settle_s=0.05, cap=0.01), args=(stop,), daemon=True
    )
    thread.start()
    assert restarted.wait(10)
    settled = threading.Event()
    for _ in range(200):  # the settle timer fires on its own thread: wait for its effect, bounded
        if status.serving:
            settled.set()
            break
        stop.wait(0.05)
    stop.set()
    thread.join(10)
    assert settled.is_set()


def test_a_bug_in_a_supervised_loop_still_propagates() -> None:
    status = Health(RecordingHealth())

    def loop(stop: threading.Event) -> None:
        raise KeyError("not an outage")

    with pytest.raises(KeyError):
        supervised("worker", loop, status, cap=0.01)(threading.Event())


def test_a_start_up_step_waits_for_its_dependency() -> None:
    servicer = RecordingHealth()
    status = Health(servicer)
    attempts: list[int] = []

    def load_registry() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise Transient("S3 unavailable")
        return "registry"

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("taxonstream.core.supervision.backoff", lambda failures: 0.0)
        assert until_available("start-up", load_registry, status, threading.Event()) == "registry"
    assert len(attempts) == 3
    assert status.outages() == {}, "the step's outage is cleared once it worked"
    assert not status.serving, "still not ready: that is the service's own readiness"


def test_a_stopped_start_up_gives_up_waiting() -> None:
    stop = threading.Event()
    stop.set()
    assert (
        until_available("start-up", lambda: pytest.fail("not called once stopped"), Health(RecordingHealth()), stop)
        is None
    )


def test_calls_before_the_handlers_exist_are_unavailable_then_answered() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    late = LateHandlers()
    server.add_generic_rpc_handlers((late,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as early:
            stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert early.value.code() == grpc.StatusCode.UNAVAILABLE

        answering = health.HealthServicer()
        answering.set("", SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(answering, late.collector)  # added after start
        late.open()
        assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == SERVING
        channel.close()
    finally:
        server.stop(grace=None)


def test_the_exit_after_a_drain_does_not_wait_for_a_hung_thread() -> None:
    script = textwrap.dedent(
        """
        import threading
        from taxonstream.core.supervision import exit_after_drain
        threading.Thread(target=threading.Event().wait, name="hung-call").start()  # non-daemon, never ends
        exit_after_drain(3, grace_s=0.2)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert "threads still running after the drain" in done.stderr
