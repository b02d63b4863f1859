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
Outages are reported to health (core/supervision.py); an error escaping `run` is restarted by its supervisor.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from taxonstream.core import metrics
from taxonstream.core.batching import split_by_pixels
from taxonstream.core.bus import Bus, Emit, decode, send_all
from taxonstream.core.errors import Deferred, Failed, Poison, Transient
from taxonstream.core.outcomes import failed, record_in
from taxonstream.core.settings import CoreSettings
from taxonstream.core.supervision import report_ok, report_outage
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
    return _Each(handle, threads)


class _Each(Generic[M]):
    def __init__(self, handle: Callable[[M], list[Emit]], threads: int) -> None:
        self.handle = handle
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="handle") if threads > 1 else None

    def run_one(self, message: M) -> Result:
        try:
            return self.handle(message)
        except Exception as error:  # noqa: BLE001 - the worker sorts errors into DLQ/failed/retry
            return error

    def __call__(self, batch: Sequence[M]) -> list[Result]:
        if self.pool is None:
            return [self.run_one(m) for m in batch]
        return [f.result() for f in [metrics.submit(self.pool, self.run_one, m) for m in batch]]


class Staged(Generic[M]):
    """A batch processor in two steps, so the worker can start a batch before the previous one is done.

    `start` must only read (S3 gets, decoding): a started batch may be dropped and read again.
    """

    def start(self, batch: Sequence[M]) -> Any:
        raise NotImplementedError

    def complete(self, started: Any) -> list[Result]:
        raise NotImplementedError

    def __call__(self, batch: Sequence[M]) -> list[Result]:
        return self.complete(self.start(batch))


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
    _backoff: float = field(default=0.0, init=False)
    _paused: dict[TopicPartition, float] = field(default_factory=dict, init=False)  # resume at (epoch s)
    # Replica mode: where each partition's durable outputs end, so a restarted `run` goes on from there.
    _position: dict[TopicPartition, int] = field(default_factory=dict, init=False)

    def run(self, stop: threading.Event) -> None:
        consumer = producer = None
        self._paused = {}  # a fresh consumer starts with nothing paused
        ahead: _Polled[M] | None = None
        try:
            consumer = self._open()
            producer = self.bus.producer()
            log.info("worker started", extra={"stage": self.stage, "topic": self.source})
            with metrics.stage(self.stage):
                while not stop.is_set():
                    self._resume_due(consumer)
                    current, ahead = ahead or self._poll(consumer, timeout_ms=500), None
                    if current is None:
                        if self.on_idle:
                            self.on_idle()
                        continue
                    if self.prefetch and isinstance(self.process, Staged):
                        # Only what is already fetched (timeout 0): an idle topic must not delay this batch.
                        ahead = self._poll(consumer, timeout_ms=0)
                    with metrics.BATCH_SECONDS.labels(self.stage).time():
                        held = self._handle(consumer, producer, current)
                    if held.partitions() and ahead is not None:
                        self._rewind(consumer, ahead, held.partitions())
                        ahead = None
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
                # Revoked meanwhile: its new owner starts from the committed offset, unpaused.
                with contextlib.suppress(KafkaError, AssertionError, ValueError, KeyError):
                    consumer.resume(tp)
                log.info("partition resumed", extra={"stage": self.stage, "partition": tp.partition})

    def _poll(self, consumer: KafkaConsumer, timeout_ms: int) -> _Polled[M] | None:
        polled = consumer.poll(timeout_ms=timeout_ms, max_records=self.max_batch)
        batch = [m for part in polled.values() for m in part]
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
            return self.bus.reader([self.source], {**(self.start_offsets or {}), **self._position})
        return self.bus.group_consumer(self.bus.topics.name(self.stage), [self.source], self.max_batch)

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
            held.outage, done = f"producing failed: {error}", {}
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


@dataclass
class _Started(Generic[M]):
    batch: Sequence[M]
    chunks: list[range]
    first: list[Future]  # the first chunk's prepares, submitted by start


class InBatches(Staged[M], Generic[M, P, R]):
    """A batch processor for model stages: prepare each message, one `run` per sub-batch, finish each.

    A message whose prepare or finish fails fails alone; a failing `run` (Triton down) fails the batch.
    `concurrency` messages are prepared/finished at once; with `pixels` (a message's decoded size, from
    its metadata) and `pixel_budget`, `run` gets sub-batches of at most that many pixels. Decoded pixels
    alive at once: the chunk being run and finished, the next chunk being prepared, and (worker prefetch)
    the next batch's first chunk: three budgets at most.
    """

    def __init__(
        self,
        prepare: Callable[[M], P],
        run: Callable[[list[P]], Sequence[R]],
        finish: Callable[[M, R], list[Emit]],
        *,
        concurrency: int = 1,
        pixels: Callable[[M], int] | None = None,
        pixel_budget: int = 0,
    ) -> None:
        self.prepare, self.run, self.finish = prepare, run, finish
        self.pixels, self.pixel_budget = pixels, pixel_budget
        # One thread runs everything in order; more run each message's step concurrently.
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="stage")

    def chunks(self, batch: Sequence[M]) -> list[range]:
        if self.pixels is None or self.pixel_budget < 1:
            return [range(len(batch))]
        return split_by_pixels([_safe_size(self.pixels, m) for m in batch], self.pixel_budget)

    def start(self, batch: Sequence[M]) -> _Started[M]:
        chunks = self.chunks(batch)
        return _Started(batch, chunks, self._prepare_all(batch, chunks[0]) if chunks else [])

    def complete(self, started: _Started[M]) -> list[Result]:
        batch = started.batch
        results: list[Result | None] = [None] * len(batch)
        pending = started.first
        for k, chunk in enumerate(started.chunks):
            prepared: list[tuple[int, P]] = []
            for i, future in zip(chunk, pending, strict=True):
                outcome = future.result()
                if isinstance(outcome, _Error):
                    results[i] = outcome.error
                else:
                    prepared.append((i, outcome))
            # The next chunk's reads and decoding overlap this chunk's model call and finishing.
            pending = self._prepare_all(batch, started.chunks[k + 1]) if k + 1 < len(started.chunks) else []
            if not prepared:
                continue
            outputs = self.run([p for _, p in prepared])
            finishing = [
                (i, metrics.submit(self.pool, _guarded, self.finish, batch[i], output))
                for (i, _), output in zip(prepared, outputs, strict=True)
            ]
            for i, future in finishing:
                outcome = future.result()
                results[i] = outcome.error if isinstance(outcome, _Error) else outcome
        return [r if r is not None else RuntimeError("no result") for r in results]

    def _prepare_all(self, batch: Sequence[M], chunk: range) -> list[Future]:
        return [metrics.submit(self.pool, _guarded, self.prepare, batch[i]) for i in chunk]


# The name the services build their stage with, like `each` (a function there, the class itself here).
in_batches = InBatches


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


@dataclass(frozen=True)
class _Error:
    """An exception a step raised, told apart from a step that returns an exception as its value."""

    error: Exception


def _guarded(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as error:  # noqa: BLE001 - sorted by the worker
        return _Error(error)


def _close_pools(process: object) -> None:
    """Let a processor's idle pool threads end (non-daemon threads would hold up the process's exit)."""
    pool = getattr(process, "pool", None)
    if isinstance(pool, ThreadPoolExecutor):
        pool.shutdown(wait=False, cancel_futures=True)


def _safe_size(pixels: Callable[[M], int], message: M) -> int:
    try:
        return int(pixels(message))
    except Exception:  # noqa: BLE001 - a size is only a hint: an unknown one counts as 0
        return 0
