"""Rebuilds of the FAISS engine: kind migrations, tombstone compaction and IVF-PQ retraining, inline or
in a background thread that copies under the read lock and swaps under the write lock."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import nullcontext
from typing import TYPE_CHECKING

import faiss
import numpy as np

from taxonstream.index.faiss_engine.kinds import desired_kind, new_index, nlist_for
from taxonstream.index.faiss_engine.locking import Locking, RWLock
from taxonstream.index.faiss_engine.postings import Postings
from taxonstream.index.types import FaissConfig

log = logging.getLogger(__name__)

BUILD_CHUNK = 65_536  # old slots a background rebuild copies per read-lock hold
SWAP_TAIL = 1_024  # catch up outside the write lock until at most this many slots are left to add
RETRY_SECONDS = 60.0  # after a failed background rebuild, before the next attempt


class Build:
    """A rebuild under way: the new index, and for each of its slots the old slot it was copied from."""

    def __init__(self, kind: str, built_for: int) -> None:
        self.kind, self.built_for = kind, built_for
        self.index: faiss.Index | None = None
        self.raw16: np.ndarray | None = None  # IVF-PQ's float16 copies, by new slot
        self.sources: list[np.ndarray] = []  # old slots, ascending across the list
        self.ids: list[str] = []  # image id by new slot
        self.count = 0  # slots in the new index
        self.upto = 0  # old slots below this have been copied (if still live then)
        self.thread: threading.Thread | None = None
        self.cancelled = False
        self.started = time.monotonic()


class Migrations:
    """The rebuild half of `FaissIndex`: decides when a rebuild is due, runs it, swaps it in."""

    config: FaissConfig
    dim: int | None
    _rw: RWLock
    _build: Build | None
    _retry_at: float
    _index: faiss.Index | None
    _kind: str
    _built_for: int
    _ids: list[str]
    _n: int
    _slot: dict[str, int]
    _live: np.ndarray
    _raw16: np.ndarray | None
    _postings: Postings

    if TYPE_CHECKING:  # defined by FaissIndex

        def _vectors(self, slots: np.ndarray) -> np.ndarray: ...

    def _maintain(self) -> None:
        """After a write (write lock held): start the rebuild the collection now needs, if any."""
        if self._build is not None or time.monotonic() < self._retry_at:
            return  # the rebuild under way ends with this check again
        live = len(self._slot)
        dead = self._n - live
        cfg = self.config
        kind = desired_kind(cfg, self._kind, live)
        regrown = kind == "ivfpq" and self._kind == "ivfpq" and live > 4 * max(self._built_for, 1)
        if kind != self._kind or regrown or (dead >= cfg.compact_min and dead > cfg.compact_ratio * self._n):
            build = Build(kind, built_for=live)
            if live < cfg.background_from:
                self._run_build(build, background=False)  # small: in this write, under its lock
                return
            log.info(
                "index rebuild started in the background",
                extra={"from_kind": self._kind, "to_kind": kind, "live": live, "tombstones": dead},
            )
            build.thread = threading.Thread(target=self._background, args=(build,), name="faiss-rebuild", daemon=True)
            self._build = build  # with its thread already named: `settle` joins it
            build.thread.start()

    def _background(self, build: Build) -> None:
        try:
            self._run_build(build, background=True)
        except Exception:
            log.exception("background index rebuild failed; the old index stays in service")
            with self._rw.write():
                self._build = None
                self._retry_at = time.monotonic() + RETRY_SECONDS

    def _run_build(self, build: Build, background: bool) -> None:
        """Build `build.kind` from the live vectors and swap it in. Inline the caller holds the write lock;
        in the background the copies take the read lock and the swap the write lock."""
        assert self.dim is not None
        reading: Locking = self._rw.read if background else nullcontext
        writing: Locking = self._rw.write if background else nullcontext
        if build.kind == "ivfpq":
            with reading():
                live_slots = np.flatnonzero(self._live[: self._n])
                rng = np.random.default_rng(0)
                # 64 points per centroid train k-means well (FAISS wants at least 39); more only costs time.
                lists = self.config.nlist or nlist_for(len(live_slots))
                size = min(len(live_slots), max(64 * lists, 65_536))
                sample = self._vectors(np.sort(rng.choice(live_slots, size=size, replace=False)))
            build.index = new_index("ivfpq", self.dim, self.config, sample, build.built_for)  # outside the lock
            del sample
        else:
            build.index = new_index(build.kind, self.dim, self.config)
        while not build.cancelled:
            with reading():
                if self._n - build.upto <= (SWAP_TAIL if background else 0):
                    break
                slots, vectors = self._copy_live(build)
            self._add_to(build, slots, vectors)
        with writing():
            if build.cancelled:
                self._build = None
                return
            self._add_to(build, *self._copy_live(build, everything=True))
            self._swap(build)
            if background:
                log.info(
                    "index rebuild swapped in",
                    extra={"kind": build.kind, "slots": build.count, "seconds": time.monotonic() - build.started},
                )
                self._build = None
                self._maintain()  # a write meanwhile may call for another (e.g. it crossed the next threshold)

    def _copy_live(self, build: Build, everything: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The next old slots still live (a chunk, or all that are left) and a copy of their vectors."""
        stop = self._n if everything else min(self._n, build.upto + BUILD_CHUNK)
        slots = build.upto + np.flatnonzero(self._live[build.upto : stop])
        build.upto = stop
        build.ids.extend(self._ids[s] for s in slots)
        return slots, np.ascontiguousarray(self._vectors(slots), dtype=np.float32)

    def _add_to(self, build: Build, slots: np.ndarray, vectors: np.ndarray) -> None:
        """Append copied vectors to the index being built (outside the lock in the background)."""
        assert build.index is not None and self.dim is not None
        if len(slots) == 0:
            return
        first, build.count = build.count, build.count + len(slots)
        if build.kind == "ivfpq":
            if build.raw16 is None or build.count > len(build.raw16):
                # Sized for the collection at the start; writes during the build grow it by a quarter.
                grown = 0 if build.raw16 is None else len(build.raw16) * 5 // 4
                raw = np.empty((max(build.count, build.built_for, grown, 1024), self.dim), dtype=np.float16)
                if build.raw16 is not None:
                    raw[:first] = build.raw16[:first]
                build.raw16 = raw
            build.index.add_with_ids(vectors, np.arange(first, build.count, dtype=np.int64))
            build.raw16[first : build.count] = vectors
        else:
            build.index.add(vectors)
        build.sources.append(slots)

    def _swap(self, build: Build) -> None:
        """Make the built index current (write lock held). Slots that died during the build stay in it as
        tombstones; the filter indexes are renumbered from the old ones, not recomputed from metadata."""
        source = np.concatenate([*build.sources, np.empty(0, dtype=np.int64)]).astype(np.int64)
        count = len(source)
        renumber = np.full(self._n, -1, dtype=np.int64)
        renumber[source] = np.arange(count)
        capacity = max(count, 1024)
        live = np.zeros(capacity, dtype=bool)
        live[:count] = self._live[source]
        self._postings.renumber(source, renumber, capacity)
        self._slot = {image_id: int(renumber[slot]) for image_id, slot in self._slot.items()}
        self._live, self._ids, self._n = live, build.ids, count
        self._index, self._kind, self._built_for = build.index, build.kind, build.built_for
        self._raw16 = build.raw16 if build.kind == "ivfpq" else None
