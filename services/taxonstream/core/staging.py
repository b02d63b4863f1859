"""Staged writes: a batch's small objects read ahead in parallel and written together in parallel.

Code written one record at a time against a store (the duplicate registry's claim: one GET, then two to
four PUTs, in order) costs a round trip per call. Inside `staged()`, on the thread that opened it, reads
come from what `prefetch` fetched (in parallel) or from this batch's own pending writes, and writes wait
in memory until the block ends, then go out in parallel: a batch of 32 records costs a few round trips
of wall time instead of ~150. Other threads (an RPC, a topic observer) pass straight through.

Order that matters between writes survives as two waves: keys for which `last(key)` holds are written
only after every other write is stored (e.g. a registry entry after the provenance it stands for).
A block that raises writes nothing: its batch is retried and writes the same objects again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from taxonstream.core.objects import JsonObjects

_ABSENT = object()  # prefetched and missing


class StagedStore(JsonObjects):
    """An ObjectStore whose reads and writes can be staged per batch; everything else is the store's."""

    def __init__(self, store: Any) -> None:  # an ObjectStore, or any store with get/put (tests)
        self.store = store
        self._local = threading.local()

    def __getattr__(self, name: str) -> Any:  # bucket, list, delete, exists, presigned_url …
        return getattr(self.store, name)

    @property
    def _batch(self) -> _Batch | None:
        return getattr(self._local, "batch", None)

    @contextmanager
    def staged(self, last: Callable[[str], bool] = lambda key: False) -> Iterator[None]:
        if self._batch is not None:
            raise RuntimeError("staged() blocks do not nest")
        batch = self._local.batch = _Batch()
        try:
            yield
        finally:
            self._local.batch = None
        first = {k: v for k, v in batch.writes.items() if not last(k)}
        self._put_many([(k, data, kind) for k, (data, kind) in first.items()])
        self._put_many([(k, data, kind) for k, (data, kind) in batch.writes.items() if k not in first])

    def _put_many(self, objects: list[tuple[str, bytes, str]]) -> None:
        if hasattr(self.store, "put_many"):
            self.store.put_many(objects)
        else:  # a plain store (tests, a local folder): one by one
            for key, data, _ in objects:
                self.store.put(key, data)

    def _get_many(self, keys: list[str]) -> list[bytes | Exception]:
        if hasattr(self.store, "get_many"):
            return self.store.get_many(keys)
        found: list[bytes | Exception] = []
        for key in keys:
            try:
                found.append(self.store.get(key))
            except Exception as error:  # noqa: BLE001 - sorted by prefetch
                found.append(error)
        return found

    def prefetch(self, keys: Iterable[str]) -> None:
        """Read these keys in parallel now (inside `staged`), so the block's gets of them wait for nothing."""
        batch = self._batch
        if batch is None:
            return
        wanted = [k for k in dict.fromkeys(keys) if k not in batch.reads and k not in batch.writes]
        for key, value in zip(wanted, self._get_many(wanted), strict=True):
            if isinstance(value, KeyError):
                batch.reads[key] = _ABSENT
            elif isinstance(value, Exception):
                raise value  # S3 down: the batch is retried
            else:
                batch.reads[key] = value

    def get(self, key: str) -> bytes:
        batch = self._batch
        if batch is not None:
            if key in batch.writes:
                return batch.writes[key][0]
            if key in batch.reads:
                value = batch.reads[key]
                if value is _ABSENT:
                    raise KeyError(key)
                return value
        return self.store.get(key)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        batch = self._batch
        if batch is None:
            self._put_many([(key, data, content_type)])
        else:
            batch.writes[key] = (data, content_type)

    def put_json(self, key: str, value: Any) -> None:
        if self._batch is None:  # the store's own (a test store logs it as one call)
            self.store.put_json(key, value)
        else:  # into the batch, through put above; get_json (JsonObjects) reads through get above
            super().put_json(key, value)


class _Batch:
    def __init__(self) -> None:
        self.reads: dict[str, Any] = {}
        self.writes: dict[str, tuple[bytes, str]] = {}  # latest value per key, in first-write order
