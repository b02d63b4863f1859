"""A Hamming-distance index over 64-bit perceptual hashes that does not scan the collection.

Multi-index hashing (Norouzi, Punjani & Fleet, CVPR 2012), as FAISS's `IndexBinaryMultiHash`: the 64
bits are cut into m chunks of ⌊64/m⌋ bits, one hash table each. If two hashes differ in at most r bits,
then by pigeonhole at least one chunk differs in at most ⌊r/m⌋ bits (bits left over by an uneven cut only
make the chunks' share smaller). A query therefore looks up, in each chunk's table, only the chunk values
within ⌊r/m⌋ bits of its own (FAISS's `nflip`), and computes the full distance for those candidates
alone, so the candidates grow far slower than n. m is re-chosen from n and the index's radius as the
index grows (a rebuild of the FAISS tables, which also drops removed and replaced hashes: FAISS's
multi-hash index cannot remove an entry, so until then they are tombstones skipped in the results).

Durable state: `to_bytes()` / `from_bytes()` (hashes and keys only; tables are rebuilt on load), or
`HammingIndex.build(items)` straight from a registry's records after a restart.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterable, Iterator

import faiss
import numpy as np

BITS = 64
_MAGIC = b"taxonstream-hamming-index\n"
_FORMAT_VERSION = 1
# A probe (a hash-table look-up) costs about as much as a candidate (a set insert and a popcount) in FAISS.
_PROBE_COST = 1.0
_BATCH = 4_096  # hashes queried per FAISS call in near_pairs (FAISS parallelises calls of over 100)


def _chunk_count(n: int, radius: int) -> int:
    """The m (2..16) with the least expected work per query for n hashes at this radius.

    Work = m · probes(width, ⌊radius/m⌋) · (PROBE_COST + n / 2^width) with width = ⌊64/m⌋: each probe
    finds on average n / 2^width candidates whose full distance must be computed. This is m ≈ 64 / log2(n)
    adjusted so the per-chunk radius ⌊radius/m⌋ is not wasted (at radius 8, three 21-bit chunks beat four
    16-bit ones: both search radius 2 per chunk, the wider chunks find ~30× fewer candidates).
    """

    def work(m: int) -> float:
        width = BITS // m
        probes = sum(math.comb(width, k) for k in range(min(radius // m, width) + 1))
        return m * probes * (_PROBE_COST + n / 2.0**width)

    return min(range(2, 17), key=work)


def _check(key: str, value: int) -> None:
    if "\n" in key:
        raise ValueError("keys may not contain a newline")
    if not 0 <= value < 1 << BITS:
        raise ValueError(f"not a {BITS}-bit hash: {value}")


class HammingIndex:
    """String keys (image ids) with 64-bit hashes; `query` returns every key within a Hamming radius.

    `distance_computations` counts full-hash comparisons (FAISS's shortlist sizes), the measure of how much
    of the index a query touched. Thread-safe: one lock around FAISS's tables and their `nflip`.
    """

    def __init__(self, max_distance: int = 8, chunks: int | None = None) -> None:
        if not 0 <= max_distance < BITS:
            raise ValueError(f"max_distance must be 0..{BITS - 1}")
        if chunks is not None and not 1 <= chunks <= BITS:
            raise ValueError(f"chunks must be 1..{BITS}")
        self.max_distance = max_distance
        self._fixed_chunks = chunks
        # Slot → hash, little-endian so FAISS's bit i is the hash's bit i. Always one spare slot: FAISS
        # reads a chunk as 8 bytes from its first byte, past the end of the last code.
        self._values = np.zeros(16, dtype="<u8")
        self._alive = np.zeros(16, dtype=bool)
        self._keys: list[str] = []
        self._slot: dict[str, int] = {}
        self._checked = 0  # slots when the layout was last chosen
        self._lock = threading.Lock()
        self._tables = self._new_tables(0)
        self.distance_computations = 0

    # -- contents ---------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, key: object) -> bool:
        return key in self._slot

    def get(self, key: str) -> int | None:
        slot = self._slot.get(key)
        return None if slot is None else int(self._values[slot])

    def items(self) -> Iterator[tuple[str, int]]:
        for key, slot in list(self._slot.items()):
            yield key, int(self._values[slot])

    def add(self, key: str, value: int) -> bool:
        """Add or update a key's hash; returns False when it was already there with this hash."""
        _check(key, value)
        with self._lock:
            slot = self._slot.get(key)
            if slot is not None:
                if int(self._values[slot]) == value:
                    return False
                self._alive[slot] = False  # the old slot stays in the tables until the next rebuild, skipped
            slot = len(self._keys)
            if slot + 1 >= len(self._values):
                self._values = np.concatenate([self._values, np.zeros(len(self._values), dtype="<u8")])
                self._alive = np.concatenate([self._alive, np.zeros(len(self._alive), dtype=bool)])
            self._values[slot] = value
            self._alive[slot] = True
            self._keys.append(key)
            self._slot[key] = slot
            self._tables.add(self._codes(slot, slot + 1))
            if len(self._keys) - self._checked > max(64, len(self._keys) // 4):
                self._maintain()
            return True

    def remove(self, key: str) -> bool:
        with self._lock:
            slot = self._slot.pop(key, None)
            if slot is None:
                return False
            self._alive[slot] = False
            if len(self._keys) - len(self._slot) > max(64, len(self._keys) // 4):
                self._rebuild()  # mostly tombstones: drop them
            return True

    # -- search -----------------------------------------------------------------------------------------------

    def query(self, value: int, max_distance: int | None = None) -> list[tuple[str, int]]:
        """Every (key, distance) with distance ≤ max_distance (default: the index's), nearest first."""
        query = np.zeros(2, dtype="<u8")  # the second word: room for FAISS's 8-byte chunk reads
        query[0] = value
        return self._search(query.view(np.uint8).reshape(2, 8)[:1], max_distance)[0]

    def near_pairs(self, max_distance: int | None = None) -> Iterator[tuple[str, str, int]]:
        """Every unordered pair of keys within the radius, once each (key order decides which comes first)."""
        with self._lock:
            slots = np.fromiter(self._slot.values(), dtype=np.int64, count=len(self._slot))
            codes = self._values[np.append(slots, 0)].view(np.uint8).reshape(-1, 8)  # + a spare row
            keys = [self._keys[s] for s in slots.tolist()]
        for start in range(0, len(keys), _BATCH):
            found = self._search(codes[start : min(start + _BATCH, len(keys))], max_distance)
            for key, near in zip(keys[start : start + _BATCH], found, strict=True):
                for other, distance in near:
                    if other > key:
                        yield key, other, distance

    def _search(self, queries: np.ndarray, max_distance: int | None) -> list[list[tuple[str, int]]]:
        """Matches of each query (rows of 8 little-endian bytes, with readable bytes after the last)."""
        radius = self.max_distance if max_distance is None else max_distance
        if radius < 0:
            return [[] for _ in queries]
        stats = faiss.cvar.indexBinaryHash_stats
        with self._lock:
            tables = self._tables
            tables.nflip = min(radius // tables.nhash, tables.b)
            before = stats.ndis
            lims, distances, slots = tables.range_search(queries, radius + 1)  # FAISS keeps distance < radius
            self.distance_computations += stats.ndis - before
            alive = self._alive[slots]
            keys = self._keys
            out = []
            for row in range(len(queries)):
                lo, hi = int(lims[row]), int(lims[row + 1])
                keep = alive[lo:hi]
                pairs = zip(slots[lo:hi][keep].tolist(), distances[lo:hi][keep].tolist(), strict=True)
                out.append(sorted(((keys[s], int(d)) for s, d in pairs), key=lambda kd: (kd[1], kd[0])))
            return out

    # -- maintenance ------------------------------------------------------------------------------------------

    def _codes(self, start: int, stop: int) -> np.ndarray:
        """Slots start..stop as FAISS binary codes (a view: the spare slot after them stays readable)."""
        return self._values[:stop].view(np.uint8).reshape(-1, 8)[start:]

    def _new_tables(self, n: int) -> faiss.IndexBinaryMultiHash:
        chunks = self._fixed_chunks or _chunk_count(n, self.max_distance)
        return faiss.IndexBinaryMultiHash(BITS, chunks, BITS // chunks)

    def _maintain(self) -> None:
        """After growth (lock held): rebuild when the best chunk count changed or tombstones pile up."""
        self._checked = len(self._keys)
        dead = len(self._keys) - len(self._slot)
        wanted = self._fixed_chunks or _chunk_count(len(self._slot), self.max_distance)
        if wanted != self._tables.nhash or dead > max(64, len(self._keys) // 4):
            self._rebuild()

    def _rebuild(self) -> None:
        """New FAISS tables over the live hashes only, renumbered 0..n-1, with m re-chosen (lock held)."""
        live = [(k, int(self._values[s])) for k, s in self._slot.items()]
        n = len(live)
        self._values = np.zeros(max(16, n * 2), dtype="<u8")
        self._alive = np.zeros(len(self._values), dtype=bool)
        self._values[:n] = np.array([v for _, v in live], dtype="<u8")
        self._alive[:n] = True
        self._keys = [k for k, _ in live]
        self._slot = {k: i for i, k in enumerate(self._keys)}
        self._tables = self._new_tables(n)
        if n:
            self._tables.add(self._codes(0, n))
        self._checked = n

    @classmethod
    def build(cls, items: Iterable[tuple[str, int]], max_distance: int = 8, chunks: int | None = None) -> HammingIndex:
        """An index of these (key, hash) pairs in one pass (a later duplicate key replaces an earlier one)."""
        index = cls(max_distance, chunks)
        latest: dict[str, int] = {}
        for key, value in items:
            _check(key, value)
            latest[key] = value
        index._keys = list(latest)
        index._values = np.array(list(latest.values()), dtype="<u8")
        index._slot = {k: i for i, k in enumerate(index._keys)}
        with index._lock:
            index._rebuild()
        return index

    # -- durable form -----------------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Hashes and keys (not the tables, which `from_bytes` rebuilds); stable for the same contents."""
        live = sorted(self.items())
        header = {"version": _FORMAT_VERSION, "bits": BITS, "max_distance": self.max_distance, "count": len(live)}
        values = np.array([v for _, v in live], dtype="<u8").tobytes()
        keys = "\n".join(k for k, _ in live).encode()
        return _MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + values + keys

    @classmethod
    def from_bytes(cls, data: bytes) -> HammingIndex:
        if not data.startswith(_MAGIC):
            raise ValueError("not a taxonstream Hamming index snapshot")
        line_end = data.index(b"\n", len(_MAGIC))
        header = json.loads(data[len(_MAGIC) : line_end])
        if header.get("version") != _FORMAT_VERSION or header.get("bits") != BITS:
            raise ValueError(f"unsupported snapshot header {header}")
        count = int(header["count"])
        start = line_end + 1
        values = np.frombuffer(data, dtype="<u8", count=count, offset=start)
        keys_blob = data[start + 8 * count :].decode()
        keys = keys_blob.split("\n") if count else []
        if len(keys) != count or (count == 0 and keys_blob):
            raise ValueError(f"snapshot holds {len(keys)} keys for {count} hashes")
        return cls.build(zip(keys, values.tolist(), strict=True), int(header["max_distance"]))


def connected(pairs: Iterable[tuple[str, str, int]]) -> list[list[tuple[str, str, int]]]:
    """Near pairs grouped into their connected components (near duplicates link transitively)."""
    pairs = list(pairs)
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.get(key, key) != key:
            parent[key] = parent.get(parent[key], parent[key])  # path halving
            key = parent[key]
        return key

    for a, b, _ in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    components: dict[str, list[tuple[str, str, int]]] = {}
    for pair in pairs:
        components.setdefault(root(pair[0]), []).append(pair)
    return list(components.values())
