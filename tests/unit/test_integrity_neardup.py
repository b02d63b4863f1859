"""The multi-index Hamming index: same answers as a scan, far fewer distance computations, durable form."""

from __future__ import annotations

import random

import pytest

from taxonstream.integrity.neardup import HammingIndex


def _flip(value: int, bits: list[int]) -> int:
    for bit in bits:
        value ^= 1 << bit
    return value


def _scan(items: dict[str, int], query: int, radius: int) -> list[tuple[str, int]]:
    found = [(k, (v ^ query).bit_count()) for k, v in items.items() if (v ^ query).bit_count() <= radius]
    return sorted(found, key=lambda kd: (kd[1], kd[0]))


def _clustered(rng: random.Random, n: int) -> dict[str, int]:
    """Hashes in tight families (like pHashes of copies and of similar specimen sheets), plus loners."""
    items = {}
    centres = [rng.getrandbits(64) for _ in range(n // 20)]
    for i in range(n):
        if i % 2:
            items[f"k{i}"] = rng.getrandbits(64)
        else:
            items[f"k{i}"] = _flip(rng.choice(centres), rng.sample(range(64), rng.randint(0, 12)))
    return items


@pytest.mark.parametrize("radius", [0, 3, 8, 12])
def test_queries_equal_a_full_scan(radius: int) -> None:
    rng = random.Random(radius)
    items = _clustered(rng, 3000)
    index = HammingIndex(max_distance=8)
    for key, value in items.items():  # one at a time: exercises the fresh tables and the rebuilds between
        index.add(key, value)
    values = list(items.values())
    for _ in range(150):
        query = _flip(rng.choice(values), rng.sample(range(64), rng.randint(0, 14)))
        assert index.query(query, radius) == _scan(items, query, radius)


def test_add_update_and_remove() -> None:
    index = HammingIndex(max_distance=4)
    assert index.add("a", 0b1111) and not index.add("a", 0b1111)
    index.add("b", 0b1110)
    assert index.query(0b1111) == [("a", 0), ("b", 1)]
    assert index.add("a", (1 << 64) - 1)  # moved far away
    assert index.query(0b1111) == [("b", 1)] and index.get("a") == (1 << 64) - 1 and len(index) == 2
    assert index.remove("b") and not index.remove("b")
    assert index.query(0b1111) == [] and "b" not in index and len(index) == 1
    with pytest.raises(ValueError):
        index.add("c", 1 << 64)
    with pytest.raises(ValueError):
        index.add("line\nbreak", 1)


def test_snapshot_round_trip_answers_the_same() -> None:
    rng = random.Random(5)
    items = _clustered(rng, 2000)
    index = HammingIndex(max_distance=10)
    for key, value in items.items():
        index.add(key, value)
    index.remove("k1")
    del items["k1"]
    data = index.to_bytes()
    restored = HammingIndex.from_bytes(data)
    assert restored.max_distance == 10 and len(restored) == len(items) and dict(restored.items()) == items
    assert restored.to_bytes() == data  # stable: same contents, same bytes
    for value in list(items.values())[:100]:
        assert restored.query(value) == index.query(value)
    assert HammingIndex.from_bytes(HammingIndex().to_bytes()).query(0) == []


def test_a_damaged_snapshot_is_refused() -> None:
    index = HammingIndex.build([("a", 1), ("b", 2)])
    data = index.to_bytes()
    with pytest.raises(ValueError):
        HammingIndex.from_bytes(b"garbage" + data)
    with pytest.raises(ValueError):
        HammingIndex.from_bytes(data[:-1] + b"\nextra")


def test_build_from_records_keeps_the_last_hash_of_a_key() -> None:
    index = HammingIndex.build([("a", 1), ("b", 2), ("a", 3)], max_distance=2)
    assert dict(index.items()) == {"a": 3, "b": 2}
    assert index.query(3) == [("a", 0), ("b", 1)]


def test_distance_computations_grow_far_slower_than_the_collection() -> None:
    """Sub-linear by count, not by clock: per-query full-hash comparisons at 2k, 16k and 128k hashes."""
    rng = random.Random(11)
    per_query = {}
    values: list[int] = []
    index = HammingIndex(max_distance=8)
    for n in (2_000, 16_000, 128_000):
        while len(values) < n:
            values.append(rng.getrandbits(64))
            index.add(f"k{len(values)}", values[-1])
        queries = [_flip(rng.choice(values), rng.sample(range(64), rng.randint(0, 8))) for _ in range(200)]
        index.distance_computations = 0
        for query in queries:
            assert index.query(query)  # each query is within 8 bits of a stored hash: never empty
        per_query[n] = index.distance_computations / len(queries)
    print("distance computations per query by collection size:", per_query)
    # A scan makes n comparisons per query; the index a tiny and slowly growing fraction of that.
    assert per_query[128_000] < 0.002 * 128_000, per_query
    assert per_query[128_000] / per_query[2_000] < (128_000 / 2_000) / 4, per_query


def test_near_pairs_lists_each_close_pair_once() -> None:
    index = HammingIndex.build([("a", 0), ("b", 0b11), ("c", 0b111111111111), ("d", 0b1)], max_distance=2)
    assert sorted(index.near_pairs()) == [("a", "b", 2), ("a", "d", 1), ("b", "d", 1)]


def test_near_pairs_join_transitively_into_components():
    from taxonstream.integrity.neardup import connected

    groups = connected([("a", "b", 3), ("x", "y", 1), ("b", "c", 5)])
    assert sorted(sorted(g) for g in groups) == [[("a", "b", 3), ("b", "c", 5)], [("x", "y", 1)]]
    assert connected([]) == []


def test_near_pairs_across_query_batches_and_removals_equal_a_full_scan(monkeypatch) -> None:
    from taxonstream.integrity import neardup

    monkeypatch.setattr(neardup, "_BATCH", 64)  # several FAISS calls, each of over 1 query
    rng = random.Random(3)
    items = _clustered(rng, 600)
    index = HammingIndex.build(items.items(), max_distance=6)
    for key in list(items)[::7]:  # tombstones in FAISS's tables until a rebuild drops them
        assert index.remove(key)
        del items[key]
    keys = sorted(items)
    expected = {
        (a, b, (items[a] ^ items[b]).bit_count())
        for i, a in enumerate(keys)
        for b in keys[i + 1 :]
        if (items[a] ^ items[b]).bit_count() <= 6
    }
    found = list(index.near_pairs())
    assert expected and len(found) == len(set(found)) and set(found) == expected
