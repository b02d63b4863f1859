"""The Kafka worker loop every service runs: poll a batch, process, produce, flush, then commit.

At-least-once delivery with exactly-once effect: offsets are committed only after every output of
the batch is acknowledged by Kafka, and every effect downstream is idempotent. A message that cannot
be processed goes to `<topic>.dlq` with its reason (and its record, when it has one, ends failed);
a dependency that is down makes the worker back off and retry the same messages.

Waits overlap: `in_batches` prepares and finishes a batch's messages concurrently (`stage_concurrency`),
splits the model's work by decoded pixels, and, with `prefetch`, the next batch is polled and its prepare
(S3 reads, decoding) started before the current batch's model runs. A prefetched batch is only read
ahead: its offsets are committed after its own outputs, and when the current batch must be retried it is
dropped and its partitions rewound, so a partition is still processed and committed in order. A rebalance
during the read-ahead poll can make the current batch's commit fail: its messages are redone by their
next owner, which the idempotent effects allow (as for any commit lost to a rebalance).

A message that is not due yet (`Deferred`: a throttling host's pause) holds only its partition: the
partition is paused and sought back to it, nothing after it is committed, and it is resumed at the time
the message named; the other partitions keep flowing and the consumer keeps polling, so a long wait never
outlasts `max_poll_interval` (a rebalance would hand the records to a pod that knows nothing of the wait).
Resumed, the deferred message is done alone before the ones after it: done together, one of those could
reach the paused host first, be throttled itself and pause the host again before the one that waited.
Outages are reported to health (core/supervision.py); an error escaping `run` is restarted by its supervisor.
An idle consumer's polls just come back empty when the broker is gone, so an idle worker asks the broker
for an offset every `idle_probe_s` and reports the outage (and the broker's return) itself. A replica whose
resume positions are gone and that must not skip (`on_gap="refuse"`, the index) stays NOT_SERVING with one
error line instead of restarting for ever: starting elsewhere would silently miss messages.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from taxonstream.core import metrics
from taxonstream.core.bus import Bus, Emit, OffsetsLost, OnGap, decode, resume, send_all
from taxonstream.core.errors import Deferred, Failed, Poison, Transient
from taxonstream.core.outcomes import failed, record_in
from taxonstream.core.settings import CoreSettings
from taxonstream.core.stages import (
    InBatches,
    Process,
    Result,
    Staged,
    _close_pools,
    each,
    in_batches,
)
from taxonstream.core.supervision import report_ok, report_outage
from taxonstream.v1.messages_pb2 import DeadLetter

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
P = TypeVar("P")
R = TypeVar("R")
# Re-exported: the services build their stages from this module.
__all__ = ["InBatches", "Process", "Result", "Staged", "StreamWorker", "each", "in_batches", "model_stage"]


@dataclass
class _Polled(Generic[M]):
    raw: list[ConsumerRecord]
    decoded: list[M | Poison]
    good: list[M]
    started: Any  # what Staged.start gave for `good` (or the error it raised)


@dataclass
class _Held:
    """Partitions one batch left unfinished, each at the offset to read again."""

    retry: dict[TopicPartition, int] = field(default_factory=dict)  # a dependency is down: the worker backs off
    deferred: dict[TopicPartition, int] = field(default_factory=dict)  # paused until their message is due
    outage: str = ""
    producer_failed: bool = False  # the producer is replaced before the retry

    def partitions(self) -> dict[TopicPartition, int]:
        return {**self.deferred, **self.retry}


@dataclass
class StreamWorker(Generic[M]):
    """Consumes one topic with `process` and keeps going whatever a single message does."""

    stage: str
    bus: Bus
    source: str
    message_type: type[M]
    process: Process[M]
    # Group mode (default): the group `<prefix><stage>` shares the partitions, offsets committed in Kafka.
    # Replica mode: every partition from `start_offsets`; `on_durable` receives the offsets once
    # outputs are flushed and is responsible for keeping them (e.g. with a snapshot).
    replica: bool = False
    start_offsets: Mapping[TopicPartition, int] | None = None
    on_durable: Callable[[dict[TopicPartition, int]], None] | None = None
    on_idle: Callable[[], None] | None = None
    max_batch: int = 32
    backoff_max: float = 5.0
    # Poll the next batch and start it (a Staged process) before the current one's model runs.
    prefetch: bool = True
    # Replica mode: what a start position that retention deleted means (bus.OnGap).
    on_gap: OnGap = "earliest"
    # Idle this long (s), the worker asks the broker for an offset (5 s at most) to notice it is gone.
    idle_probe_s: float = 10.0
    _backoff: float = field(default=0.0, init=False)
    _paused: dict[TopicPartition, float] = field(default_factory=dict, init=False)  # resume at (epoch s)
    _held_at: dict[TopicPartition, int] = field(default_factory=dict, init=False)  # a paused partition's offset
    _alone: dict[TopicPartition, int] = field(default_factory=dict, init=False)  # resumed: that offset goes alone
    # Replica mode: where each partition's durable outputs end, so a restarted `run` goes on from there.
    _position: dict[TopicPartition, int] = field(default_factory=dict, init=False)
    _heard_at: float = field(default=0.0, init=False)  # monotonic: the broker last answered

    def run(self, stop: threading.Event) -> None:
        consumer = producer = None
        self._paused, self._held_at, self._alone = {}, {}, {}  # a fresh consumer starts with nothing paused
        ahead: _Polled[M] | None = None
        try:
            if (consumer := self._open_unless_lost(stop)) is None:
                return
            producer = self.bus.producer()
            self._heard_at = time.monotonic()
            log.info("worker started", extra={"stage": self.stage, "topic": self.source})
            with metrics.stage(self.stage):
                while not stop.is_set():
                    self._resume_due(consumer)
                    current, ahead = ahead or self._poll(consumer, timeout_ms=500), None
                    if current is None:
                        self._probe_if_idle(consumer)
                        if self.on_idle:
                            self.on_idle()
                        continue
                    self._heard_at = time.monotonic()
                    if self.prefetch and isinstance(self.process, Staged):
                        # Only what is already fetched (timeout 0): an idle topic must not delay this batch.
                        ahead = self._poll(consumer, timeout_ms=0)
                    with metrics.BATCH_SECONDS.labels(self.stage).time():
                        held = self._handle(consumer, producer, current)
                    if held.partitions() and ahead is not None:
                        self._rewind(consumer, ahead, held.partitions())
                        ahead = None
                    if held.producer_failed:
                        # After a broker restart kafka-python's producer can time out on every send for good
                        # (seen: "Timeout waiting for future" every 35 s for 10 minutes); a new one reconnects.
                        with contextlib.suppress(Exception):
                            producer.close(timeout=0)
                        producer = self.bus.producer()
                    if held.retry:
                        report_outage(f"{self.stage}: {held.outage}")
                        self._wait_before_retry(stop)
                    else:
                        self._backoff = 0.0
                        report_ok()
        finally:
            # A prefetched batch was never committed: whoever owns its partitions next reads it again.
            with contextlib.suppress(Exception):
                if producer is not None:
                    producer.close(timeout=5)
            with contextlib.suppress(Exception):
                if consumer is not None:
                    consumer.close(autocommit=False)
            if stop.is_set():  # the process is ending (not an outage restart): idle pool threads may go
                _close_pools(self.process)
            log.info("worker stopped", extra={"stage": self.stage})

    def _resume_due(self, consumer: KafkaConsumer) -> None:
        now = time.time()
        for tp, until in list(self._paused.items()):
            if until <= now:
                del self._paused[tp]
                if (offset := self._held_at.pop(tp, None)) is not None:
                    self._alone[tp] = offset
                # Revoked meanwhile: its new owner starts from the committed offset, unpaused.
                with contextlib.suppress(KafkaError, AssertionError, ValueError, KeyError):
                    resume(consumer, tp)
                log.info("partition resumed", extra={"stage": self.stage, "partition": tp.partition})

    def _poll(self, consumer: KafkaConsumer, timeout_ms: int) -> _Polled[M] | None:
        polled = consumer.poll(timeout_ms=timeout_ms, max_records=self.max_batch)
        batch = [m for part in polled.values() for m in self._first_alone(consumer, part)]
        if not batch:
            return None
        decoded: list[M | Poison] = []
        with metrics.timed("kafka"):
            for raw in batch:
                try:
                    decoded.append(decode(raw.value, raw.headers, self.message_type))
                except Poison as poison:
                    decoded.append(poison)
        good = [m for m in decoded if not isinstance(m, Poison)]
        started: Any = good
        if good and isinstance(self.process, Staged):
            try:
                started = self.process.start(good)
            except Exception as error:  # noqa: BLE001 - applies to each message, sorted in _process
                started = error
        return _Polled(batch, decoded, good, started)

    def _first_alone(self, consumer: KafkaConsumer, part: list[ConsumerRecord]) -> list[ConsumerRecord]:
        """A resumed partition's messages: only the one it was held at, the rest read again after it."""
        if not part or not self._alone:
            return part
        tp = TopicPartition(part[0].topic, part[0].partition)
        offset = self._alone.pop(tp, None)
        if offset is None or part[0].offset != offset or len(part) == 1:
            return part  # elsewhere meanwhile (a rebalance, a rewind): nothing to hold back
        self._seek(consumer, tp, offset + 1)
        return part[:1]

    def _rewind(self, consumer: KafkaConsumer, ahead: _Polled[M], retry: dict[TopicPartition, int]) -> None:
        """Drop a prefetched batch: its partitions go back to its first offsets (a retried one stays at
        its retry offset, which is earlier), so nothing is skipped and each partition stays in order."""
        first: dict[TopicPartition, int] = {}
        for raw in ahead.raw:
            tp = TopicPartition(raw.topic, raw.partition)
            first[tp] = min(first.get(tp, raw.offset), raw.offset)
        for tp, offset in first.items():
            if tp not in retry:
                with contextlib.suppress(KafkaError, AssertionError, ValueError):
                    consumer.seek(tp, offset)

    def _open(self) -> KafkaConsumer:
        if self.replica:
            return self.bus.reader([self.source], {**(self.start_offsets or {}), **self._position}, self.on_gap)
        return self.bus.group_consumer(self.bus.topics.name(self.stage), [self.source], self.max_batch)

    def _open_unless_lost(self, stop: threading.Event) -> KafkaConsumer | None:
        """The consumer; None (after waiting for `stop`) when its resume positions are gone and it must not skip.

        Not an outage to restart from: the same positions are gone on every try, and a restart loop would only
        hide the one line that says why. Health stays NOT_SERVING until someone rebuilds or restores and restarts.
        """
        try:
            return self._open()
        except OffsetsLost as lost:
            log.error(
                "not serving: the offsets to resume from are gone; refusing to skip the messages between "
                "(rebuild from the beginning, or restore the topic, then restart)",
                extra={"stage": self.stage, "topic": self.source, "detail": str(lost)},
            )
            report_outage(f"{self.stage}: offsets lost: {lost}")
            stop.wait()
            return None

    def _probe_if_idle(self, consumer: KafkaConsumer) -> None:
        """Idle for `idle_probe_s`: ask the broker for an offset, and report whether it answered."""
        if time.monotonic() - self._heard_at < self.idle_probe_s:
            return
        try:
            with metrics.timed("kafka"):
                consumer.end_offsets([TopicPartition(self.source, 0)], timeout_ms=5000)
        except KafkaError as error:
            report_outage(f"{self.stage}: kafka unreachable: {type(error).__name__}: {error}"[:300])
        else:
            report_ok()
        self._heard_at = time.monotonic()  # probe again in idle_probe_s, answered or not

    def _handle(self, consumer: KafkaConsumer, producer, polled: _Polled[M]) -> _Held:
        """Process one polled batch; returns the partitions left unfinished, at the offset to read again."""
        batch, decoded = polled.raw, polled.decoded
        results = iter(self._process(polled))

        emits: list[Emit] = []
        done: dict[TopicPartition, int] = {}  # next offset to commit
        held, until = _Held(), dict[TopicPartition, float]()
        for raw, item in zip(batch, decoded, strict=True):
            tp = TopicPartition(raw.topic, raw.partition)
            result: Result = item if isinstance(item, Poison) else next(results)
            if tp in held.retry or tp in held.deferred:
                continue  # keep the partition's order: nothing after a held message is committed
            if isinstance(result, Transient):
                held.retry[tp], held.outage = raw.offset, held.outage or str(result)
                continue
            if isinstance(result, Deferred):
                held.deferred[tp], until[tp] = raw.offset, result.until
                continue
            emits.extend(self._outputs(raw, item, result))
            done[tp] = raw.offset + 1

        try:
            with metrics.timed("kafka"):
                send_all(producer, emits)
        except KafkaError as error:
            log.warning("producing outputs failed; retrying the batch", extra={"error": str(error)})
            held = _Held(retry={TopicPartition(r.topic, r.partition): r.offset for r in reversed(batch)})
            held.outage, held.producer_failed, done = f"producing failed: {error}", True, {}
        if done:
            self._mark_durable(consumer, done)
        for tp, offset in held.retry.items():
            metrics.RETRIES.labels(self.stage).inc()
            self._seek(consumer, tp, offset)
        for tp, offset in held.deferred.items():
            self._defer(consumer, tp, offset, until[tp])
        return held

    @staticmethod
    def _seek(consumer: KafkaConsumer, tp: TopicPartition, offset: int) -> None:
        # A partition revoked meanwhile is skipped: its new owner starts from the committed offset.
        with contextlib.suppress(KafkaError, AssertionError, ValueError):
            consumer.seek(tp, offset)

    def _defer(self, consumer: KafkaConsumer, tp: TopicPartition, offset: int, until: float) -> None:
        """Hold `tp` at `offset` until `until`; the consumer goes on polling (heartbeats, other partitions)."""
        metrics.MESSAGES.labels(self.stage, "deferred").inc()
        self._seek(consumer, tp, offset)
        with contextlib.suppress(KafkaError, AssertionError, ValueError, KeyError):
            consumer.pause(tp)
        self._paused[tp] = max(until, self._paused.get(tp, 0.0))
        self._held_at[tp] = offset
        wait = round(until - time.time(), 1)
        log.info("partition paused", extra={"stage": self.stage, "partition": tp.partition, "in_s": wait})

    def _process(self, polled: _Polled[M]) -> list[Result]:
        messages = polled.good
        if not messages:
            return []
        try:
            if isinstance(polled.started, Exception):
                raise polled.started
            if isinstance(self.process, Staged):
                results = self.process.complete(polled.started)
            else:
                results = self.process(messages)
        except Exception as error:  # noqa: BLE001 - a whole-batch failure applies to each message
            results = [error] * len(messages)
        if len(results) != len(messages):
            raise RuntimeError(f"{self.stage}: process returned {len(results)} results for {len(messages)}")
        return results

    def _outputs(self, raw: ConsumerRecord, item: M | Poison, result: Result) -> list[Emit]:
        if isinstance(result, list):
            metrics.MESSAGES.labels(self.stage, "ok").inc()
            return result
        # The record the message is about: a message that fails still gives its record a terminal state.
        record = None if isinstance(item, Poison) else record_in(item)
        if isinstance(result, Failed):
            metrics.MESSAGES.labels(self.stage, "failed").inc()
            if record is not None:
                return [failed(self.bus.topics, record, self.stage, result.reason, result.message)]
            result = Poison(result.reason, result.message)
        if isinstance(result, Poison):
            reason, detail = result.reason, result.detail
        else:
            log.error("unexpected error", exc_info=result, extra={"stage": self.stage, "offset": raw.offset})
            reason, detail = "internal_error", f"{type(result).__name__}: {result}"
        metrics.MESSAGES.labels(self.stage, "dead_letter").inc()
        metrics.DEAD_LETTERS.labels(self.stage, reason).inc()
        log.warning("dead-lettered", extra={"stage": self.stage, "reason": reason, "detail": detail})
        letter = DeadLetter(
            topic=raw.topic,
            partition=raw.partition,
            offset=raw.offset,
            key=raw.key or b"",
            value=raw.value or b"",
            stage=self.stage,
            reason=f"{reason}: {detail}" if detail else reason,
            at_ms=int(time.time() * 1000),
        )
        emits = [Emit(self.bus.topics.dlq(raw.topic), (raw.key or b"").decode(errors="replace"), letter)]
        if record is not None:
            emits.append(failed(self.bus.topics, record, self.stage, reason, detail or reason))
        return emits

    def _mark_durable(self, consumer: KafkaConsumer, done: dict[TopicPartition, int]) -> None:
        if not self.replica:
            try:
                with metrics.timed("kafka"):
                    consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in done.items()})
            except KafkaError as error:
                # Rebalanced away: the new owner redoes these messages, whose effects are idempotent.
                log.warning("commit failed", extra={"stage": self.stage, "error": str(error)})
        else:
            self._position.update(done)
            if self.on_durable:
                self.on_durable(done)

    def _wait_before_retry(self, stop: threading.Event) -> None:
        self._backoff = min(self.backoff_max, max(0.25, self._backoff * 2))
        log.warning("dependency unavailable; retrying", extra={"stage": self.stage, "in_s": self._backoff})
        stop.wait(self._backoff)


def model_stage(
    settings: CoreSettings,
    bus: Bus,
    stage: str,
    source: str,
    message_type: type[M],
    prepare: Callable[[M], P],
    run: Callable[[list[P]], Sequence[R]],
    finish: Callable[[M, R], list[Emit]],
    pixels: Callable[[M], int] | None = None,
) -> StreamWorker[M]:
    """A group worker on `source` running `in_batches` as the settings tune it: their batch size,
    `stage_concurrency`, next-batch prefetch and, with `pixels`, sub-batches within `batch_pixel_budget`."""
    process = in_batches(
        prepare,
        run,
        finish,
        concurrency=settings.stage_concurrency,
        pixels=pixels,
        pixel_budget=settings.batch_pixel_budget if pixels else 0,
    )
    return StreamWorker(
        stage=stage,
        bus=bus,
        source=source,
        message_type=message_type,
        process=process,
        max_batch=settings.max_batch,
        prefetch=settings.prefetch_next_batch,
    )
