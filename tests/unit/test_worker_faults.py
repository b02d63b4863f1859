"""Faults the core worker turns into health states, without Kafka: a replica whose resume positions are gone
and that must not skip stays NOT_SERVING (one error line, no restart loop); an idle worker notices the broker
going away and coming back; and the wait budget of a record queued behind a throttling host (hosts.py)."""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace

import pytest
from grpc_health.v1 import health_pb2
from kafka.errors import KafkaTimeoutError

from taxonstream.core.bus import OffsetsLost
from taxonstream.core.errors import Deferred, Failed
from taxonstream.core.supervision import Health, supervised
from taxonstream.core.topics import Topics
from taxonstream.core.worker import StreamWorker, each
from taxonstream.fetching.attempts import AttemptPolicy, RetryLater
from taxonstream.fetching.download import Downloaded
from taxonstream.fetching.hosts import HostGates
from taxonstream.fetching.politeness import RatePolicy
from taxonstream.indexer.worker import IndexWorker
from taxonstream.v1.messages_pb2 import Embedding, FetchedImage

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
TOPICS = Topics("t.")


class RecordingHealth:
    """The health servicer's `set`, with every overall status kept in order."""

    def __init__(self) -> None:
        self.history: list[int] = []

    def set(self, service: str, status: int) -> None:
        if service == "":
            self.history.append(status)

    def enter_graceful_shutdown(self) -> None:
        pass


def _wait_for(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.01)


def _serving_health() -> tuple[Health, RecordingHealth]:
    servicer = RecordingHealth()
    health = Health(servicer)
    health.set_ready()
    return health, servicer


def _start(worker: StreamWorker, health: Health) -> tuple[threading.Event, threading.Thread, list[BaseException]]:
    stop, errors = threading.Event(), []

    def run() -> None:
        try:
            supervised("worker", worker.run, health, cap=0.01)(stop)
        except BaseException as error:  # noqa: BLE001 - what escaped is what the test checks
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return stop, thread, errors


# -- offsets the index must not skip ---------------------------------------------------------------------------


def test_the_index_worker_refuses_to_skip_offsets() -> None:
    index = SimpleNamespace(
        bus=SimpleNamespace(topics=TOPICS),
        handle=lambda message: [],
        offsets={},
        durable=lambda done: None,
        snapshot_if_due=lambda: None,
        settings=SimpleNamespace(max_batch=32),
    )
    worker = IndexWorker.worker(index)
    assert (worker.replica, worker.on_gap) == (True, "refuse")


def test_a_refused_gap_is_not_serving_with_one_line_and_no_restart_loop(caplog) -> None:
    opened: list[tuple] = []

    def reader(*args) -> None:
        opened.append(args)
        raise OffsetsLost("refusing to start: t.embedded[0] from 5: 7 messages deleted before offset 12")

    bus = SimpleNamespace(topics=TOPICS, reader=reader, producer=lambda: pytest.fail("no producer without a reader"))
    worker = StreamWorker(
        stage="indexer",
        bus=bus,
        source=TOPICS.embedded,
        message_type=Embedding,
        process=each(lambda m: []),
        replica=True,
        start_offsets={},
        on_gap="refuse",
    )
    health, servicer = _serving_health()
    with caplog.at_level(logging.INFO):
        stop, thread, errors = _start(worker, health)
        _wait_for(lambda: not health.serving, "NOT_SERVING")
        time.sleep(0.3)  # a restart loop (cap 0.01 s) would open the reader again many times meanwhile
        assert thread.is_alive() and errors == [], "a refused gap is a state, not a crash"
        assert len(opened) == 1, "not reopened: the same positions are gone on every try"
        assert opened[0][2] == "refuse", "the reader is asked to refuse, not to start elsewhere"
        assert "offsets lost" in health.outages()["worker"]
        stop.set()
        thread.join(5)
    assert not thread.is_alive() and errors == []
    lines = [r for r in caplog.records if "offsets to resume from are gone" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.ERROR
    assert "7 messages deleted" in lines[0].detail
    assert servicer.history[-1] == NOT_SERVING


# -- an idle worker and the broker ------------------------------------------------------------------------------


class IdleConsumer:
    """Polls that never bring anything (an idle topic, or a broker that is gone); `end_offsets` answers
    as scripted: an exception is raised, anything else returned."""

    def __init__(self, answers: list) -> None:
        self.answers = answers
        self.asked = 0

    def poll(self, timeout_ms: int, max_records: int) -> dict:
        time.sleep(0.005)
        return {}

    def end_offsets(self, partitions, timeout_ms: int) -> dict:
        self.asked += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self, autocommit: bool) -> None:
        pass


def _idle_worker(consumer: IdleConsumer, probe_s: float) -> StreamWorker:
    producer = SimpleNamespace(close=lambda timeout: None)
    bus = SimpleNamespace(topics=TOPICS, producer=lambda: producer, group_consumer=lambda *a: consumer)
    return StreamWorker(
        stage="checksummer",
        bus=bus,
        source=TOPICS.fetched,
        message_type=FetchedImage,
        process=each(lambda m: []),
        idle_probe_s=probe_s,
    )


def test_an_idle_worker_goes_not_serving_while_the_broker_is_away_and_serving_when_it_is_back() -> None:
    gone = KafkaTimeoutError("Failed to get offsets by timestamps in 5000 ms")
    consumer = IdleConsumer([{}, gone, gone, gone, {}])
    health, servicer = _serving_health()
    stop, thread, errors = _start(_idle_worker(consumer, probe_s=0.02), health)
    _wait_for(lambda: consumer.asked >= 2 and not health.serving, "NOT_SERVING once the broker stops answering")
    assert "kafka unreachable" in health.outages()["worker"]
    _wait_for(lambda: consumer.asked >= 5 and health.serving, "SERVING once it answers again")
    stop.set()
    thread.join(5)
    assert errors == []
    changes = [s for i, s in enumerate(servicer.history) if i == 0 or servicer.history[i - 1] != s]
    assert changes == [NOT_SERVING, SERVING, NOT_SERVING, SERVING], "start, ready, away, back"


def test_a_busy_or_recently_probed_worker_does_not_ask_the_broker() -> None:
    consumer = IdleConsumer([{}])
    health, _ = _serving_health()
    stop, thread, errors = _start(_idle_worker(consumer, probe_s=60.0), health)
    time.sleep(0.3)
    stop.set()
    thread.join(5)
    assert consumer.asked == 0 and errors == [] and health.serving


# -- the wait budget of a record queued behind a throttling host ------------------------------------------------

URL = "http://example.org/{}.jpg"


class Scripted:
    """Answers each URL's requests with the next of its answers (an exception is raised)."""

    def __init__(self, answers: dict[str, list]) -> None:
        self.answers = answers

    def fetch(self, url: str, expect_image: bool = True, max_bytes: int | None = None) -> Downloaded:
        answer = self.answers[url].pop(0)
        if isinstance(answer, Exception):
            raise answer
        return Downloaded(answer, url)

    def close(self) -> None:
        pass


def _throttled(url: str, after: float) -> RetryLater:
    return RetryLater(Failed("http_429", f"HTTP 429 from {url}"), delay=after, throttled=True)


def _until_due(deferred: pytest.ExceptionInfo[Deferred]) -> None:
    time.sleep(max(0.0, deferred.value.until - time.time()) + 0.01)


def test_waiting_behind_another_record_of_an_answering_host_is_not_charged_to_the_budget() -> None:
    # Each image is throttled once (0.3 s); a 0.5 s budget fits one pause per image, not two.
    a, b = URL.format("a"), URL.format("b")
    downloads = Scripted({a: [_throttled(a, 0.3), b"a"], b: [_throttled(b, 0.3), b"b"]})
    policy = AttemptPolicy(max_retry_after=0.3, defer_after=0.05, wait_budget=0.5)
    gates = HostGates(downloads, RatePolicy(initial=200.0), policy, "taxonstream")

    with pytest.raises(Deferred) as first:
        gates.download(a, key="a")
    with pytest.raises(Deferred):
        gates.download(b, key="b")  # queued behind a's pause: never sent
    _until_due(first)
    assert gates.download(a, key="a") == (b"a", 2)
    with pytest.raises(Deferred) as own:
        gates.download(b, key="b")  # its own 429: 0.3 s queued + 0.3 s of its own would be over 0.5 s
    _until_due(own)
    assert gates.download(b, key="b") == (b"b", 2)


def test_a_host_that_never_answers_fails_its_whole_queue_past_the_budget() -> None:
    a, b = URL.format("a"), URL.format("b")
    downloads = Scripted({a: [_throttled(a, 0.3)] * 3, b: [_throttled(b, 0.3)] * 3})
    policy = AttemptPolicy(max_retry_after=0.3, defer_after=0.05, wait_budget=0.5)
    gates = HostGates(downloads, RatePolicy(initial=200.0), policy, "taxonstream")

    with pytest.raises(Deferred) as first:
        gates.download(a, key="a")
    with pytest.raises(Deferred):
        gates.download(b, key="b")
    _until_due(first)
    for url, key in ((a, "a"), (b, "b")):
        with pytest.raises(Failed) as failed:
            gates.download(url, key=key)
        assert failed.value.reason == "provider_throttled"
    assert len(downloads.answers[b]) == 3, "b was never sent: its host never answered"
    assert gates._deferred == {}
