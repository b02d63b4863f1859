"""Snapshots in S3, bounded: generations of some state under one prefix, the newest few kept.

Layout under a prefix (see core/keys.py):

  <prefix>latest.json                      pointer: the newest complete generation's manifest, copied
  <prefix>snapshots/<generation>.<part>    one generation's objects (e.g. ".bin", ".tombstones.json")
  <prefix>snapshots/<generation>.json      its manifest: each part's key, size and sha256, plus caller metadata

A save writes the parts, then the manifest, then latest.json; only then are older generations deleted, so a
crash at any point leaves a complete generation that load() finds: latest.json's if its parts check out,
else the newest manifest whose parts do (a short listing of this prefix: at most `keep` generations plus
leftovers, never the collection). Parts of a write that never got its manifest are ignored and deleted by
the next save that finishes. At most `keep` complete generations (plus one being written) stay in the store.

The indexer saves when enough changed (`SnapshotTrigger`: a count of upserts/deletes, or some time with any
change); before this, every idle moment wrote a whole new index and none was ever deleted (554 objects,
1.99 GB after 6,000 images).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kafka import TopicPartition

from taxonstream.core.keys import (
    index_snapshot_prefix,
    snapshot_generation_of,
    snapshot_generations_prefix,
    snapshot_latest_key,
    snapshot_part_key,
)
from taxonstream.core.objects import Store  # what snapshots need of a store: ObjectStore, DirectoryStore

if TYPE_CHECKING:  # the engines (FAISS, Milvus) load only where an index is restored, not in the checksummer
    from taxonstream.index.backend import IndexBackend, IndexConfig

log = logging.getLogger(__name__)
MANIFEST = "json"  # the manifest's part name: "<generation>.json"


@dataclass(frozen=True)
class Generation:
    name: str
    meta: dict[str, Any]  # what the caller saved with it (e.g. the offsets it includes)
    parts: dict[str, bytes]


class SnapshotStore:
    """Generations of one piece of state under `prefix`, the newest `keep` kept."""

    def __init__(self, store: Store, prefix: str, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"snapshots to keep must be at least 1, not {keep}")
        self.store = store
        self.prefix = prefix
        self.keep = keep
        self._last_name = ""

    def new_name(self) -> str:
        # UTC time to the nanosecond: names sort in the order they were taken, across replicas too.
        now = time.time_ns()
        name = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 1_000_000_000)) + f"-{now % 1_000_000_000:09d}"
        if name <= self._last_name:  # a coarse clock: still strictly after this store's previous one
            stamp, _, fraction = self._last_name.partition("-")
            name = f"{stamp}-{int(fraction) + 1:09d}"
        self._last_name = name
        return name

    def save(self, parts: Mapping[str, bytes], meta: Mapping[str, Any], name: str | None = None) -> str:
        """Write one generation (named by `new_name()` unless given) and point latest.json at it, then delete
        what retention no longer keeps."""
        if MANIFEST in parts:
            raise ValueError(f"part name {MANIFEST!r} is the manifest's")
        name = name or self.new_name()
        manifest: dict[str, Any] = {**meta, "generation": name, "parts": {}}
        for part, data in parts.items():
            key = snapshot_part_key(self.prefix, name, part)
            self.store.put(key, data)
            manifest["parts"][part] = {"key": key, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        self.store.put_json(snapshot_part_key(self.prefix, name, MANIFEST), manifest)
        self.store.put_json(snapshot_latest_key(self.prefix), manifest)  # durable from here on
        self.cleanup(name)
        return name

    def load(self) -> Generation | None:
        """The newest complete generation: latest.json's, else the newest manifest whose parts check out."""
        latest = self.store.get_json(snapshot_latest_key(self.prefix))
        if latest is not None and not latest.get("generation"):
            return None  # forgotten (or never saved): start empty
        if latest is not None:
            found = self._read(latest)
            if found is not None:
                return found
            log.warning("latest snapshot unreadable; trying older ones", extra={"prefix": self.prefix})
        for name in sorted(self._manifests(), reverse=True):
            manifest = self.store.get_json(snapshot_part_key(self.prefix, name, MANIFEST))
            found = self._read(manifest) if manifest else None
            if found is not None:
                return found
        return None

    def forget(self) -> None:
        """Start empty next time; the generations go at the next save, or stay harmless until then."""
        self.store.put_json(snapshot_latest_key(self.prefix), {})

    def cleanup(self, latest: str) -> None:
        """Delete every generation older than `latest` except the newest `keep - 1` complete ones before it.

        Generations newer than `latest` are left alone: another replica may be writing one right now.
        """
        keys_of: dict[str, list[str]] = {}
        complete: set[str] = set()
        for key in self.store.list(snapshot_generations_prefix(self.prefix)):
            parsed = snapshot_generation_of(self.prefix, key)
            if parsed is None:
                continue
            name, part = parsed
            keys_of.setdefault(name, []).append(key)
            if part == MANIFEST:
                complete.add(name)
        older_complete = sorted((n for n in complete if n < latest), reverse=True)
        kept = {latest, *older_complete[: self.keep - 1]}
        doomed = [key for name, keys in keys_of.items() if name < latest and name not in kept for key in keys]
        if doomed:
            self.store.delete(doomed)

    def _manifests(self) -> list[str]:
        found = (
            snapshot_generation_of(self.prefix, k) for k in self.store.list(snapshot_generations_prefix(self.prefix))
        )
        return [name for name, part in filter(None, found) if part == MANIFEST]

    def _read(self, manifest: Mapping[str, Any]) -> Generation | None:
        """The generation a manifest describes, None when a part is missing or not the bytes written."""
        name = str(manifest.get("generation", ""))
        parts: dict[str, bytes] = {}
        for part, about in _parts_of(manifest).items():
            try:
                data = self.store.get(about["key"])
            except KeyError:
                return None
            if "sha256" in about and hashlib.sha256(data).hexdigest() != about["sha256"]:
                return None
            parts[part] = data
        meta = {k: v for k, v in manifest.items() if k not in {"generation", "parts"}}
        return Generation(name, meta, parts) if name and parts else None


def _parts_of(manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A manifest's parts; latest.json as the indexer wrote it before manifests names them by key only."""
    if "parts" in manifest:
        return dict(manifest["parts"])
    legacy = {"bin": manifest.get("index_key"), "tombstones.json": manifest.get("tombstones_key")}
    return {part: {"key": key} for part, key in legacy.items() if key}


class SnapshotTrigger:
    """When to save: `every_changes` changes since the last save, or, with any change, after a wait that
    grows with the state: `every_seconds` times `size() / every_changes` (at least once `every_seconds`),
    counted from the oldest unsaved change — not from the last save, or the first batch of a job that comes
    after a quiet spell pays a whole-state save at once: a 300-photo e2e job on a 93,000-image index paid a
    283 MB index generation (10.2 ms of indexer CPU per record) and went from 1.08x the script to 0.92x.

    Every save rewrites the whole state, so a fixed period wrote O(N) bytes each period: the indexer's 10 s at
    55,000 images was a ~190 MB generation every ~17 s (12 MB/s into S3, most of it waiting for the gateway's
    garbage collection), and the 100k soak slowed from 34.7 to 26.6 records/s by then. Scaled, time-triggered
    saves write about as many bytes a second at any size as at `every_changes` items; replay after a crash
    stays bounded by `every_changes` either way (a save is due once that many changes are unsaved).
    """

    def __init__(
        self,
        every_changes: int,
        every_seconds: float,
        size: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every_changes = every_changes
        self.every_seconds = every_seconds
        self.size = size  # asked once per save (a Milvus count is a round trip), not on every `due`
        self.clock = clock
        self.changes = 0
        self._oldest_unsaved = clock()  # when the first change since the last save arrived
        self._size = size()

    def wait_seconds(self) -> float:
        """How long changes fewer than `every_changes` wait for a save, at the size of the last one."""
        return self.every_seconds * max(1.0, self._size / self.every_changes)

    def note(self, changes: int = 1) -> None:
        if self.changes == 0 and changes > 0:
            self._oldest_unsaved = self.clock()
        self.changes += changes

    def due(self) -> bool:
        if self.changes >= self.every_changes:
            return True
        return self.changes > 0 and self.clock() - self._oldest_unsaved >= self.wait_seconds()

    def saved(self, changes_included: int | None = None) -> None:
        """A save finished that included `changes_included` of the noted changes (all, when None); changes
        left over (noted while it ran) count their wait from now."""
        self.changes = 0 if changes_included is None else max(0, self.changes - changes_included)
        self._oldest_unsaved = self.clock()
        self._size = self.size()


def version_config(config: IndexConfig, model: str, version: str, default: tuple[str, str]) -> IndexConfig:
    """An index version's backend configuration: each version is its own Milvus collection (the configured
    name stays the default version's)."""
    if (model, version) == default:
        return config
    suffix = re.sub(r"[^0-9A-Za-z_]", "_", f"{model}_v{version}")
    milvus = dataclasses.replace(config.milvus, collection=f"{config.milvus.collection}_{suffix}")
    return dataclasses.replace(config, milvus=milvus)


class Snapshots:
    """One index version's index, the offsets it includes and its tombstones: restore + replay rebuilds it."""

    def __init__(self, store: Store, config: IndexConfig, model: str, version: str, keep: int = 2) -> None:
        self.config = config
        self.prefix = index_snapshot_prefix(model, version, config.backend)
        self.generations = SnapshotStore(store, self.prefix, keep)

    def load(self, topic: str) -> tuple[IndexBackend, dict[TopicPartition, int], set[str]]:
        from taxonstream.index.backend import open_index, restore_index

        found = self.generations.load()
        if found is None or "bin" not in found.parts:
            return open_index(self.config), {}, set()  # nothing durable yet: replay from the start offsets
        index = restore_index(self.config, found.parts["bin"])
        offsets = {TopicPartition(topic, int(p)): int(o) for p, o in found.meta.get("offsets", {}).items()}
        raw = found.parts.get("tombstones.json")
        tombstones = set(json.loads(raw)) if raw else set()
        log.info(
            "restored snapshot",
            extra={"prefix": self.prefix, "generation": found.name, "images": len(index), "offsets": offsets},
        )
        return index, offsets, tombstones

    def forget(self) -> None:
        """A retired version: adding it again starts it empty."""
        self.generations.forget()

    def save(self, index: IndexBackend, offsets: dict[TopicPartition, int], tombstones: set[str]) -> str | None:
        data = index.dump()
        if not data:
            return None
        parts = {"bin": data}
        if tombstones:
            parts["tombstones.json"] = json.dumps(sorted(tombstones)).encode()
        name = self.generations.new_name()
        meta = {  # the two keys are what indexers before generations read from latest.json
            "offsets": {str(tp.partition): o for tp, o in offsets.items()},
            "index_key": snapshot_part_key(self.prefix, name, "bin"),
        }
        if tombstones:
            meta["tombstones_key"] = snapshot_part_key(self.prefix, name, "tombstones.json")
        return self.generations.save(parts, meta, name)
