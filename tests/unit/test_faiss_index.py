"""FAISS specifics: the index type follows the collection's size, tombstones compact, old snapshots load."""

from __future__ import annotations

import hashlib
import io
import json
import threading

import faiss
import numpy as np
import pytest

from taxonstream.index import filters as flt
from taxonstream.index.faiss_engine import FaissIndex, SnapshotFormatError, migration
from taxonstream.index.faiss_engine.locking import RWLock
from taxonstream.index.faiss_engine.snapshot import FORMAT, LEGACY, faiss_id
from taxonstream.index.milvus_backend import expression, literal
from taxonstream.index.types import FaissConfig


def image_id(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def unit(count: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def add(index: FaissIndex, start: int, stop: int, vectors: np.ndarray) -> None:
    ids = [image_id(n) for n in range(start, stop)]
    index.upsert_many(ids, vectors[start:stop], [{"genus": f"G{n % 5}"} for n in range(start, stop)])


def test_the_index_type_follows_the_collection_size_both_ways():
    config = FaissConfig(hnsw_from=300, ivfpq_from=900, compact_min=10**9)
    index, vectors = FaissIndex(config=config), unit(2000)
    add(index, 0, 299, vectors)
    assert index.kind == "flat"
    add(index, 299, 300, vectors)
    assert index.kind == "hnsw"
    add(index, 300, 1000, vectors)
    assert index.kind == "ivfpq"
    for n in (0, 500, 999):  # still finds every vector after each migration, with its metadata
        hit = index.search(vectors[n], 1)[0]
        assert (hit.image_id, hit.metadata) == (image_id(n), {"genus": f"G{n % 5}"})
    hits = index.search(vectors[7], 50, {"genus": ["G2"]})
    assert len(hits) == 50 and all(h.metadata["genus"] == "G2" for h in hits)
    # Down to 500: above half the IVF-PQ threshold (450), so no flip-flop…
    index.delete_many([image_id(n) for n in range(500, 1000)])
    assert (index.kind, len(index)) == ("ivfpq", 500)
    # …below it, back to HNSW; below half the HNSW threshold, back to exact.
    index.delete_many([image_id(n) for n in range(400, 500)])
    assert index.kind == "hnsw"
    index.delete_many([image_id(n) for n in range(140, 400)])
    assert (index.kind, len(index)) == ("flat", 140)
    assert [h.image_id for h in index.search(vectors[3], 1)] == [image_id(3)]


def test_ivfpq_retrains_when_the_collection_has_grown_fourfold():
    index, vectors = FaissIndex(config=FaissConfig(kind="ivfpq")), unit(3000)
    add(index, 0, 300, vectors)
    assert index.kind == "ivfpq"
    lists = index._index.nlist
    add(index, 300, 1300, vectors)  # 1300 > 4 × 300
    assert index._index.nlist > lists
    assert index.search(vectors[1200], 1)[0].image_id == image_id(1200)


def test_tombstones_are_compacted_and_answers_do_not_change():
    index, vectors = FaissIndex(config=FaissConfig(compact_min=50, compact_ratio=0.25)), unit(400)
    add(index, 0, 200, vectors)
    query = unit(1, seed=9)[0]
    for _ in range(3):  # re-deliveries of the same embeddings only ever replace
        add(index, 0, 40, vectors)
    assert len(index) == 200
    assert index._n < 200 + 3 * 40  # compacted at least once on the way
    expected = sorted(range(200), key=lambda n: -float(vectors[n] @ query))[:10]
    assert [h.image_id for h in index.search(query, 10)] == [image_id(n) for n in expected]


def test_a_snapshot_from_before_slots_still_restores():
    """Snapshots the first indexer wrote: an IndexIDMap2 labelled by the image id's first 60 bits."""
    vectors, ids = unit(20), [image_id(n) for n in range(20)]
    old = faiss.IndexIDMap2(faiss.IndexFlatIP(16))
    old.add_with_ids(vectors, np.array([faiss_id(i) for i in ids], dtype=np.int64))
    data = faiss.serialize_index(old).tobytes()
    index = FaissIndex.restore(data, {i: {"n": str(n)} for n, i in enumerate(ids)})
    assert len(index) == 20
    for n in (0, 13):
        assert index.search(vectors[n], 1)[0].metadata == {"n": str(n)}


def test_serialize_keeps_metadata_beside_the_index_and_dump_inside_it():
    index, vectors = FaissIndex(), unit(5)
    add(index, 0, 5, vectors)
    data, metadata = index.serialize()
    assert metadata == {image_id(n): {"genus": f"G{n % 5}"} for n in range(5)}
    assert len(index.dump()) > len(data)
    with pytest.raises(ValueError):
        FaissIndex.restore(data, {image_id(0): {}})  # metadata that does not match its index


def _with_header(blob: bytes, **changes: object) -> bytes:
    """A real dump with its header edited (what a newer or foreign writer would produce)."""
    with np.load(io.BytesIO(blob)) as parts:
        arrays = {name: parts[name] for name in parts.files}
    header = json.loads(arrays["header"].tobytes()) | changes
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def test_a_snapshot_of_an_unknown_format_is_refused_naming_what_was_found_and_what_is_supported():
    index, vectors = FaissIndex(), unit(5)
    add(index, 0, 5, vectors)
    blob = index.dump()
    assert len(FaissIndex.load(blob)) == 5  # the current format reads
    newer = _with_header(blob, format="taxonstream-faiss/2")
    foreign = faiss.serialize_index(faiss.IndexFlatIP(16)).tobytes()  # a FAISS index, but not ours
    for data, found in ((newer, "taxonstream-faiss/2"), (foreign, "unrecognised bytes"), (b"hello", "unrecognised")):
        with pytest.raises(SnapshotFormatError) as refused:
            FaissIndex.load(data)
        assert found in refused.value.found and refused.value.supported == (FORMAT, LEGACY)
        assert found in str(refused.value) and FORMAT in str(refused.value) and LEGACY in str(refused.value)
    buffer = io.BytesIO()
    np.savez(buffer, index=np.zeros(3, np.uint8))  # an archive, but without our header
    with pytest.raises(SnapshotFormatError, match="without a header"):
        FaissIndex.load(buffer.getvalue())


def test_a_legacy_snapshot_without_its_metadata_is_refused_not_read_as_empty():
    vectors, ids = unit(4), [image_id(n) for n in range(4)]
    old = faiss.IndexIDMap2(faiss.IndexFlatIP(16))
    old.add_with_ids(vectors, np.array([faiss_id(i) for i in ids], dtype=np.int64))
    data = faiss.serialize_index(old).tobytes()
    with pytest.raises(SnapshotFormatError) as refused:
        FaissIndex.load(data)  # before: an empty index, without a word
    assert refused.value.found == LEGACY and "metadata" in str(refused.value)
    with pytest.raises(ValueError, match="does not match"):
        FaissIndex.restore(data, {i: {} for i in ids[:3]})  # one image short: not silently dropped
    with pytest.raises(ValueError, match="does not match"):
        FaissIndex.restore(data, {i: {} for i in [*ids[:3], image_id(99)]})  # an id it does not hold
    index = FaissIndex()
    add(index, 0, 4, vectors)
    apart, _metadata = index.serialize()
    with pytest.raises(ValueError, match="no metadata"):
        FaissIndex.load(apart)  # metadata kept apart: load() cannot guess it


def test_filtered_searches_through_the_selector_still_fill_k():
    # 1 in 50 items match, forced through the ANN search: it must still return k matching items.
    for kind in ("hnsw", "ivfpq"):
        config = FaissConfig(kind=kind, exact_below=0, ann_min_share=0)
        index, vectors = FaissIndex(config=config), unit(2000, seed=4)
        ids = [image_id(n) for n in range(2000)]
        index.upsert_many(ids, vectors, [{"genus": "Rare" if n % 50 == 0 else "Common"} for n in range(2000)])
        hits = index.search(vectors[1], 30, {"genus": "Rare"})
        assert len(hits) == 30 and {h.image_id for h in hits} <= {ids[n] for n in range(0, 2000, 50)}


def test_facets_read_darwin_core_and_gbif_columns():
    assert flt.facets(
        {
            "dwc:family": "Nymphalidae",
            "dwc:genus": "Danaus",
            "dwc:specificEpithet": "plexippus",
            "institutionCode": "MCZ",
            "dcterms:license": "CC-BY-4.0",
        }
    ) == {
        "family": "Nymphalidae",
        "genus": "Danaus",
        "species": "Danaus plexippus",
        "provider": "MCZ",
        "licence": "CC-BY-4.0",
    }
    # species and genus from a scientific name with its authorship; whitespace tidied
    assert flt.facets({"scientificName": "Papilio  machaon Linnaeus, 1758", "license": " CC0 "}) == {
        "species": "Papilio machaon",
        "genus": "Papilio",
        "licence": "CC0",
    }
    assert flt.facets({"scientificName": "Lepidoptera"}) == {}


def test_filter_expressions_parse_and_refuse_unknown_fields():
    assert flt.parse(["genus=Danaus", "genus=Papilio", "License=CC0"]) == {
        "genus": frozenset({"Danaus", "Papilio"}),
        "licence": frozenset({"CC0"}),
    }
    assert flt.normalise({"license": ["CC0", "CC-BY"], "licence": "CC0"}) == {"licence": frozenset({"CC0"})}
    for bad in (["colour=red"], ["genus"], ["genus= "]):
        with pytest.raises(ValueError):
            flt.parse(bad)
    assert flt.matches({"genus": "Danaus", "provider": "MCZ"}, {"genus": {"Danaus"}, "provider": {"MCZ", "X"}})
    assert not flt.matches({"genus": "Danaus"}, {"provider": {"MCZ"}})


def test_milvus_expressions_quote_values_safely():
    assert literal('say "hi" \\ bye') == '"say \\"hi\\" \\\\ bye"'
    assert expression({"provider": frozenset({"B", "A"}), "genus": frozenset({'x" or 1==1 or "'})}) == (
        'f_genus in ["x\\" or 1==1 or \\""] and f_provider in ["A", "B"]'
    )


@pytest.mark.parametrize("exact_below", [10**6, 10], ids=["gathered", "scanned"])
def test_sparse_filters_are_answered_exactly_by_either_exact_path(exact_below):
    # A 4% filter is under ann_min_share: scored exactly — gathered when few, by FAISS's flat scan with the
    # bitmap when more than exact_below.
    config = FaissConfig(kind="hnsw", exact_below=exact_below, ann_min_share=0.05)
    index, vectors = FaissIndex(config=config), unit(3000, seed=6)
    ids = [image_id(n) for n in range(3000)]
    index.upsert_many(ids, vectors, [{"genus": "Rare" if n % 25 == 0 else "Common"} for n in range(3000)])
    index.delete(ids[25])
    rare = [n for n in range(0, 3000, 25) if n != 25]
    for query in unit(5, seed=8):
        expected = sorted(rare, key=lambda n: -float(vectors[n] @ query))[:10]
        hits = index.search(query, 10, {"genus": ["Rare"]})
        assert [h.image_id for h in hits] == [ids[n] for n in expected]
        assert np.allclose([h.score for h in hits], [vectors[n] @ query for n in expected], atol=1e-5)


# ---- background rebuilds and concurrency ---------------------------------------------------------


def test_a_migration_runs_in_the_background_and_keeps_what_was_written_meanwhile(monkeypatch):
    monkeypatch.setattr(migration, "BUILD_CHUNK", 100)  # several copy rounds
    monkeypatch.setattr(migration, "SWAP_TAIL", 0)
    config = FaissConfig(hnsw_from=300, ivfpq_from=10**6, background_from=0, compact_min=10**9)
    index, vectors = FaissIndex(config=config), unit(600, seed=2)
    replaced = unit(600, seed=3)
    model = {image_id(n): (vectors[n], {"genus": f"G{n % 5}"}) for n in range(300)}
    copying, go_on = threading.Event(), threading.Event()
    add_to = index._add_to

    def held(*args):  # the builder stops after copying its first chunk, before adding it
        copying.set()
        assert go_on.wait(30)
        add_to(*args)

    monkeypatch.setattr(index, "_add_to", held)
    add(index, 0, 300, vectors)  # crosses hnsw_from: the write returns at once
    assert copying.wait(30)
    assert (index.kind, index.migrating) == ("flat", "hnsw")

    # Meanwhile: searches are answered (by the old, exact index), writes and deletes go on.
    assert [h.image_id for h in index.search(vectors[5], 1)] == [image_id(5)]
    add(index, 300, 400, vectors)  # new images
    ids = [image_id(n) for n in range(0, 20)] + [image_id(n) for n in range(150, 160)]  # copied, not yet copied
    index.upsert_many(ids, replaced[[*range(0, 20), *range(150, 160)]], [{"genus": "Moved"}] * len(ids))
    gone = [image_id(n) for n in [*range(20, 40), *range(350, 360), *range(200, 210)]]
    assert index.delete_many(gone) == len(gone)
    model |= {image_id(n): (vectors[n], {"genus": f"G{n % 5}"}) for n in range(300, 400)}
    model |= {i: (replaced[n], {"genus": "Moved"}) for i, n in zip(ids, [*range(20), *range(150, 160)], strict=True)}
    for key in gone:
        del model[key]
    assert index.search(vectors[25], 300, {"genus": ["G0"]})  # a filtered search too
    during = index.dump()  # a snapshot taken mid-migration holds the old type, consistently

    go_on.set()
    assert index.settle(timeout=60)
    assert (index.kind, index.migrating) == ("hnsw", None)
    after = index.dump()

    def holds_the_model(target: FaissIndex) -> None:
        assert len(target) == len(model)
        for key, (vector, meta) in model.items():
            assert target.get(key) == meta
            assert np.allclose(target.vector(key), vector)
            assert target.search(vector, 1)[0].image_id == key  # each finds itself in the new graph
        for key in gone:
            assert target.get(key) is None and target.vector(key) is None
        genus = target.stats().by_field["genus"]
        assert genus == {g: sum(m["genus"] == g for _, m in model.values()) for g in genus}
        assert sum(genus.values()) == len(model)
        hits = target.search(replaced[0], 100, {"genus": ["Moved"]})
        assert {h.image_id for h in hits} == {i for i, (_, m) in model.items() if m["genus"] == "Moved"}
        found = {h.image_id for h in target.search(vectors[1], len(model))}
        assert found <= set(model) and len(found) >= 0.95 * len(model)

    holds_the_model(index)
    for blob in (during, after):  # both snapshots restore to the same collection
        restored = FaissIndex.load(blob, config)
        assert restored.settle(timeout=60) and restored.kind == "hnsw"  # the interrupted one migrates again
        holds_the_model(restored)
    assert FaissIndex.load(after, config).search(vectors[7], 10) == index.search(vectors[7], 10)


def test_a_failed_background_rebuild_leaves_the_old_index_serving(monkeypatch):
    config = FaissConfig(hnsw_from=100, background_from=0)
    index, vectors = FaissIndex(config=config), unit(200)

    def broken(*_args):
        raise MemoryError("no room for the new index")

    monkeypatch.setattr(index, "_add_to", broken)
    add(index, 0, 150, vectors)
    assert index.settle(timeout=30)
    assert (index.kind, index.migrating, len(index)) == ("flat", None, 150)
    assert index.search(vectors[9], 1)[0].image_id == image_id(9)
    add(index, 150, 200, vectors)  # no retry at every write: it waits out the back-off
    assert index.migrating is None and index.kind == "flat"


@pytest.mark.parametrize(
    "config",
    [
        # Exact, so that the end state can be compared hit for hit; compaction rebuilds run in the
        # background (background_from=0) and swap while searches are in flight.
        FaissConfig(kind="flat", background_from=0, compact_min=64, compact_ratio=0.2),
        # The writes take it past hnsw_from: a background migration runs beside the searches.
        FaissConfig(hnsw_from=520, background_from=0, compact_min=64, compact_ratio=0.2),
    ],
    ids=["flat-compactions", "migration-to-hnsw"],
)
def test_concurrent_searches_and_writes_end_in_the_brute_force_state(config):
    index, vectors, fresh = FaissIndex(config=config), unit(1000, seed=11), unit(1000, seed=12)
    add(index, 0, 500, vectors)
    queries = unit(8, seed=13)
    errors: list[BaseException] = []
    stop = threading.Event()

    def search_loop(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                query = queries[int(rng.integers(len(queries)))]
                filters = {"genus": ["G1", "G3"]} if rng.random() < 0.5 else None
                hits = index.search(query, 10, filters)
                scores = [h.score for h in hits]
                assert len(hits) == 10 and scores == sorted(scores, reverse=True)
                assert filters is None or all(h.metadata["genus"] in ("G1", "G3") for h in hits)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    model = {image_id(n): (vectors[n], {"genus": f"G{n % 5}"}) for n in range(500)}
    searchers = [threading.Thread(target=search_loop, args=(seed,)) for seed in range(4)]
    for thread in searchers:
        thread.start()
    rng = np.random.default_rng(14)
    for step in range(300):
        n = int(rng.integers(1000))
        key = image_id(n)
        if step % 3 == 2 and key in model:
            index.delete(key)
            del model[key]
        else:
            vector, meta = (fresh if key in model else vectors)[n], {"genus": f"G{(n + step) % 5}"}
            index.upsert(key, vector, meta)
            model[key] = (vector, meta)
    stop.set()
    for thread in searchers:
        thread.join()
    assert not errors, errors[0]
    assert index.settle(timeout=60)
    assert index._n < 500 + 300  # compacted on the way
    assert len(index) == len(model) and index.kind == (config.kind or "hnsw")
    for query in queries:
        for filters in (None, {"genus": ["G1", "G3"]}):
            wanted = [k for k, (_, m) in model.items() if filters is None or m["genus"] in filters["genus"]]
            expected = sorted(wanted, key=lambda k: (-float(model[k][0] @ query), k))[:10]
            got = index.search(query, 10, filters)
            assert {h.image_id for h in got} == set(expected)
            assert [h.metadata for h in got] == [model[h.image_id][1] for h in got]


class _WaitSignals(threading.Condition):
    """A condition that reports each thread that goes to sleep on it (its predicate was false)."""

    def __init__(self) -> None:
        super().__init__(threading.Lock())
        self.sleepers: list[str] = []
        self.slept = threading.Condition(threading.Lock())

    def wait(self, timeout: float | None = None) -> bool:
        with self.slept:
            self.sleepers.append(threading.current_thread().name)
            self.slept.notify_all()
        return super().wait(timeout)

    def until_asleep(self, name: str) -> bool:
        with self.slept:
            return self.slept.wait_for(lambda: name in self.sleepers, timeout=5)


def test_readers_share_the_lock_and_a_waiting_writer_holds_new_readers_back():
    lock = RWLock()
    lock._cond = signals = _WaitSignals()
    order: list[str] = []
    first_in, second_in, release = threading.Event(), threading.Event(), threading.Event()

    def reader(entered: threading.Event, name: str) -> None:
        with lock.read():
            order.append(name)
            entered.set()
            release.wait(10)

    def writer() -> None:
        with lock.write():
            order.append("writer")

    a = threading.Thread(target=reader, args=(first_in, "a"), name="a")
    a.start()
    assert first_in.wait(5)
    b = threading.Thread(target=reader, args=(second_in, "b"), name="b")
    b.start()
    assert second_in.wait(5)  # a second search while the first one runs: not serialised
    w = threading.Thread(target=writer, name="writer")
    w.start()
    assert signals.until_asleep("writer")  # the writer waits for the two readers
    late_in = threading.Event()
    c = threading.Thread(target=reader, args=(late_in, "c"), name="c")
    c.start()
    assert signals.until_asleep("c")  # a new reader waits behind the waiting writer…
    assert order == ["a", "b"] and not late_in.is_set()  # …and neither got in
    release.set()
    for thread in (a, b, w, c):
        thread.join(5)
    assert order == ["a", "b", "writer", "c"]


def test_config_refuses_nonsense():
    for bad in (
        {"ef_search": 0},
        {"hnsw_from": 10, "ivfpq_from": 5},
        {"pq_nbits": 17},
        {"ann_min_share": 1.5},
        {"compact_ratio": 0},
        {"nlist": -1},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            FaissConfig(**bad)
