"""The Kafka worker loop every service runs: poll a batch, process, produce, flush, then commit.

At-least-once delivery with exactly-once effect: offsets are committed only after every output of
the batch is acknowledged by Kafka, and every effect downstream is idempotent. A message that cannot
be processed goes to `<topic>.dlq` with its reason (and its record, when it has one, ends failed);
a dependency that is down makes the worker back off and retry the same messages.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from google.protobuf.message import Message
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from taxonstream.core import metrics
from taxonstream.core.bus import Bus, Emit, decode, send_all
from taxonstream.core.errors import Failed, Poison, Transient
from taxonstream.core.outcomes import failed, record_in
from taxonstream.v1.messages_pb2 import DeadLetter

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
P = TypeVar("P")
R = TypeVar("R")
# What processing one message gave: the messages to produce, or why it could not be done.
Result = list[Emit] | Exception
Process = Callable[[Sequence[M]], list[Result]]


def each(handle: Callable[[M], list[Emit]], threads: int = 1) -> Process[M]:
    """Turn a one-message handler into a batch processor, optionally running messages concurrently."""

    def run_one(message: M) -> Result:
        try:
            return handle(message)
        except Exception as error:  # noqa: BLE001 - the worker sorts errors into DLQ/failed/retry
            return error

    if threads <= 1:
        return lambda batch: [run_one(m) for m in batch]
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="handle")
    return lambda batch: list(pool.map(run_one, batch))


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
    _backoff: float = field(default=0.0, init=False)

    def run(self, stop: threading.Event) -> None:
        consumer = self._open()
        producer = self.bus.producer()
        log.info("worker started", extra={"stage": self.stage, "topic": self.source})
        try:
            while not stop.is_set():
                polled = consumer.poll(timeout_ms=500, max_records=self.max_batch)
                batch = [m for part in polled.values() for m in part]
                if not batch:
                    if self.on_idle:
                        self.on_idle()
                    continue
                with metrics.BATCH_SECONDS.labels(self.stage).time():
                    retry = self._handle(consumer, producer, batch)
                if retry:
                    self._wait_before_retry(stop)
                else:
                    self._backoff = 0.0
        finally:
            producer.close(timeout=10)
            consumer.close(autocommit=False)
            log.info("worker stopped", extra={"stage": self.stage})

    def _open(self) -> KafkaConsumer:
        if self.replica:
            return self.bus.reader([self.source], self.start_offsets)
        return self.bus.group_consumer(self.bus.topics.name(self.stage), [self.source], self.max_batch)

    def _handle(self, consumer: KafkaConsumer, producer, batch: list[ConsumerRecord]) -> bool:
        """Process one polled batch; returns True when part of it must be retried."""
        decoded: list[M | Poison] = []
        for raw in batch:
            try:
                decoded.append(decode(raw.value, raw.headers, self.message_type))
            except Poison as poison:
                decoded.append(poison)
        good = [m for m in decoded if not isinstance(m, Poison)]
        results = iter(self._process(good))

        emits: list[Emit] = []
        done: dict[TopicPartition, int] = {}  # next offset to commit
        retry_at: dict[TopicPartition, int] = {}
        for raw, item in zip(batch, decoded, strict=True):
            tp = TopicPartition(raw.topic, raw.partition)
            result: Result = item if isinstance(item, Poison) else next(results)
            if tp in retry_at:
                continue  # keep the partition's order: nothing after a retried message is committed
            if isinstance(result, Transient):
                retry_at[tp] = raw.offset
                continue
            emits.extend(self._outputs(raw, item, result))
            done[tp] = raw.offset + 1

        try:
            send_all(producer, emits)
        except KafkaError as error:
            log.warning("producing outputs failed; retrying the batch", extra={"error": str(error)})
            retry_at = {TopicPartition(r.topic, r.partition): r.offset for r in reversed(batch)}
            done = {}
        if done:
            self._mark_durable(consumer, done)
        for tp, offset in retry_at.items():
            metrics.RETRIES.labels(self.stage).inc()
            # A partition revoked meanwhile is skipped: its new owner starts from the committed offset.
            with contextlib.suppress(KafkaError, AssertionError, ValueError):
                consumer.seek(tp, offset)
        return bool(retry_at)

    def _process(self, messages: list[M]) -> list[Result]:
        if not messages:
            return []
        try:
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
                consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in done.items()})
            except KafkaError as error:
                # Rebalanced away: the new owner redoes these messages, whose effects are idempotent.
                log.warning("commit failed", extra={"stage": self.stage, "error": str(error)})
        elif self.on_durable:
            self.on_durable(done)

    def _wait_before_retry(self, stop: threading.Event) -> None:
        self._backoff = min(self.backoff_max, max(0.25, self._backoff * 2))
        log.warning("dependency unavailable; retrying", extra={"stage": self.stage, "in_s": self._backoff})
        stop.wait(self._backoff)


def in_batches(
    prepare: Callable[[M], P],
    run: Callable[[list[P]], Sequence[R]],
    finish: Callable[[M, R], list[Emit]],
) -> Process[M]:
    """A batch processor for model stages: prepare each message, one `run` for all, finish each.

    A message whose prepare or finish fails fails alone; a failing `run` (Triton down) fails the batch.
    """

    def process(batch: Sequence[M]) -> list[Result]:
        results: list[Result | None] = [None] * len(batch)
        prepared: list[tuple[int, P]] = []
        for i, message in enumerate(batch):
            try:
                prepared.append((i, prepare(message)))
            except Exception as error:  # noqa: BLE001 - sorted by the worker
                results[i] = error
        if prepared:
            outputs = run([p for _, p in prepared])
            for (i, _), output in zip(prepared, outputs, strict=True):
                try:
                    results[i] = finish(batch[i], output)
                except Exception as error:  # noqa: BLE001 - sorted by the worker
                    results[i] = error
        return [r if r is not None else RuntimeError("no result") for r in results]

    return process
