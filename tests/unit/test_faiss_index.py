"""FAISS specifics: the index type follows the collection's size, tombstones compact, old snapshots load."""

from __future__ import annotations

import hashlib

import faiss
import numpy as np
import pytest

from taxonstream.indexer import filters as flt
from taxonstream.indexer.backend import FaissConfig
from taxonstream.indexer.faiss_backend import FaissIndex, faiss_id
from taxonstream.indexer.milvus_backend import expression, literal


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
