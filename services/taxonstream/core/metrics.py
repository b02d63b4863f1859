"""Prometheus metrics shared by every service, served on their own port."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from typing import Literal, ParamSpec, TypeVar

from prometheus_client import Counter, Histogram, start_http_server

MESSAGES = Counter("taxonstream_messages_total", "Messages a worker finished, by result", ["stage", "result"])
BATCH_SECONDS = Histogram("taxonstream_batch_seconds", "Time to process one polled batch, outputs flushed", ["stage"])
DEAD_LETTERS = Counter("taxonstream_dead_letters_total", "Messages sent to a dead-letter topic", ["stage", "reason"])
OUTCOMES = Counter("taxonstream_outcomes_total", "Terminal record states emitted", ["stage", "state", "reason"])
RETRIES = Counter("taxonstream_retries_total", "Batches retried after a transient error", ["stage"])
GRPC_SECONDS = Histogram("taxonstream_grpc_seconds", "gRPC handling time", ["method", "code"])

# Busy seconds per stage and part, summed over threads (8 threads waiting on S3 for 1 s count 8 s): what a
# benchmark divides by records to see where a record's time goes. Wall time per batch is BATCH_SECONDS.
# service: the worker's stage (fetcher, checksummer, detector, embedder, reembed, indexer), "rpc" outside one.
STAGE_SECONDS = Counter(
    "taxonstream_stage_seconds_total",
    "Busy seconds of a stage, by part (s3, decode, hash, model, kafka)",
    ["service", "part"],
)
STAGE_CALLS = Counter("taxonstream_stage_calls_total", "Timed calls of a stage, by part", ["service", "part"])
Part = Literal["s3", "decode", "hash", "model", "kafka"]
P = ParamSpec("P")
T = TypeVar("T")

# The stage the current thread works for; pool threads get it through `submit` (contextvars are per thread).
_stage: contextvars.ContextVar[str] = contextvars.ContextVar("taxonstream_stage", default="rpc")


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Label what this thread (and the pool tasks it submits through `submit`) times with stage `name`."""
    token = _stage.set(name)
    try:
        yield
    finally:
        _stage.reset(token)


@contextmanager
def timed(part: Part) -> Iterator[None]:
    """Count the block's seconds as busy time of the current stage's `part`."""
    started = time.perf_counter()
    try:
        yield
    finally:
        service = _stage.get()
        STAGE_SECONDS.labels(service, part).inc(time.perf_counter() - started)
        STAGE_CALLS.labels(service, part).inc()


def submit(pool: Executor, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Future[T]:
    """`pool.submit` that carries the caller's stage label into the pool thread."""
    context = contextvars.copy_context()
    return pool.submit(context.run, fn, *args, **kwargs)


def serve(host: str, port: int) -> None:
    start_http_server(port, addr=host)
