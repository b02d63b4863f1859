"""Batch processors a StreamWorker runs: `each` (a handler per message, optionally threaded) and `in_batches`
(prepare, one model call per sub-batch within a pixel budget, finish), which is `Staged` so the worker can
start the next batch before the current one's model runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from taxonstream.core import metrics
from taxonstream.core.batching import split_by_pixels
from taxonstream.core.bus import Emit

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
