"""Index versions without servers: what one version's worker does with each kind of embedding, and the
registry every replica shares (a directory stands in for S3's get/put)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
from kafka import TopicPartition

from taxonstream.core.topics import Topics
from taxonstream.index.versions import Registry, VersionKey, Versions
from taxonstream.indexer.worker import IndexerSettings, IndexWorker
from taxonstream.integrity.registry import DirectoryStore
from taxonstream.v1.messages_pb2 import Crop, Embedding, FetchedImage, Outcome, Record, ReembedImage, VerifiedImage

OLD = VersionKey("clip_a_image", "1")
NEW = VersionKey("clip_b_image", "1")
TOPIC = Topics().embedded


@pytest.fixture
def store(tmp_path):
    return DirectoryStore(tmp_path)


def make_worker(store, key: VersionKey, start: dict[TopicPartition, int] | None = None) -> IndexWorker:
    settings = IndexerSettings(index_model=OLD.model, index_model_version=OLD.version)
    return IndexWorker(settings, SimpleNamespace(topics=Topics()), store, key, start)


def vector(seed: int) -> list[float]:
    v = np.random.default_rng(seed).normal(size=16).astype(np.float32)
    return (v / np.linalg.norm(v)).tolist()


def fresh(image_id: str, key: VersionKey, seed: int, row: int = 0) -> Embedding:
    record = Record(
        record_id=f"job:{row}", job_id="job", row=row, url=f"http://x/{image_id}.jpg", metadata={"genus": "Danaus"}
    )
    crop = Crop(
        image_id=image_id,
        crop_key=f"derivatives/{image_id}/crop.jpg",
        image=VerifiedImage(image_id=image_id, fetched=FetchedImage(record=record, sha256=image_id)),
    )
    return Embedding(image_id=image_id, vector=vector(seed), model=key.model, model_version=key.version, crop=crop)


def backfill(image_id: str, key: VersionKey, seed: int) -> Embedding:
    return Embedding(
        image_id=image_id,
        vector=vector(seed),
        model=key.model,
        model_version=key.version,
        lineage={"genus": "Danaus", "crop_key": f"derivatives/{image_id}/crop.jpg"},
        backfill=True,
    )


def test_own_fresh_embedding_is_indexed_with_an_outcome(store):
    work = make_worker(store, OLD)
    emits = work.handle(fresh("a", OLD, 1))
    assert np.allclose(work.index.vector("a"), vector(1))
    assert [e.message.state for e in emits] == [Outcome.INDEXED]


def test_another_models_fresh_embedding_asks_for_this_versions_model(store):
    work = make_worker(store, NEW)
    (emit,) = work.handle(fresh("a", OLD, 1))
    assert emit.topic == Topics().reembed and emit.key == "a"
    request = emit.message
    assert isinstance(request, ReembedImage)
    assert (request.model, request.model_version) == (NEW.model, NEW.version)
    assert request.crop_key == "derivatives/a/crop.jpg"
    assert request.lineage["genus"] == "Danaus" and request.lineage["record_id"] == "job:0"
    assert work.index.vector("a") is None


def test_no_request_for_an_image_the_version_already_holds_or_for_a_backfill(store):
    work = make_worker(store, NEW)
    work.handle(backfill("a", NEW, 2))
    assert work.handle(fresh("a", OLD, 1)) == []
    assert work.handle(backfill("b", OLD, 3)) == []  # another version's backfill: not ours to follow


def test_backfill_is_indexed_with_its_lineage_and_no_outcome(store):
    work = make_worker(store, NEW)
    assert work.handle(backfill("a", NEW, 2)) == []
    assert np.allclose(work.index.vector("a"), vector(2))
    assert dict(work.index.images(None))["a"]["genus"] == "Danaus"


def test_a_backfill_after_a_delete_does_not_bring_the_image_back(store):
    work = make_worker(store, NEW)
    work.handle(backfill("a", NEW, 2))
    work.handle(Embedding(image_id="a", deleted=True))
    work.handle(backfill("a", NEW, 2))
    assert work.index.vector("a") is None
    # A fresh ingest of the same image is a new decision by a person: it comes back.
    work.handle(fresh("a", NEW, 2))
    assert work.index.vector("a") is not None


def test_tombstones_survive_snapshot_and_restore(store):
    work = make_worker(store, NEW)
    work.handle(backfill("a", NEW, 2))
    work.handle(backfill("b", NEW, 3))
    work.handle(Embedding(image_id="a", deleted=True))
    work.durable({TopicPartition(TOPIC, 0): 7})
    work.snapshot()
    restored = make_worker(store, NEW)
    assert restored.offsets == {TopicPartition(TOPIC, 0): 7}
    assert restored.tombstones == {"a"}
    restored.handle(backfill("a", NEW, 2))
    assert restored.index.vector("a") is None and restored.index.vector("b") is not None


def test_versions_keep_separate_snapshots(store):
    old, new = make_worker(store, OLD), make_worker(store, NEW)
    old.handle(fresh("a", OLD, 1))
    new.handle(backfill("b", NEW, 2))
    old.snapshot()
    new.snapshot()
    assert [i for i, _ in make_worker(store, OLD).index.images(None)] == ["a"]
    assert [i for i, _ in make_worker(store, NEW).index.images(None)] == ["b"]


def test_a_new_version_starts_from_its_start_offsets_until_it_has_a_snapshot(store):
    start = {TopicPartition(TOPIC, 0): 40, TopicPartition(TOPIC, 1): 12}
    work = make_worker(store, NEW, start)
    assert work.offsets == start
    assert work.caught_up({TopicPartition(TOPIC, 0): 40}) and not work.caught_up({TopicPartition(TOPIC, 1): 13})


def versions_over(store, made: list[VersionKey]) -> Versions[VersionKey]:
    def make(key: VersionKey, offsets: dict[TopicPartition, int]) -> VersionKey:
        made.append(key)
        return key

    return Versions(Registry(store, "faiss", OLD), TOPIC, make=make, loop=lambda _: lambda stop: stop.wait())


def test_registry_adds_serves_and_retires_across_replicas(store):
    made: list[VersionKey] = []
    first = versions_over(store, made)
    assert made == [OLD] and first.serving == OLD
    _, created = first.add(NEW, lambda: {TopicPartition(TOPIC, 0): 5})
    _, again = first.add(NEW, lambda: pytest.fail("an existing version is not registered twice"))
    assert created and not again

    other_made: list[VersionKey] = []
    second = versions_over(store, other_made)  # another replica, or a restart
    assert sorted(other_made) == [OLD, NEW]
    assert Registry(store, "faiss", OLD).read()[1][NEW] == {0: 5}

    assert first.serve(NEW) == OLD
    second.refresh()
    assert second.serving == NEW and second.get() == NEW
    with pytest.raises(ValueError):
        first.retire(NEW)  # the serving one
    first.serve(OLD)
    assert first.retire(NEW) == NEW
    second.refresh()
    assert second.get(NEW) is None and [k for k, _ in second.items()] == [OLD]
    with pytest.raises(KeyError):
        first.serve(NEW)


def test_run_starts_every_version_and_stops_them(store):
    started: list[VersionKey] = []
    lock = threading.Lock()

    def loop(key: VersionKey):
        def run(stop: threading.Event) -> None:
            with lock:
                started.append(key)
            stop.wait()

        return run

    versions = Versions(Registry(store, "faiss", OLD), TOPIC, make=lambda key, _: key, loop=loop)
    stop = threading.Event()
    runner = threading.Thread(target=versions.run, args=(stop,))
    runner.start()
    versions.add(NEW, dict)
    stop.set()
    runner.join(timeout=10)
    assert not runner.is_alive()
    assert sorted(started) == [OLD, NEW]


@pytest.mark.parametrize(("text", "key"), [("m_image", VersionKey("m_image", "1")), ("m/3", VersionKey("m", "3"))])
def test_version_keys_parse(text, key):
    assert VersionKey.parse(text) == key


@pytest.mark.parametrize("text", ["", "/2", "a/b/c"])
def test_bad_version_keys_are_refused(text):
    with pytest.raises(ValueError):
        VersionKey.parse(text)
