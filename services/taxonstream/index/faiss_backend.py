"""The in-process FAISS index: type chosen by size, filters inside the search, upsert/delete by image id.

Layout. Every stored vector has a *slot*: its position in the FAISS index (0, 1, 2, … in insertion
order), which is also its FAISS label. An upsert appends a new slot and turns the image's old slot into a
tombstone; a delete only makes a tombstone. Tombstones are excluded from every search by the same
`IDSelectorBitmap` that carries the filters, and are dropped by a rebuild once they exceed
`compact_ratio` of the slots (HNSW cannot remove vectors, and a flat index that removes one renumbers
the rest — tombstones keep all three types alike and every operation cheap).

Index types (thresholds in `FaissConfig`, counted in live vectors):

- flat (exact inner product) below 100k: a query scans 2 KB a vector, still milliseconds;
- HNSW32 (`IndexHNSWFlat`, ≈2.3 KB a vector at 512-d) from 100k to 10M;
- IVF-PQ (`IndexIVFPQ`, 64-byte codes, nlist ≈ 4·√n) from 10M, with float16 copies of the vectors
  (1 KB a vector) kept beside it to re-score the candidates exactly and to retrain.

Migration. When a write crosses a threshold the index is rebuilt in the next type from the stored
vectors, chunk by chunk (the same rebuild that compacts tombstones); IVF-PQ is retrained whenever the
collection has grown fourfold since its last training, since its coarse clustering was sized for the
smaller set. Deletes that take a collection below half a threshold rebuild it in the smaller type.
A rebuild of `background_from` vectors or more runs in a thread, off the write path (at 10M vectors it
would outlast Kafka's poll interval): it copies the live vectors a chunk at a time under the read lock
and adds them to the new index outside any lock, while the old index keeps answering and taking writes.
Old slots are never revived, so what happened meanwhile is read off the old state when the copy has
caught up: slots appended since are added, slots that died are tombstoned in the new index, and the
swap (with the filter indexes renumbered, not recomputed) happens under the write lock.

Concurrency. A readers-writer lock: searches and other reads share it (FAISS's `search` on an index no
one is writing is thread-safe and releases the GIL), writes and the swap take it alone, and a waiting
writer holds back new readers so a stream of searches cannot starve the Kafka worker.

Filters. `filters.facets()` of each image are kept in an inverted index (field, value) → slots. A
filtered search selects the matching live slots (candidates from the rarest field's postings, or a
bitmap over all slots when the filter is common). Few matches (at most `exact_below`, or under
`ann_min_share` of the index) are scored exactly — faster and better than a graph walk through mostly
excluded nodes; otherwise the ANN search runs with the bitmap as its `IDSelector` (IVF's nprobe widened
by the inverse of the filter's share), and any query still short of k hits is answered exactly over the
matching slots. Either way a non-matching item is never a candidate.
"""

from __future__ import annotations

import io
import json
import logging
import math
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

import faiss
import numpy as np

from taxonstream.index import filters as flt
from taxonstream.index.backend import FaissConfig, Hit, IndexStats

log = logging.getLogger(__name__)

KINDS = ("flat", "hnsw", "ivfpq")
FORMAT = "taxonstream-faiss/1"
_CHUNK = 65_536
_BUILD_CHUNK = 65_536  # old slots a background rebuild copies per read-lock hold
_SWAP_TAIL = 1_024  # catch up outside the write lock until at most this many slots are left to add
_RETRY_SECONDS = 60.0  # after a failed background rebuild, before the next attempt
_IVFPQ_MIN = 256  # below this a forced IVF-PQ stays flat: PQ needs 2^nbits training points


def faiss_id(image_id: str) -> int:
    """The FAISS label of an image in snapshots written before slots (first 60 bits of its sha256)."""
    return int(image_id[:15], 16)


def _flat_view(index: faiss.Index) -> np.ndarray:
    """The float32 vectors inside a flat index (or an HNSW's flat storage), without copying."""
    flat = faiss.downcast_index(index.storage) if isinstance(index, faiss.IndexHNSW) else index
    if flat.ntotal == 0:
        return np.empty((0, flat.d), dtype=np.float32)
    return faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)


class _Selection:
    """The live slots a search may return: a sorted slot list or a bitmap, each made from the other when
    needed, and the FAISS selector reading the bitmap (which must not outlive it)."""

    def __init__(self, n: int, mask: np.ndarray | None = None, slots: np.ndarray | None = None) -> None:
        self.n, self._mask, self._slots = n, mask, slots
        self.count = len(slots) if slots is not None else int(np.count_nonzero(mask))
        self._bits: np.ndarray | None = None

    @property
    def slots(self) -> np.ndarray:
        if self._slots is None:
            self._slots = np.flatnonzero(self._mask)
        return self._slots

    @property
    def selector(self) -> faiss.IDSelector:
        if self._mask is None:
            self._mask = np.zeros(self.n, dtype=bool)
            self._mask[self._slots] = True
        self._bits = np.packbits(self._mask, bitorder="little")
        return faiss.IDSelectorBitmap(len(self._bits), faiss.swig_ptr(self._bits))


class RWLock:
    """Many readers or one writer, not reentrant. A waiting writer holds back new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writing and not self._writers_waiting)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            self._cond.wait_for(lambda: not self._writing and not self._readers)
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class _Build:
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


Locking = Callable[[], AbstractContextManager[None]]


class FaissIndex:
    """Vectors and metadata by image id; thread-safe: concurrent reads, one writer at a time."""

    def __init__(self, dim: int | None = None, config: FaissConfig | None = None) -> None:
        self.config = config or FaissConfig()
        self.dim = dim
        self.metadata: dict[str, dict[str, str]] = {}  # live images only
        self._rw = RWLock()
        self._build: _Build | None = None  # a background rebuild under way
        self._retry_at = 0.0  # no background rebuild before this (monotonic): the last one failed
        self._index: faiss.Index | None = None
        self._kind = "flat"
        self._built_for = 0  # live vectors at the last (re)build: IVF-PQ retrains after 4× growth
        self._ids: list[str] = []  # slot → image id (tombstoned slots keep theirs)
        self._n = 0  # slots used
        self._slot: dict[str, int] = {}  # image id → its live slot
        self._raw16: np.ndarray | None = None  # IVF-PQ only: float16 vectors by slot
        self._reset_slots(0)

    def _reset_slots(self, capacity: int) -> None:
        """Empty slot-indexed state: liveness and the metadata indexes."""
        self._live = np.zeros(capacity, dtype=bool)
        # Inverted index (field, value) → slots: where a sparse filter's candidates come from…
        self._postings: dict[tuple[str, str], array] = {}
        # …and a column per field, slot → value code (0: none, values from 1): how a candidate is checked
        # on the other fields, and what a common filter's bitmap is read from.
        self._values: dict[str, dict[str, int]] = {f: {} for f in flt.FIELDS}
        self._codes: dict[str, np.ndarray] = {f: np.zeros(capacity, dtype=np.int32) for f in flt.FIELDS}

    # ---- size and kind ---------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._rw.read():
            return len(self._slot)

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def migrating(self) -> str | None:
        """The type a background rebuild is building, while one is under way."""
        build = self._build
        return None if build is None else build.kind

    def settle(self, timeout: float | None = None) -> bool:
        """Wait for background rebuilds (and any they lead to) to finish; False if `timeout` ran out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (build := self._build) is not None and build.thread is not None:
            build.thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if build.thread.is_alive():
                return False
        return True

    def _desired_kind(self, live: int) -> str:
        cfg = self.config
        if cfg.kind is not None:
            return "flat" if cfg.kind == "ivfpq" and live < _IVFPQ_MIN else cfg.kind
        target = "ivfpq" if live >= cfg.ivfpq_from else "hnsw" if live >= cfg.hnsw_from else "flat"
        if KINDS.index(target) >= KINDS.index(self._kind):
            return target
        # Going down only below half the threshold that brought us here: no flip-flop at the edge.
        floor = (cfg.hnsw_from if self._kind == "hnsw" else cfg.ivfpq_from) // 2
        return target if live < floor else self._kind

    def _new_index(self, kind: str, sample: np.ndarray | None = None, built_for: int = 0) -> faiss.Index:
        assert self.dim is not None
        cfg = self.config
        if kind == "flat":
            return faiss.IndexFlatIP(self.dim)
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = cfg.ef_construction
            return index
        assert sample is not None and len(sample) >= _IVFPQ_MIN
        n = len(sample)
        # k-means wants at least 39 training points a list; a configured nlist is capped the same way.
        nlist = max(1, min(cfg.nlist or _nlist(built_for or n), n // 39))
        m = max(d for d in range(1, min(cfg.pq_m, self.dim) + 1) if self.dim % d == 0)
        nbits = min(cfg.pq_nbits, int(math.log2(n)))
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(self.dim), self.dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        return index

    # ---- slots and vectors -----------------------------------------------------------------------

    def _grow(self, extra: int) -> None:
        need = self._n + extra
        if need > len(self._live):
            capacity = max(need, 2 * len(self._live), 1024)
            live = np.zeros(capacity, dtype=bool)
            live[: self._n] = self._live[: self._n]
            self._live = live
            for field_, old in self._codes.items():
                codes = np.zeros(capacity, dtype=np.int32)
                codes[: self._n] = old[: self._n]
                self._codes[field_] = codes
        if self._kind == "ivfpq" and self._raw16 is not None and need > len(self._raw16):
            raw = np.empty((max(need, 2 * len(self._raw16)), self.dim), dtype=np.float16)
            raw[: self._n] = self._raw16[: self._n]
            self._raw16 = raw

    def _vectors(self, slots: np.ndarray) -> np.ndarray:
        if self._kind == "ivfpq":
            assert self._raw16 is not None
            return self._raw16[slots].astype(np.float32)
        assert self._index is not None
        return _flat_view(self._index)[slots]

    def _facet_slots(self, slot: int, metadata: Mapping[str, str]) -> None:
        for field_, value in flt.facets(metadata).items():
            self._postings.setdefault((field_, value), array("q")).append(slot)
            values = self._values[field_]
            self._codes[field_][slot] = values.setdefault(value, len(values) + 1)

    def _append(self, image_ids: list[str], vectors: np.ndarray) -> None:
        """Add vectors as new slots (the caller has tombstoned older slots of the same ids)."""
        assert self._index is not None
        first = self._n
        self._grow(len(image_ids))
        if self._kind == "ivfpq":
            assert self._raw16 is not None
            self._index.add_with_ids(vectors, np.arange(first, first + len(vectors), dtype=np.int64))
            self._raw16[first : first + len(vectors)] = vectors
        else:
            self._index.add(vectors)
        self._live[first : first + len(vectors)] = True
        self._n += len(vectors)
        for offset, image_id in enumerate(image_ids):
            slot = first + offset
            self._ids.append(image_id)
            self._slot[image_id] = slot
            self._facet_slots(slot, self.metadata[image_id])

    def _maintain(self) -> None:
        """After a write (write lock held): start the rebuild the collection now needs, if any."""
        if self._build is not None or time.monotonic() < self._retry_at:
            return  # the rebuild under way ends with this check again
        live = len(self._slot)
        dead = self._n - live
        kind = self._desired_kind(live)
        cfg = self.config
        regrown = kind == "ivfpq" and self._kind == "ivfpq" and live > 4 * max(self._built_for, 1)
        if kind != self._kind or regrown or (dead >= cfg.compact_min and dead > cfg.compact_ratio * self._n):
            build = _Build(kind, built_for=live)
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

    def _background(self, build: _Build) -> None:
        try:
            self._run_build(build, background=True)
        except Exception:
            log.exception("background index rebuild failed; the old index stays in service")
            with self._rw.write():
                self._build = None
                self._retry_at = time.monotonic() + _RETRY_SECONDS

    def _run_build(self, build: _Build, background: bool) -> None:
        """Build `build.kind` from the live vectors and swap it in. Inline the caller holds the write lock;
        in the background the copies take the read lock and the swap the write lock."""
        reading: Locking = self._rw.read if background else nullcontext
        writing: Locking = self._rw.write if background else nullcontext
        if build.kind == "ivfpq":
            with reading():
                live_slots = np.flatnonzero(self._live[: self._n])
                rng = np.random.default_rng(0)
                # 64 points per centroid train k-means well (FAISS wants at least 39); more only costs time.
                lists = self.config.nlist or _nlist(len(live_slots))
                size = min(len(live_slots), max(64 * lists, 65_536))
                sample = self._vectors(np.sort(rng.choice(live_slots, size=size, replace=False)))
            build.index = self._new_index("ivfpq", sample, build.built_for)  # training: outside the lock
            del sample
        else:
            build.index = self._new_index(build.kind)
        while not build.cancelled:
            with reading():
                if self._n - build.upto <= (_SWAP_TAIL if background else 0):
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

    def _copy_live(self, build: _Build, everything: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The next old slots still live (a chunk, or all that are left) and a copy of their vectors."""
        stop = self._n if everything else min(self._n, build.upto + _BUILD_CHUNK)
        slots = build.upto + np.flatnonzero(self._live[build.upto : stop])
        build.upto = stop
        build.ids.extend(self._ids[s] for s in slots)
        return slots, np.ascontiguousarray(self._vectors(slots), dtype=np.float32)

    def _add_to(self, build: _Build, slots: np.ndarray, vectors: np.ndarray) -> None:
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

    def _swap(self, build: _Build) -> None:
        """Make the built index current (write lock held). Slots that died during the build stay in it as
        tombstones; the filter indexes are renumbered from the old ones, not recomputed from metadata."""
        source = np.concatenate([*build.sources, np.empty(0, dtype=np.int64)]).astype(np.int64)
        count = len(source)
        renumber = np.full(self._n, -1, dtype=np.int64)
        renumber[source] = np.arange(count)
        capacity = max(count, 1024)
        live = np.zeros(capacity, dtype=bool)
        live[:count] = self._live[source]
        for field_, old in self._codes.items():
            codes = np.zeros(capacity, dtype=np.int32)
            codes[:count] = old[source]
            self._codes[field_] = codes
        for key, old_slots in self._postings.items():
            moved = renumber[np.frombuffer(old_slots, dtype=np.int64)]
            self._postings[key] = array("q", moved[moved >= 0].tobytes())
        self._slot = {image_id: int(renumber[slot]) for image_id, slot in self._slot.items()}
        self._live, self._ids, self._n = live, build.ids, count
        self._index, self._kind, self._built_for = build.index, build.kind, build.built_for
        self._raw16 = build.raw16 if build.kind == "ivfpq" else None

    # ---- writes ----------------------------------------------------------------------------------

    def upsert(self, image_id: str, vector: np.ndarray, metadata: Mapping[str, str]) -> None:
        self.upsert_many([image_id], np.asarray(vector, dtype=np.float32).reshape(1, -1), [metadata])

    def upsert_many(self, image_ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[Mapping[str, str]]) -> None:
        vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32).reshape(len(image_ids), -1))
        if len(metadata) != len(image_ids):
            raise ValueError(f"{len(image_ids)} ids but {len(metadata)} metadata entries")
        if not image_ids:
            return
        # The last of repeated ids in one batch wins, as if they had come one by one.
        last = {image_id: n for n, image_id in enumerate(image_ids)}
        keep = sorted(last.values())
        with self._rw.write():
            if self.dim is None:
                self.dim = vectors.shape[1]
            if vectors.shape[1] != self.dim:
                raise ValueError(f"vector of {vectors.shape[1]} dimensions for an index of {self.dim}")
            if self._index is None:
                self._index = self._new_index("flat")
            ids = [image_ids[n] for n in keep]
            for image_id in ids:
                if (old := self._slot.pop(image_id, None)) is not None:
                    self._live[old] = False  # the replaced entry is a tombstone now
            for image_id, n in zip(ids, keep, strict=True):
                self.metadata[image_id] = dict(metadata[n])
            self._append(ids, vectors[keep])
            self._maintain()

    def delete(self, image_id: str) -> bool:
        return self.delete_many([image_id]) == 1

    def delete_many(self, image_ids: Sequence[str]) -> int:
        with self._rw.write():
            gone = 0
            for image_id in set(image_ids):
                if (slot := self._slot.pop(image_id, None)) is not None:
                    self._live[slot] = False
                    del self.metadata[image_id]
                    gone += 1
            if gone:
                self._maintain()
            return gone

    # ---- reads -----------------------------------------------------------------------------------

    def get(self, image_id: str) -> dict[str, str] | None:
        with self._rw.read():
            found = self.metadata.get(image_id)
            return None if found is None else dict(found)

    def vector(self, image_id: str) -> np.ndarray | None:
        with self._rw.read():
            slot = self._slot.get(image_id)
            return None if slot is None else self._vectors(np.array([slot])).reshape(-1).copy()

    def _selection(self, wanted: dict[str, frozenset[str]]) -> _Selection | None:
        """Live slots matching the filters; None when that is every slot (no filter, no tombstones)."""
        live = self._live[: self._n]
        if not wanted:
            return None if len(self._slot) == self._n else _Selection(self._n, mask=live.copy())
        allowed = {
            f: np.array([self._values[f][v] for v in values if v in self._values[f]], dtype=np.int32)
            for f, values in wanted.items()
        }
        if any(len(codes) == 0 for codes in allowed.values()):
            return _Selection(self._n, slots=np.empty(0, dtype=np.int64))
        sizes = {f: sum(len(self._postings[(f, v)]) for v in wanted[f] if (f, v) in self._postings) for f in wanted}
        rarest = min(sizes, key=sizes.__getitem__)
        if sizes[rarest] <= max(4 * self.config.exact_below, self._n // 64):
            # Sparse: candidates from the rarest field's postings (disjoint across its values), checked on
            # the other fields through their columns — no pass over every slot.
            cand = np.sort(
                np.concatenate(
                    [
                        np.frombuffer(self._postings[(rarest, v)], dtype=np.int64)
                        for v in wanted[rarest]
                        if (rarest, v) in self._postings
                    ]
                )
            )
            keep = live[cand]
            for f, codes in allowed.items():
                if f != rarest:
                    keep &= self._member(f, cand, codes)
            return _Selection(self._n, slots=cand[keep])
        mask = live.copy()
        for f, codes in allowed.items():
            mask &= self._member(f, slice(0, self._n), codes)
        return _Selection(self._n, mask=mask)

    def _member(self, field_: str, slots: np.ndarray | slice, codes: np.ndarray) -> np.ndarray:
        """Whether each slot's value of `field_` is one of `codes`: a lookup table indexed by code
        (np.isin took 2.4 ms over 300k slots; this a fraction of that)."""
        table = np.zeros(len(self._values[field_]) + 1, dtype=bool)
        table[codes] = True  # code 0 (no value) stays False
        return table[self._codes[field_][slots]]

    def _exact(self, queries: np.ndarray, k: int, selection: _Selection | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the selected slots (all slots when None)."""
        if self._kind != "ivfpq" and selection is not None and selection.count > self.config.exact_below:
            # Many matches: FAISS's flat scan with the bitmap reads only the selected rows, without copying
            # them out (a gather of 50k × 2 KB rows costs more than the scan).
            assert self._index is not None
            flat = faiss.downcast_index(self._index.storage) if self._kind == "hnsw" else self._index
            return flat.search(queries, k, params=faiss.SearchParameters(sel=selection.selector))
        slots_all = np.arange(self._n) if selection is None else selection.slots
        best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
        best_i = np.empty((len(queries), 0), dtype=np.int64)
        for start in range(0, len(slots_all), _CHUNK):
            slots = slots_all[start : start + _CHUNK]
            scores = queries @ self._vectors(slots).T
            merged_s = np.concatenate([best_s, scores], axis=1)
            merged_i = np.concatenate([best_i, np.broadcast_to(slots, scores.shape)], axis=1)
            order = _top_k_by_slot(merged_s, merged_i, k)
            best_s = np.take_along_axis(merged_s, order, axis=1)
            best_i = np.take_along_axis(merged_i, order, axis=1)
        return best_s, best_i

    def _ann(self, queries: np.ndarray, k: int, selection: _Selection | None) -> tuple[np.ndarray, np.ndarray]:
        assert self._index is not None
        cfg = self.config
        sel = None if selection is None else selection.selector
        # IVF scans whole lists: with a filter, only its share of each list can be a candidate, so widen.
        widen = 1 if selection is None else math.ceil(self._n / max(selection.count, 1))
        if self._kind == "flat":
            params = faiss.SearchParameters(sel=sel) if sel is not None else None
            return self._index.search(queries, k, params=params)
        if self._kind == "hnsw":
            # No widening here: a larger efSearch with a selector found no more of the true top 10 (it only
            # filled k sooner from a worse walk); sparse filters take the exact path instead.
            ef = max(cfg.ef_search, k)
            return self._index.search(queries, k, params=faiss.SearchParametersHNSW(efSearch=ef, sel=sel))
        nlist = self._index.nlist
        params = faiss.SearchParametersIVF(nprobe=min(cfg.nprobe * widen, nlist), sel=sel)
        count = self._n if selection is None else selection.count
        _, cand = self._index.search(queries, min(k * cfg.rerank, count), params=params)
        # Re-score the PQ candidates with the stored vectors: PQ distances alone rank too coarsely.
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        slots = np.full((len(queries), k), -1, dtype=np.int64)
        for row, found in enumerate(cand):
            found = found[found >= 0]
            exact = (self._vectors(found) @ queries[row]).reshape(1, -1)
            order = _top_k_by_slot(exact, found.reshape(1, -1), k)[0]
            scores[row, : len(order)] = exact[0, order]
            slots[row, : len(order)] = found[order]
        return scores, slots

    def _search(self, queries: np.ndarray, k: int, wanted: dict[str, frozenset[str]]) -> tuple[np.ndarray, np.ndarray]:
        selection = self._selection(wanted)
        count = self._n if selection is None else selection.count
        k = min(k, count)
        if k <= 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        few = selection is not None and (
            selection.count <= self.config.exact_below or selection.count < self.config.ann_min_share * len(self._slot)
        )
        if few:
            return self._exact(queries, k, selection)
        scores, slots = self._ann(queries, k, selection)
        short = np.flatnonzero((slots < 0).any(axis=1))
        if len(short):  # the graph walk ran out before k matches: answer those queries exactly
            scores[short], slots[short] = self._exact(queries[short], k, selection)
        return scores, slots

    def _queries(self, vectors: np.ndarray) -> np.ndarray:
        queries = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
        queries = queries.reshape(1, -1) if queries.ndim == 1 else queries
        if self.dim is not None and queries.shape[1] != self.dim:
            raise ValueError(f"query of {queries.shape[1]} dimensions for an index of {self.dim}")
        return queries

    def search(self, vector: np.ndarray, k: int, filters: flt.Filters | None = None) -> list[Hit]:
        return self.search_many(vector, k, filters)[0]

    def search_many(self, vectors: np.ndarray, k: int, filters: flt.Filters | None = None) -> list[list[Hit]]:
        """The k nearest live images to each query (inner product, best first) that match `filters`."""
        wanted = flt.normalise(filters)
        with self._rw.read():
            queries = self._queries(vectors)
            if self._index is None or not self._slot or k <= 0:
                return [[] for _ in queries]
            scores, slots = self._search(queries, k, wanted)
            return [
                [
                    Hit(self._ids[s], float(score), dict(self.metadata[self._ids[s]]))
                    for s, score in zip(row_slots, row_scores, strict=True)
                    if s >= 0
                ]
                for row_slots, row_scores in zip(slots, scores, strict=True)
            ]

    def images(self, filters: flt.Filters | None = None) -> Iterator[tuple[str, dict[str, str]]]:
        """Every live image matching `filters`, with its metadata (a copy taken at the call)."""
        wanted = flt.normalise(filters)
        with self._rw.read():
            items = [(k, dict(v)) for k, v in self.metadata.items()]
        for image_id, metadata in items:
            if not wanted or flt.matches(flt.facets(metadata), wanted):
                yield image_id, metadata

    def stats(self) -> IndexStats:
        with self._rw.read():
            live = self._live[: self._n]
            by_field: dict[str, dict[str, int]] = {}
            for field_, values in self._values.items():
                counts = np.bincount(self._codes[field_][: self._n][live], minlength=len(values) + 1)
                by_field[field_] = {value: int(counts[code]) for value, code in values.items() if counts[code]}
            return IndexStats(images=len(self._slot), kind=self._kind, by_field=by_field)

    # ---- snapshots -------------------------------------------------------------------------------

    def _pack(self, with_metadata: bool) -> bytes:
        header = {
            "format": FORMAT,
            "kind": self._kind,
            "dim": self.dim,
            "built_for": self._built_for,
            "faiss": faiss.__version__,
        }
        arrays: dict[str, np.ndarray] = {
            "header": _json_bytes(header),
            "index": faiss.serialize_index(self._index) if self._index is not None else np.zeros(0, np.uint8),
            "ids": _json_bytes(self._ids),
            "live": np.packbits(self._live[: self._n], bitorder="little"),
        }
        if self._kind == "ivfpq" and self._raw16 is not None:
            arrays["raw16"] = self._raw16[: self._n]
        if with_metadata:
            arrays["metadata"] = _json_bytes(self.metadata)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    def dump(self) -> bytes:
        """The whole index, metadata included, as one self-describing blob."""
        with self._rw.read():
            return self._pack(with_metadata=True) if self.dim is not None else b""

    def serialize(self) -> tuple[bytes, dict[str, dict[str, str]]]:
        """The index without its metadata, and the metadata (how the service stores its snapshots)."""
        with self._rw.read():
            data = self._pack(with_metadata=False) if self.dim is not None else b""
            return data, {k: dict(v) for k, v in self.metadata.items()}

    @classmethod
    def load(cls, data: bytes, config: FaissConfig | None = None) -> FaissIndex:
        return cls.restore(data, None, config)

    @classmethod
    def restore(
        cls, data: bytes, metadata: Mapping[str, Mapping[str, str]] | None, config: FaissConfig | None = None
    ) -> FaissIndex:
        if not data:
            return cls(config=config)
        if not data.startswith(b"PK"):
            return cls._restore_idmap(data, metadata or {}, config)
        with np.load(io.BytesIO(data), allow_pickle=False) as parts:
            header = json.loads(parts["header"].tobytes())
            if header.get("format") != FORMAT:
                raise ValueError(f"not a taxonstream FAISS snapshot: {header.get('format')!r}")
            if metadata is None:
                metadata = json.loads(parts["metadata"].tobytes())
            self = cls(dim=header["dim"], config=config)
            self._kind, self._built_for = header["kind"], header["built_for"]
            self._index = faiss.deserialize_index(parts["index"])
            self._ids = json.loads(parts["ids"].tobytes())
            self._n = len(self._ids)
            self._reset_slots(max(self._n, 1024))
            self._live[: self._n] = np.unpackbits(parts["live"], count=self._n, bitorder="little").astype(bool)
            if "raw16" in parts:
                self._raw16 = np.array(parts["raw16"])
        self.metadata = {k: dict(v) for k, v in metadata.items()}
        self._slot = {self._ids[slot]: int(slot) for slot in np.flatnonzero(self._live[: self._n])}
        if self._slot.keys() != self.metadata.keys():
            raise ValueError("snapshot metadata does not match its index")
        for image_id, slot in self._slot.items():
            self._facet_slots(slot, self.metadata[image_id])
        with self._rw.write():
            # A snapshot taken during a background rebuild holds the old type: start it again.
            self._maintain()
        return self

    @classmethod
    def _restore_idmap(
        cls, data: bytes, metadata: Mapping[str, Mapping[str, str]], config: FaissConfig | None
    ) -> FaissIndex:
        """Snapshots from before slots: an IndexIDMap2 labelled by `faiss_id`. Re-added in id order."""
        old = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        self = cls(dim=old.d, config=config)
        ids = sorted(metadata)
        if ids:
            vectors = np.stack([old.reconstruct(faiss_id(image_id)) for image_id in ids])
            for start in range(0, len(ids), _CHUNK):
                batch = ids[start : start + _CHUNK]
                self.upsert_many(batch, vectors[start : start + _CHUNK], [metadata[i] for i in batch])
        return self

    def close(self) -> None:
        """Stop a background rebuild (the index itself lives in this process: nothing else to release)."""
        build = self._build
        if build is not None and build.thread is not None:
            build.cancelled = True
            build.thread.join()


def _top_k_by_slot(scores: np.ndarray, slots: np.ndarray, k: int) -> np.ndarray:
    """Column order of the k best scores in each row, best first, equal scores by lower slot."""
    k = min(k, scores.shape[1])
    out = np.empty((scores.shape[0], k), dtype=np.int64)
    if k == 0:
        return out
    for row in range(scores.shape[0]):
        cand = np.argpartition(-scores[row], k - 1)[:k] if k < scores.shape[1] else np.arange(scores.shape[1])
        out[row] = cand[np.lexsort((slots[row, cand], -scores[row, cand]))]
    return out


def _nlist(live: int) -> int:
    """IVF lists for a collection: about 4·√n, the usual balance of list scans against centroid scans."""
    return max(1, int(4 * math.sqrt(live)))


def _json_bytes(value: object) -> np.ndarray:
    return np.frombuffer(json.dumps(value, separators=(",", ":")).encode(), dtype=np.uint8)
