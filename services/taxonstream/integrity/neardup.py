"""A Hamming-distance index over 64-bit perceptual hashes that does not scan the collection.

Multi-index hashing (Norouzi, Punjani & Fleet, CVPR 2012): the 64 bits are cut into m chunks. If two hashes
differ in at most r bits, then by pigeonhole at least one chunk differs in at most ⌊r/m⌋ bits. A query
therefore looks up, in each chunk's table, only the chunk values within ⌊r/m⌋ bits of its own, and computes
the full distance for those candidates alone. With m ≈ 64 / log2(n) every chunk value holds about one hash,
so the candidates grow far slower than n (about a thousand at a million hashes for r = 8, against a million
for a scan). m is re-chosen, from n and the index's radius, as the index grows.

Layout, for memory and speed in Python: the bulk of the index is, per chunk, a sorted numpy array of chunk
values with the slot of each hash (found with `searchsorted`); hashes added since the last rebuild sit in
small per-chunk dicts. When those hold more than a quarter of the index, everything is re-sorted into the
arrays (amortised O(log n) per insert). A BK-tree was the alternative; at the radii pHash needs (~8 of 64
bits) it visits a large share of its nodes, so it saves little over a scan.

Durable state: `to_bytes()` / `from_bytes()` (hashes and keys only; tables are rebuilt on load), or
`HammingIndex.build(items)` straight from a registry's records after a restart.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from itertools import combinations

import numpy as np

BITS = 64
_MAGIC = b"taxonstream-hamming-index\n"
_FORMAT_VERSION = 1
# A probe (one searchsorted step, vectorised) costs about this fraction of a candidate's distance check.
_PROBE_COST = 0.05
_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount64(values: np.ndarray) -> np.ndarray:
    return _POPCOUNT8[values.view(np.uint8)].reshape(-1, 8).sum(axis=1, dtype=np.int64)


def _chunk_count(n: int, radius: int) -> int:
    """The m (2..16) with the least expected work per query for n hashes at this radius.

    Work = m · probes(width, ⌊radius/m⌋) · (PROBE_COST + n / 2^width): every probe is a cheap vectorised table
    look-up, and each finds on average n / 2^width candidates whose full distance must be computed. This is
    m ≈ 64 / log2(n) adjusted so the per-chunk radius ⌊radius/m⌋ is not wasted (at radius 8, three 21-bit
    chunks beat four 16-bit ones: both search radius 2 per chunk, the wider chunks find ~40× fewer candidates).
    """

    def work(m: int) -> float:
        width = BITS // m
        probes = sum(math.comb(width, k) for k in range(min(radius // m, width) + 1))
        return m * probes * (_PROBE_COST + n / 2.0**width)

    return min(range(2, 17), key=work)


def _layout(chunks: int) -> list[tuple[int, int]]:
    """(shift, width) of each chunk; widths differ by at most one bit."""
    base, extra = divmod(BITS, chunks)
    layout, shift = [], 0
    for i in range(chunks):
        width = base + (1 if i < extra else 0)
        layout.append((shift, width))
        shift += width
    return layout


_FLIP_CACHE: dict[tuple[int, int], np.ndarray] = {}


def _flips(width: int, radius: int) -> np.ndarray:
    """Every XOR mask of `width` bits with at most `radius` bits set."""
    key = (width, radius)
    if key not in _FLIP_CACHE:
        masks = [0]
        for r in range(1, min(radius, width) + 1):
            masks.extend(sum(1 << b for b in bits) for bits in combinations(range(width), r))
        _FLIP_CACHE[key] = np.array(masks, dtype=np.uint64)
    return _FLIP_CACHE[key]


def _concat_ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Concatenation of arange(lo[i], hi[i]) for all i, without a Python loop."""
    lengths = hi - lo
    keep = lengths > 0
    lo, lengths = lo[keep], lengths[keep]
    if not len(lo):
        return np.empty(0, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(lo - offsets, lengths) + np.arange(lengths.sum(), dtype=np.int64)


class HammingIndex:
    """String keys (image ids) with 64-bit hashes; `query` returns every key within a Hamming radius.

    `distance_computations` counts full-hash comparisons, the measure of how much of the index a query touched.
    """

    def __init__(self, max_distance: int = 8, chunks: int | None = None) -> None:
        if not 0 <= max_distance < BITS:
            raise ValueError(f"max_distance must be 0..{BITS - 1}")
        self.max_distance = max_distance
        self._fixed_chunks = chunks
        self._values = np.zeros(16, dtype=np.uint64)
        self._alive = np.zeros(16, dtype=bool)
        self._keys: list[str | None] = []
        self._slot: dict[str, int] = {}
        self._layout = _layout(chunks or _chunk_count(0, max_distance))
        self._sorted: list[tuple[np.ndarray, np.ndarray]] = []  # per chunk: (chunk values, slots), slots < _frozen
        self._frozen = 0
        self._fresh: list[dict[int, list[int]]] = [{} for _ in self._layout]
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
        for key, slot in self._slot.items():
            yield key, int(self._values[slot])

    def add(self, key: str, value: int) -> bool:
        """Add or update a key's hash; returns False when it was already there with this hash."""
        if "\n" in key:
            raise ValueError("keys may not contain a newline")
        if not 0 <= value < 1 << BITS:
            raise ValueError(f"not a {BITS}-bit hash: {value}")
        slot = self._slot.get(key)
        if slot is not None:
            if int(self._values[slot]) == value:
                return False
            self._alive[slot] = False  # the old slot stays in the tables until the next rebuild, skipped
        slot = len(self._keys)
        if slot == len(self._values):
            self._values = np.concatenate([self._values, np.zeros(slot, dtype=np.uint64)])
            self._alive = np.concatenate([self._alive, np.zeros(slot, dtype=bool)])
        self._values[slot] = value
        self._alive[slot] = True
        self._keys.append(key)
        self._slot[key] = slot
        for (shift, width), table in zip(self._layout, self._fresh, strict=True):
            table.setdefault((value >> shift) & ((1 << width) - 1), []).append(slot)
        if len(self._keys) - self._frozen > max(64, len(self._keys) // 4):
            self._rebuild()
        return True

    def remove(self, key: str) -> bool:
        slot = self._slot.pop(key, None)
        if slot is None:
            return False
        self._alive[slot] = False
        return True

    # -- search -----------------------------------------------------------------------------------------------

    def query(self, value: int, max_distance: int | None = None) -> list[tuple[str, int]]:
        """Every (key, distance) with distance ≤ max_distance (default: the index's), nearest first."""
        radius = self.max_distance if max_distance is None else max_distance
        slots = self._candidates(value, radius // len(self._layout))
        if not len(slots):
            return []
        slots = slots[self._alive[slots]]
        self.distance_computations += len(slots)
        distances = _popcount64(self._values[slots] ^ np.uint64(value))
        near = distances <= radius
        pairs = zip(slots[near].tolist(), distances[near].tolist(), strict=True)
        found = [(str(self._keys[s]), int(d)) for s, d in pairs]
        return sorted(found, key=lambda kd: (kd[1], kd[0]))

    def _candidates(self, value: int, chunk_radius: int) -> np.ndarray:
        parts = []
        for c, (shift, width) in enumerate(self._layout):
            probes = np.uint64((value >> shift) & ((1 << width) - 1)) ^ _flips(width, chunk_radius)
            if self._frozen:
                values, slots = self._sorted[c]
                lo = np.searchsorted(values, probes, side="left")
                hi = np.searchsorted(values, probes, side="right")
                parts.append(slots[_concat_ranges(lo, hi)])
            fresh = self._fresh[c]
            if fresh:
                hits = [s for p in probes.tolist() for s in fresh.get(p, ())]
                if hits:
                    parts.append(np.array(hits, dtype=np.int64))
        return np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)

    def near_pairs(self, max_distance: int | None = None) -> Iterator[tuple[str, str, int]]:
        """Every unordered pair of keys within the radius, once each (key order decides which comes first)."""
        for key, value in list(self.items()):
            for other, distance in self.query(value, max_distance):
                if other > key:
                    yield key, other, distance

    # -- maintenance ------------------------------------------------------------------------------------------

    def _rebuild(self) -> None:
        """Re-sort everything into the per-chunk arrays, dropping removed slots and re-choosing m."""
        live = [(k, int(self._values[s])) for k, s in self._slot.items()]
        n = len(live)
        self._values = np.zeros(max(16, n * 2), dtype=np.uint64)
        self._alive = np.zeros(len(self._values), dtype=bool)
        self._values[:n] = np.array([v for _, v in live], dtype=np.uint64)
        self._alive[:n] = True
        self._keys = [k for k, _ in live]
        self._slot = {k: i for i, k in enumerate(self._keys)}
        self._layout = _layout(self._fixed_chunks or _chunk_count(n, self.max_distance))
        values = self._values[:n]
        self._sorted = []
        for shift, width in self._layout:
            chunk = (values >> np.uint64(shift)) & np.uint64((1 << width) - 1)
            order = np.argsort(chunk, kind="stable")
            self._sorted.append((chunk[order], order.astype(np.int64)))
        self._frozen = n
        self._fresh = [{} for _ in self._layout]

    @classmethod
    def build(cls, items: Iterable[tuple[str, int]], max_distance: int = 8, chunks: int | None = None) -> HammingIndex:
        """An index of these (key, hash) pairs in one pass (a later duplicate key replaces an earlier one)."""
        index = cls(max_distance, chunks)
        latest: dict[str, int] = {}
        for key, value in items:
            if "\n" in key:
                raise ValueError("keys may not contain a newline")
            if not 0 <= value < 1 << BITS:
                raise ValueError(f"not a {BITS}-bit hash: {value}")
            latest[key] = value
        index._keys = list(latest)
        index._values = np.array(list(latest.values()), dtype=np.uint64)
        index._slot = {k: i for i, k in enumerate(index._keys)}
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
