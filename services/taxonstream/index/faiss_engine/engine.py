"""The in-process FAISS index: type chosen by size, filters inside the search, upsert/delete by image id.

Modules: `kinds` (which index type, making one), `postings` (the filter indexes), `search` (answering
queries), `migration` (rebuilds), `snapshot` (the bytes), `locking` (the readers-writer lock); this one
holds the state and composes them.

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
matching slots. Either way a non-matching item is never a candidate. Numeric filters (`F_small>=0.5`,
index/comparisons.py) read a float column per metadata column named, filled from the metadata the first
time one is asked for and kept by every write after: they narrow the facet selection (few slots) or
its bitmap like any other filter.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence

import faiss
import numpy as np

from taxonstream.index import filters as flt
from taxonstream.index.faiss_engine import snapshot as snap
from taxonstream.index.faiss_engine.kinds import flat_view, new_index
from taxonstream.index.faiss_engine.locking import RWLock
from taxonstream.index.faiss_engine.migration import Build, Migrations
from taxonstream.index.faiss_engine.postings import Postings, Selection
from taxonstream.index.faiss_engine.search import CHUNK, Searching
from taxonstream.index.types import FaissConfig, Hit, IndexStats


class FaissIndex(Migrations, Searching):
    """Vectors and metadata by image id; thread-safe: concurrent reads, one writer at a time."""

    def __init__(self, dim: int | None = None, config: FaissConfig | None = None) -> None:
        self.config = config or FaissConfig()
        self.dim = dim
        self.metadata: dict[str, dict[str, str]] = {}  # live images only
        self._rw = RWLock()
        self._build: Build | None = None  # a background rebuild under way
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
        """Empty slot-indexed state: liveness and the filter indexes."""
        self._live = np.zeros(capacity, dtype=bool)
        self._postings = Postings(capacity)

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

    # ---- slots and vectors -----------------------------------------------------------------------

    def _grow(self, extra: int) -> None:
        need = self._n + extra
        if need > len(self._live):
            capacity = max(need, 2 * len(self._live), 1024)
            live = np.zeros(capacity, dtype=bool)
            live[: self._n] = self._live[: self._n]
            self._live = live
            self._postings.grow(capacity, self._n)
        if self._kind == "ivfpq" and self._raw16 is not None and need > len(self._raw16):
            raw = np.empty((max(need, 2 * len(self._raw16)), self.dim), dtype=np.float16)
            raw[: self._n] = self._raw16[: self._n]
            self._raw16 = raw

    def _vectors(self, slots: np.ndarray) -> np.ndarray:
        if self._kind == "ivfpq":
            assert self._raw16 is not None
            return self._raw16[slots].astype(np.float32)
        assert self._index is not None
        return flat_view(self._index)[slots]

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
            self._postings.add(slot, self.metadata[image_id])

    def _selection(self, wanted: flt.Wanted) -> Selection | None:
        return self._postings.select(wanted, self._live[: self._n], self.config.exact_below, self._live_metadata)

    def _live_metadata(self, slot: int) -> Mapping[str, str] | None:
        return self.metadata.get(self._ids[slot]) if self._live[slot] else None

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
                self._index = new_index("flat", self.dim, self.config)
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
            if not wanted or flt.accepts(metadata, wanted):
                yield image_id, metadata

    def stats(self, filters: flt.Filters | None = None) -> IndexStats:
        """Live images (matching `filters`, if any) and their counts by facet value."""
        wanted = flt.normalise(filters)
        with self._rw.read():
            live = self._live[: self._n]
            selection = self._selection(wanted) if wanted else None
            mask = live if selection is None else selection.mask
            images = len(self._slot) if selection is None else selection.count
            return IndexStats(images=images, kind=self._kind, by_field=self._postings.counts(mask))

    # ---- snapshots -------------------------------------------------------------------------------

    def _pack(self, with_metadata: bool) -> bytes:
        assert self.dim is not None and self._index is not None
        return snap.pack(
            snap.Snapshot(
                kind=self._kind,
                dim=self.dim,
                built_for=self._built_for,
                index=self._index,
                ids=self._ids,
                live=self._live[: self._n],
                raw16=self._raw16[: self._n] if self._kind == "ivfpq" and self._raw16 is not None else None,
                metadata=self.metadata if with_metadata else None,
            )
        )

    def dump(self) -> bytes:
        """The whole index, metadata included, as one self-describing blob (b"" while it has no vectors)."""
        with self._rw.read():
            return self._pack(with_metadata=True) if self._index is not None else b""

    def serialize(self) -> tuple[bytes, dict[str, dict[str, str]]]:
        """The index without its metadata, and the metadata (to store them apart)."""
        with self._rw.read():
            data = self._pack(with_metadata=False) if self._index is not None else b""
            return data, {k: dict(v) for k, v in self.metadata.items()}

    @classmethod
    def load(cls, data: bytes, config: FaissConfig | None = None) -> FaissIndex:
        """The index a `dump()` wrote. Any other format raises `SnapshotFormatError`."""
        return cls.restore(data, None, config)

    @classmethod
    def restore(
        cls, data: bytes, metadata: Mapping[str, Mapping[str, str]] | None, config: FaissConfig | None = None
    ) -> FaissIndex:
        """The index of a snapshot, with its metadata given here or (None) read from the snapshot."""
        if not data:
            return cls(config=config)  # what dump() writes for an index that never had a vector
        if snap.is_legacy(data):
            if metadata is None:
                raise snap.SnapshotFormatError(snap.LEGACY, "it holds no metadata: restore it with its metadata")
            return cls._restore_legacy(data, metadata, config)
        parts = snap.unpack(data)
        if metadata is None:
            if parts.metadata is None:
                raise ValueError(
                    "this FAISS snapshot holds no metadata (from serialize()): restore it with its metadata"
                )
            metadata = parts.metadata
        self = cls(dim=parts.dim, config=config)
        self._kind, self._built_for, self._index = parts.kind, parts.built_for, parts.index
        self._ids, self._n = parts.ids, len(parts.ids)
        self._reset_slots(max(self._n, 1024))
        self._live[: self._n] = parts.live
        self._raw16 = parts.raw16
        self.metadata = {k: dict(v) for k, v in metadata.items()}
        self._slot = {self._ids[slot]: int(slot) for slot in np.flatnonzero(self._live[: self._n])}
        if self._slot.keys() != self.metadata.keys():
            raise ValueError("snapshot metadata does not match its index")
        for image_id, slot in self._slot.items():
            self._postings.add(slot, self.metadata[image_id])
        with self._rw.write():
            # A snapshot taken during a background rebuild holds the old type: start it again.
            self._maintain()
        return self

    @classmethod
    def _restore_legacy(
        cls, data: bytes, metadata: Mapping[str, Mapping[str, str]], config: FaissConfig | None
    ) -> FaissIndex:
        """Snapshots from before slots: an IndexIDMap2 labelled by `faiss_id`. Re-added in id order."""
        dim, ids, vectors = snap.unpack_legacy(data, metadata)
        self = cls(dim=dim, config=config)
        for start in range(0, len(ids), CHUNK):
            batch = ids[start : start + CHUNK]
            self.upsert_many(batch, vectors[start : start + CHUNK], [metadata[i] for i in batch])
        return self

    def close(self) -> None:
        """Stop a background rebuild (the index itself lives in this process: nothing else to release)."""
        build = self._build
        if build is not None and build.thread is not None:
            build.cancelled = True
            build.thread.join()
