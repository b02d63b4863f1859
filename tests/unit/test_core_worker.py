"""The core worker without Kafka: concurrent prepare/finish keep order and per-message errors, pixel-budget
sub-batches, offsets committed only after outputs are acknowledged, and a prefetched batch rewound on retry.

The consumer and producer are scripted stand-ins that log what the worker calls, in order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from types import SimpleNamespace

import pytest
from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError

from taxonstream.core.batching import split_by_pixels
from taxonstream.core.bus import TYPE_HEADER, Emit
from taxonstream.core.errors import Deferred, Failed, Transient
from taxonstream.core.settings import CoreSettings
from taxonstream.core.topics import Topics
from taxonstream.core.worker import StreamWorker, each, in_batches, model_stage
from taxonstream.v1.messages_pb2 import FetchedImage, Record

TOPICS = Topics("t.")
SOURCE = TOPICS.fetched
HEADERS = [(TYPE_HEADER, FetchedImage.DESCRIPTOR.full_name.encode())]


def _message(n: int, pixels: int = 0) -> FetchedImage:
    record = Record(record_id=f"job:{n}", job_id="job", row=n, url=f"https://h.example/{n}.jpg")
    return FetchedImage(record=record, sha256=f"{n:064x}", width=pixels, height=1 if pixels else 0)


def _raw(partition: int, offset: int, value: bytes) -> SimpleNamespace:
    return SimpleNamespace(topic=SOURCE, partition=partition, offset=offset, key=b"k", value=value, headers=HEADERS)


def _good(partition: int, offset: int, n: int) -> SimpleNamespace:
    return _raw(partition, offset, _message(n).SerializeToString())


# -- in_batches ---------------------------------------------------------------------------------------------


def test_concurrent_prepare_keeps_order_and_sorts_errors_per_message() -> None:
    batch = [_message(n) for n in range(6)]
    # Every prepare waits for all six: it only gets through if they really run at the same time.
    together = threading.Barrier(len(batch), timeout=10)

    def prepare(message: FetchedImage) -> int:
        together.wait()
        if message.record.row == 2:
            raise Failed("undecodable_image", "row 2 is broken")
        if message.record.row == 4:
            raise Transient("S3 down for row 4")
        return message.record.row

    def finish(message: FetchedImage, output: int) -> list[Emit]:
        if output == 5:
            raise KeyError("row 5's output")
        return [Emit("out", str(output), message)]

    process = in_batches(prepare, lambda rows: [r * 10 for r in rows], lambda m, o: finish(m, o // 10), concurrency=6)
    results = process(batch)

    assert [r[0].key if isinstance(r, list) else type(r).__name__ for r in results] == [
        "0",
        "1",
        "Failed",
        "3",
        "Transient",
        "KeyError",
    ]


def test_a_failing_model_call_fails_the_whole_batch() -> None:
    def run(rows: list[int]) -> list[int]:
        raise Transient("Triton down")

    process = in_batches(lambda m: m.record.row, run, lambda m, o: [], concurrency=2)
    with pytest.raises(Transient):
        process([_message(0), _message(1)])


def test_model_sub_batches_follow_the_pixel_budget_and_keep_results_in_order() -> None:
    sizes = [400, 300, 500, 2000, 100, 100]
    runs: list[list[int]] = []

    def run(rows: list[int]) -> list[int]:
        runs.append(list(rows))
        return rows

    process = in_batches(
        lambda m: m.record.row,
        run,
        lambda m, o: [Emit("out", str(o), m)],
        concurrency=3,
        pixels=lambda m: m.width * m.height,
        pixel_budget=1000,
    )
    results = process([_message(n, pixels) for n, pixels in enumerate(sizes)])
    assert runs == [[0, 1], [2], [3], [4, 5]], "400+300 fit, +500 would not; 2000 alone; the rest together"
    assert [r[0].key for r in results] == ["0", "1", "2", "3", "4", "5"]


def test_a_model_stage_takes_its_batching_from_the_settings() -> None:
    settings = CoreSettings(max_batch=5, stage_concurrency=3, prefetch_next_batch=False, batch_pixel_budget=1000)
    steps = (lambda m: m.record.row, lambda rows: rows, lambda m, o: [Emit("out", str(o), m)])
    sized = model_stage(settings, None, "s", SOURCE, FetchedImage, *steps, pixels=lambda m: m.width * m.height)
    assert (sized.stage, sized.source, sized.message_type) == ("s", SOURCE, FetchedImage)
    assert (sized.max_batch, sized.prefetch, sized.process.pool._max_workers) == (5, False, 3)
    assert sized.process.chunks([_message(n, 600) for n in range(3)]) == [range(0, 1), range(1, 2), range(2, 3)]
    unsized = model_stage(settings, None, "s", SOURCE, FetchedImage, *steps)
    assert unsized.process.chunks([_message(n, 600) for n in range(3)]) == [range(0, 3)], "no sizes: one run"


def test_split_by_pixels() -> None:
    assert split_by_pixels([], 10) == []
    assert split_by_pixels([5, 5, 5], 10) == [range(0, 2), range(2, 3)]
    assert split_by_pixels([50, 1, 1], 10) == [range(0, 1), range(1, 3)], "an oversized item goes alone"
    assert split_by_pixels([10, 10], 10) == [range(0, 1), range(1, 2)], "exactly the budget fits"
    assert split_by_pixels([0, -3, 0], 1) == [range(0, 3)], "unknown sizes count as nothing"
    with pytest.raises(ValueError, match="at least 1"):
        split_by_pixels([1], 0)


# -- StreamWorker ---------------------------------------------------------------------------------------------


class Log(list):
    """Everything the stand-ins were asked to do, in order."""


class FakeConsumer:
    def __init__(self, polls: Sequence[list[SimpleNamespace]], log: Log, stop: threading.Event) -> None:
        self.polls = list(polls)
        self.log = log
        self.stop = stop

    def poll(self, timeout_ms: int, max_records: int) -> dict:
        if not self.polls:
            self.stop.set()
            return {}
        batch = self.polls.pop(0)
        self.log.append(("poll", [(r.partition, r.offset) for r in batch]))
        by_partition: dict[TopicPartition, list] = {}
        for raw in batch:
            by_partition.setdefault(TopicPartition(raw.topic, raw.partition), []).append(raw)
        return by_partition

    def commit(self, offsets: dict) -> None:
        self.log.append(("commit", {tp.partition: o.offset for tp, o in offsets.items()}))

    revoked: frozenset[int] = frozenset()  # partitions taken away by a rebalance: seeking them fails

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if tp.partition in self.revoked:
            raise AssertionError(f"partition {tp.partition} is not assigned")  # what kafka-python raises
        self.log.append(("seek", tp.partition, offset))

    def pause(self, tp: TopicPartition) -> None:
        self.log.append(("pause", tp.partition))

    def resume(self, tp: TopicPartition) -> None:
        self.log.append(("resume", tp.partition))

    def close(self, autocommit: bool) -> None:
        pass


class FakeProducer:
    def __init__(self, log: Log, fail_flushes: int = 0) -> None:
        self.log = log
        self.sent: list[tuple[str, bytes]] = []
        self.fail_flushes = fail_flushes

    def send(self, topic: str, key: bytes, value: bytes, headers) -> SimpleNamespace:
        self.sent.append((topic, key))
        return SimpleNamespace(get=lambda timeout: None)

    def flush(self, timeout: float) -> None:
        if self.fail_flushes:
            self.fail_flushes -= 1
            self.sent.clear()
            self.log.append(("flush failed",))
            raise KafkaTimeoutError("no broker acknowledged")
        self.log.append(("flushed", len(self.sent)))

    def close(self, timeout: float) -> None:
        pass


def _run_worker(
    polls: Sequence[list[SimpleNamespace]],
    process,
    prefetch: bool = True,
    producer: FakeProducer | None = None,
    revoked: frozenset[int] = frozenset(),
    **options,
) -> tuple[Log, FakeProducer]:
    log, stop = Log(), threading.Event()
    consumer = FakeConsumer(polls, log, stop)
    consumer.revoked = revoked
    producer = producer or FakeProducer(log)
    producer.log = log
    bus = SimpleNamespace(
        topics=TOPICS, producer=lambda: producer, group_consumer=lambda *a: consumer, reader=lambda *a: consumer
    )
    worker = StreamWorker(
        stage="checksummer",
        bus=bus,
        source=SOURCE,
        message_type=FetchedImage,
        process=process,
        prefetch=prefetch,
        backoff_max=0.0,
        **options,
    )
    worker._wait_before_retry = lambda stop: None  # retries are what is checked here, not the back-off
    worker.run(stop)
    return log, producer


def _emit_rows(message: FetchedImage) -> list[Emit]:
    return [Emit(TOPICS.verified, str(message.record.row), message)]


def _commits(log: Log) -> list[dict[int, int]]:
    return [entry[1] for entry in log if entry[0] == "commit"]


def test_poison_goes_to_the_dlq_a_transient_retries_and_commits_follow_the_flush() -> None:
    def prepare(message: FetchedImage) -> int:
        if message.record.row == 12:
            raise Transient("S3 down")
        return message.record.row

    process = in_batches(prepare, lambda rows: rows, lambda m, o: [Emit(TOPICS.verified, str(o), m)], concurrency=4)
    batch = [_good(0, 0, 10), _raw(0, 1, b"\xff not a protobuf"), _good(1, 0, 12), _good(1, 1, 13)]
    log, producer = _run_worker([batch], process, prefetch=False)

    topics = [topic for topic, _ in producer.sent]
    assert topics.count(TOPICS.verified) == 1, "message 10 only: 13 comes after a retried message"
    assert topics.count(TOPICS.dlq(SOURCE)) == 1, "the undecodable message is dead-lettered"
    flush_at = log.index(("flushed", 2))
    commit_at = next(i for i, entry in enumerate(log) if entry[0] == "commit")
    assert flush_at < commit_at, "offsets are committed only once the outputs are acknowledged"
    assert log[commit_at] == ("commit", {0: 2}), "partition 1 is not committed past its retried message"
    assert ("seek", 1, 0) in log, "the retried partition is read again from the failed message"


def test_a_prefetched_batch_is_started_before_the_current_model_call_and_rewound_on_retry() -> None:
    order: list[str] = []

    def run(rows: list[int]) -> list[int]:
        order.append(f"run {rows}")
        if 1 in rows:
            raise Transient("Triton down")
        return rows

    process = in_batches(lambda m: m.record.row, run, lambda m, o: [Emit(TOPICS.verified, str(o), m)])
    original_start = process.start

    def start(batch):
        order.append(f"start {[m.record.row for m in batch]}")
        return original_start(batch)

    process.start = start
    first, ahead = [_good(0, 0, 1)], [_good(0, 1, 2), _good(1, 5, 3)]
    log, producer = _run_worker([first, ahead], process)

    assert order[:3] == ["start [1]", "start [2, 3]", "run [1]"], "the next batch's reads began before the model"
    assert ("seek", 0, 0) in log, "partition 0 back to the retried message"
    assert ("seek", 1, 5) in log, "partition 1 back to the first prefetched offset: nothing skipped"
    assert ("seek", 0, 1) not in log, "the retry offset, which is earlier, wins over the prefetched one"
    assert not any(entry[0] == "commit" for entry in log)
    assert producer.sent == []


def test_a_prefetched_batch_is_processed_and_committed_after_the_current_one() -> None:
    process = in_batches(lambda m: m.record.row, lambda rows: rows, lambda m, o: [Emit(TOPICS.verified, str(o), m)])
    log, producer = _run_worker([[_good(0, 0, 1)], [_good(0, 1, 2)]], process)
    commits = [entry for entry in log if entry[0] == "commit"]
    assert commits == [("commit", {0: 1}), ("commit", {0: 2})]
    assert [key for _, key in producer.sent] == [b"1", b"2"]


def test_a_transient_in_the_middle_of_a_partition_stops_it_there_while_others_commit() -> None:
    def handle(message: FetchedImage) -> list[Emit]:
        if message.record.row == 2:
            raise Transient("S3 down for row 2")
        return _emit_rows(message)

    batch = [_good(0, 0, 1), _good(0, 1, 2), _good(0, 2, 3), _good(1, 7, 4), _good(1, 8, 5)]
    log, producer = _run_worker([batch], each(handle), prefetch=False)
    assert _commits(log) == [{0: 1, 1: 9}], "partition 0 up to the failed message, partition 1 all of it"
    assert [key for _, key in producer.sent] == [b"1", b"4", b"5"], "nothing after the failed message is produced"
    assert ("seek", 0, 1) in log


def test_a_producer_failure_commits_nothing_and_rewinds_every_partition() -> None:
    batch = [_good(0, 3, 1), _good(1, 0, 2), _good(1, 1, 3)]
    log, producer = _run_worker([batch, batch], each(_emit_rows), prefetch=False, producer=FakeProducer(Log(), 1))
    failed_at = log.index(("flush failed",))
    assert ("seek", 0, 3) in log[failed_at:] and ("seek", 1, 0) in log[failed_at:]
    assert _commits(log) == [{0: 4, 1: 2}], "only the second, acknowledged, try is committed"
    assert log.index(("flushed", 3)) < next(i for i, e in enumerate(log) if e[0] == "commit")


def test_poison_is_dead_lettered_with_its_reason_and_its_offset_committed() -> None:
    log, producer = _run_worker([[_raw(0, 5, b"\xff not a protobuf")]], each(_emit_rows), prefetch=False)
    assert [topic for topic, _ in producer.sent] == [TOPICS.dlq(SOURCE)]
    assert _commits(log) == [{0: 6}], "the worker moves on past a poison message"


def test_a_failure_without_a_record_is_dead_lettered_with_its_reason() -> None:
    letters: list[bytes] = []

    def handle(message: FetchedImage) -> list[Emit]:
        raise Failed("undecodable_image", "row is broken")

    producer = FakeProducer(Log())
    original_send = producer.send

    def send(topic: str, key: bytes, value: bytes, headers) -> SimpleNamespace:
        letters.append(value)
        return original_send(topic, key, value, headers)

    producer.send = send
    message = FetchedImage(sha256="ab")  # no record: a DLQ letter, not a failed outcome
    log, _ = _run_worker([[_raw(0, 0, message.SerializeToString())]], each(handle), prefetch=False, producer=producer)
    assert b"undecodable_image: row is broken" in letters[0]
    assert _commits(log) == [{0: 1}]


def test_a_revoked_partition_is_not_sought_and_the_others_are() -> None:
    def handle(message: FetchedImage) -> list[Emit]:
        raise Transient("Triton down")

    batch = [_good(0, 4, 1), _good(1, 9, 2)]
    log, _ = _run_worker([batch], each(handle), prefetch=False, revoked=frozenset({1}))
    assert ("seek", 0, 4) in log, "the partition still owned is read again from the failed message"
    assert not any(e[0] == "seek" and e[1] == 1 for e in log), "the revoked one is left to its new owner"
    assert _commits(log) == []


def test_on_durable_gets_the_offsets_only_after_the_flush() -> None:
    seen: list[tuple[dict[int, int], bool]] = []
    producer = FakeProducer(Log())

    def on_durable(done: dict[TopicPartition, int]) -> None:
        seen.append(({tp.partition: o for tp, o in done.items()}, ("flushed", 2) in producer.log))

    batch = [_good(0, 0, 1), _good(2, 5, 2)]
    out, _ = _run_worker(
        [batch], each(_emit_rows), prefetch=False, producer=producer, replica=True, on_durable=on_durable
    )
    assert seen == [({0: 1, 2: 6}, True)], "offsets handed over once their outputs were acknowledged"
    assert _commits(out) == [], "a replica commits nothing to Kafka"


def test_a_deferred_message_pauses_only_its_partition_and_it_resumes_when_due() -> None:
    due = time.time() - 1  # already due: the next loop resumes it
    calls: dict[int, int] = {}

    def handle(message: FetchedImage) -> list[Emit]:
        calls[message.record.row] = calls.get(message.record.row, 0) + 1
        if message.record.row == 1 and calls[1] == 1:
            raise Deferred(due, "host paused")
        return _emit_rows(message)

    first = [_good(0, 0, 1), _good(0, 1, 2), _good(1, 0, 3)]
    again = [_good(0, 0, 1), _good(0, 1, 2)]
    after = [_good(0, 1, 2)]
    log, producer = _run_worker([first, again, after], each(handle), prefetch=False)

    assert _commits(log)[0] == {1: 1}, "the other partition goes on; nothing of partition 0 is committed"
    assert log.index(("seek", 0, 0)) < log.index(("pause", 0)) < log.index(("resume", 0))
    assert log.index(("resume", 0)) < log.index(("seek", 0, 1)), "resumed, the message after it is read again"
    assert _commits(log)[1:] == [{0: 1}, {0: 2}], "the deferred message is done alone, then the one after it"
    assert calls == {1: 2, 2: 2, 3: 1}, "the message after the deferred one waits for it (its first result dropped)"
    assert [key for _, key in producer.sent].count(b"1") == 1, "the deferred message's output is produced once"
    assert not any(e == ("flush failed",) for e in log)


def test_stop_during_a_batch_finishes_it_commits_and_returns() -> None:
    stop_now = threading.Event()

    def handle(message: FetchedImage) -> list[Emit]:
        stop_now.set()  # SIGTERM arrives while the batch is being processed
        return _emit_rows(message)

    log, stop = Log(), threading.Event()
    consumer = FakeConsumer([[_good(0, 0, 1)], [_good(0, 1, 2)]], log, stop)
    producer = FakeProducer(log)
    bus = SimpleNamespace(topics=TOPICS, producer=lambda: producer, group_consumer=lambda *a: consumer)
    worker = StreamWorker(stage="checksummer", bus=bus, source=SOURCE, message_type=FetchedImage, process=each(handle))
    original_commit = consumer.commit

    def commit(offsets: dict) -> None:
        original_commit(offsets)
        if stop_now.is_set():
            stop.set()

    consumer.commit = commit
    worker.run(stop)
    assert _commits(log) == [{0: 1}], "the batch in hand is committed; the next one is left for the next owner"
    assert ("poll", [(0, 1)]) not in log
