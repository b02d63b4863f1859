"""Snapshot generations without servers: bounded retention, crash safety at every step, the save trigger."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from kafka import TopicPartition

from taxonstream.core.keys import snapshot_generation_of, snapshot_latest_key
from taxonstream.core.topics import Topics
from taxonstream.index.snapshots import SnapshotStore, SnapshotTrigger
from taxonstream.index.versions import VersionKey
from taxonstream.indexer.worker import IndexerSettings, IndexWorker
from taxonstream.integrity.registry import DirectoryStore
from taxonstream.v1.messages_pb2 import Embedding

PREFIX = "index/m/1/faiss/"


class Crash(Exception):
    """Stands in for the process dying at that point."""


class MemoryStore:
    """The object-store calls snapshots make, in a dict; `fail_on` makes one kind of call raise once."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.fail_on: tuple[str, str] | None = None  # (method, regular expression the key matches)

    def _maybe_fail(self, method: str, key: str) -> None:
        if self.fail_on and self.fail_on[0] == method and re.search(self.fail_on[1], key):
            self.fail_on = None
            raise Crash(f"{method} {key}")

    def get(self, key: str) -> bytes:
        return self.objects[key]

    def put(self, key: str, data: bytes) -> None:
        self._maybe_fail("put", key)
        self.objects[key] = bytes(data)

    def get_json(self, key: str) -> Any | None:
        return json.loads(self.objects[key]) if key in self.objects else None

    def put_json(self, key: str, value: Any) -> None:
        self.put(key, json.dumps(value, sort_keys=True).encode())

    def list(self, prefix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))

    def delete(self, keys: list[str]) -> None:
        self._maybe_fail("delete", keys[0] if keys else "")
        for key in keys:
            self.objects.pop(key, None)

    def generations(self) -> set[str]:
        found = (snapshot_generation_of(PREFIX, k) for k in self.objects)
        return {name for name, _ in filter(None, found)}

    def snapshot_bytes(self) -> int:
        return sum(len(v) for k, v in self.objects.items() if snapshot_generation_of(PREFIX, k))


def payload(n: int) -> dict[str, bytes]:
    return {"bin": bytes([n % 256]) * (1000 + n), "tombstones.json": f'["gone-{n}"]'.encode()}


def test_only_the_newest_generations_stay_and_the_newest_loads() -> None:
    store = MemoryStore()
    snapshots = SnapshotStore(store, PREFIX, keep=2)
    names = [snapshots.save(payload(n), {"offsets": {"0": n}}) for n in range(6)]
    assert names == sorted(names) and len(set(names)) == 6
    assert store.generations() == set(names[-2:])
    loaded = snapshots.load()
    assert loaded is not None and loaded.name == names[-1]
    assert loaded.meta["offsets"] == {"0": 5} and loaded.parts == payload(5)


def test_snapshot_bytes_stay_under_two_snapshots_after_many_saves() -> None:
    store = MemoryStore()
    snapshots = SnapshotStore(store, PREFIX, keep=2)
    for n in range(200):  # a growing index, as in the 6,000-image run that left 554 objects behind
        snapshots.save(payload(n), {"offsets": {"0": n}})
    newest = sum(len(v) for v in payload(199).values())
    manifests = 2 * 1024  # two small JSON manifests
    assert store.snapshot_bytes() <= 2 * newest + manifests


def test_a_crash_between_the_new_generation_and_deleting_the_old_loses_nothing() -> None:
    store = MemoryStore()
    snapshots = SnapshotStore(store, PREFIX, keep=1)
    first = snapshots.save(payload(1), {"offsets": {"0": 1}})
    store.fail_on = ("delete", "")
    with pytest.raises(Crash):
        snapshots.save(payload(2), {"offsets": {"0": 2}})
    assert first in store.generations(), "the old one is still there"

    restarted = SnapshotStore(store, PREFIX, keep=1).load()  # a new process
    assert restarted is not None and restarted.meta["offsets"] == {"0": 2} and restarted.parts == payload(2)

    third = SnapshotStore(store, PREFIX, keep=1).save(payload(3), {"offsets": {"0": 3}})
    assert store.generations() == {third}, "the next save cleans up"


@pytest.mark.parametrize("crash_on", [r"tombstones\.json$", r"\d\.json$", r"latest\.json$"])
def test_a_crash_while_writing_leaves_the_previous_generation_in_force(crash_on: str) -> None:
    store = MemoryStore()
    snapshots = SnapshotStore(store, PREFIX, keep=1)
    first = snapshots.save(payload(1), {"offsets": {"0": 1}})
    store.fail_on = ("put", crash_on)
    with pytest.raises(Crash):
        snapshots.save(payload(2), {"offsets": {"0": 2}})

    # Parts without a manifest are ignored; a manifest latest.json does not name yet waits for the pointer.
    loaded = SnapshotStore(store, PREFIX, keep=1).load()
    assert loaded is not None and loaded.name == first and loaded.parts == payload(1)
    assert len(store.generations()) == 2, "the unfinished one is still there until the next save"
    third = SnapshotStore(store, PREFIX, keep=1).save(payload(3), {"offsets": {"0": 3}})
    assert store.generations() == {third}


def test_damaged_parts_fall_back_to_the_newest_generation_that_checks_out() -> None:
    store = MemoryStore()
    snapshots = SnapshotStore(store, PREFIX, keep=2)
    snapshots.save(payload(1), {"offsets": {"0": 1}})
    newest = snapshots.save(payload(2), {"offsets": {"0": 2}})
    damaged = next(k for k in store.objects if k.startswith(f"{PREFIX}snapshots/{newest}.bin"))
    store.objects[damaged] = b"not what was written"
    loaded = snapshots.load()
    assert loaded is not None and loaded.meta["offsets"] == {"0": 1}


def test_forget_starts_empty_and_a_later_save_works() -> None:
    store = MemoryStore()
    snapshots = SnapshotStore(store, PREFIX, keep=2)
    snapshots.save(payload(1), {})
    snapshots.forget()
    assert snapshots.load() is None
    again = snapshots.save(payload(2), {"offsets": {"0": 7}})
    loaded = snapshots.load()
    assert loaded is not None and loaded.name == again


def test_a_pointer_written_before_generations_still_loads() -> None:
    """latest.json as indexers wrote it before manifests: part keys only, no checksums."""
    store = MemoryStore()
    store.put(f"{PREFIX}snapshots/20261201T120000-123456.bin", b"index bytes")
    store.put(f"{PREFIX}snapshots/20261201T120000-123456.tombstones.json", b'["x"]')
    store.put_json(
        snapshot_latest_key(PREFIX),
        {
            "generation": "20261201T120000-123456",
            "index_key": f"{PREFIX}snapshots/20261201T120000-123456.bin",
            "tombstones_key": f"{PREFIX}snapshots/20261201T120000-123456.tombstones.json",
            "offsets": {"0": 42},
        },
    )
    loaded = SnapshotStore(store, PREFIX).load()
    assert loaded is not None and loaded.meta["offsets"] == {"0": 42}
    assert loaded.parts == {"bin": b"index bytes", "tombstones.json": b'["x"]'}


def test_the_trigger_fires_on_enough_changes_or_on_time_with_any_change() -> None:
    now = [0.0]
    trigger = SnapshotTrigger(every_changes=100, every_seconds=60, clock=lambda: now[0])
    now[0] = 600
    assert not trigger.due(), "time alone, with nothing changed, is no reason"
    trigger.note(99)
    trigger.saved()
    trigger.note(99)
    assert not trigger.due()
    trigger.note()
    assert trigger.due(), "the 100th change"
    trigger.saved()
    trigger.note()
    now[0] += 59
    assert not trigger.due()
    now[0] += 1
    assert trigger.due(), "one change, 60 s later"


def test_the_time_trigger_waits_longer_as_the_state_grows_and_changes_still_fire_at_once() -> None:
    now, size = [0.0], [50]
    trigger = SnapshotTrigger(every_changes=100, every_seconds=60, size=lambda: size[0], clock=lambda: now[0])
    trigger.note()
    now[0] = 60
    assert trigger.due(), "up to every_changes items, the wait is every_seconds"
    size[0] = 1000
    trigger.saved()  # the state's size is read at the save: 10x every_changes
    trigger.note()
    now[0] += 599
    assert not trigger.due(), "a save rewrites 1,000 items: one change waits 10 x 60 s"
    now[0] += 1
    assert trigger.due()
    trigger.saved()
    trigger.note(100)
    assert trigger.due(), "every_changes unsaved changes are due at any size (they bound the replay)"


def test_the_wait_counts_from_the_oldest_unsaved_change_so_a_job_after_a_quiet_spell_saves_nothing_at_once() -> None:
    now, size = [0.0], [1000]
    trigger = SnapshotTrigger(every_changes=100, every_seconds=60, size=lambda: size[0], clock=lambda: now[0])
    trigger.saved()  # wait 10 x 60 s at 1,000 items
    now[0] += 3600  # an hour with nothing to save
    trigger.note(5)
    assert not trigger.due(), "the first changes after an hour's quiet are 0 s old, not an hour"
    now[0] += 300
    trigger.note(5)  # later changes do not restart the clock of the oldest
    now[0] += 299
    assert not trigger.due()
    now[0] += 1
    assert trigger.due(), "600 s after the oldest unsaved change"
    trigger.note(3)  # noted while the save ran, not included in it
    trigger.saved(changes_included=10)
    assert trigger.changes == 3 and not trigger.due(), "left-over changes wait from the save's end"
    now[0] += 600
    assert trigger.due()


def test_an_indexer_snapshots_by_changes_keeps_two_generations_and_restores_the_newest(tmp_path) -> None:
    key = VersionKey("clip_a_image", "1")
    settings = IndexerSettings(index_model=key.model, snapshot_changes=10, snapshot_seconds=3600, snapshot_keep=2)
    store = DirectoryStore(tmp_path)
    work = IndexWorker(settings, SimpleNamespace(topics=Topics()), store, key)
    tp = TopicPartition(Topics().embedded, 0)
    rng = np.random.default_rng(7)
    for n in range(95):
        vector = rng.normal(size=16).astype(np.float32)
        work.handle(
            Embedding(
                image_id=f"i{n}",
                vector=(vector / np.linalg.norm(vector)).tolist(),
                model=key.model,
                model_version=key.version,
                backfill=True,
            )
        )
        work.durable({tp: n + 1})  # the worker calls this once outputs are durable
    prefix = f"index/{key.model}/{key.version}/faiss/snapshots/"
    generations = {k.rsplit("/", 1)[-1].split(".")[0] for k in store.list(prefix)}
    assert len(generations) == 2, "9 saves (every 10 changes), 2 kept"
    restored = IndexWorker(settings, SimpleNamespace(topics=Topics()), store, key)
    assert restored.offsets == {tp: 90} and len(restored.index) == 90, "the newest: after the 90th change"
