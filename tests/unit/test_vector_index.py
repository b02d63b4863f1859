"""The FAISS wrapper: upsert replaces, search ranks by inner product, snapshots restore exactly."""

from __future__ import annotations

import hashlib

import numpy as np

from taxonstream.indexer.index import VectorIndex


def image_id(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def unit_vectors(count: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_every_vector_is_its_own_top_hit():
    index, vectors = VectorIndex(), unit_vectors(50)
    for n, v in enumerate(vectors):
        index.upsert(image_id(n), v, {"n": str(n)})
    for n, v in enumerate(vectors):
        assert index.search(v, 1)[0].image_id == image_id(n)


def test_upsert_of_an_existing_id_replaces_it():
    index, vectors = VectorIndex(), unit_vectors(3)
    index.upsert(image_id(0), vectors[0], {"version": "old"})
    index.upsert(image_id(0), vectors[1], {"version": "new"})
    assert len(index) == 1
    hit = index.search(vectors[1], 5)[0]
    assert (hit.image_id, hit.metadata["version"]) == (image_id(0), "new")
    assert np.allclose(index.vector(image_id(0)), vectors[1])


def test_scores_match_brute_force_inner_products():
    index, vectors = VectorIndex(), unit_vectors(40, seed=3)
    for n, v in enumerate(vectors):
        index.upsert(image_id(n), v, {})
    query = unit_vectors(1, seed=9)[0]
    expected = sorted(((float(v @ query), image_id(n)) for n, v in enumerate(vectors)), reverse=True)[:5]
    got = [(h.score, h.image_id) for h in index.search(query, 5)]
    assert [g[1] for g in got] == [e[1] for e in expected]
    assert np.allclose([g[0] for g in got], [e[0] for e in expected], atol=1e-5)


def test_a_restored_snapshot_answers_exactly_as_before():
    index, vectors = VectorIndex(), unit_vectors(30, seed=5)
    for n, v in enumerate(vectors):
        index.upsert(image_id(n), v, {"n": str(n)})
    restored = VectorIndex.restore(*index.serialize())
    query = unit_vectors(1, seed=11)[0]
    assert index.search(query, 10) == restored.search(query, 10)
    restored.upsert(image_id(0), vectors[1], {"n": "moved"})  # and it keeps working as an index
    assert len(restored) == 30


def test_an_empty_index_answers_nothing():
    assert VectorIndex().search(unit_vectors(1)[0], 3) == []
    assert VectorIndex.restore(*VectorIndex().serialize()).search(unit_vectors(1)[0], 3) == []
