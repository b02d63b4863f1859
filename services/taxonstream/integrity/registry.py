"""The duplicate registry: which bytes became which image, every source of each, and near duplicates.

Durable state is a key/value object store (the S3 `ObjectStore` in the service; `DirectoryStore` here for
tests and single-machine use), in the key layout the checksummer already writes:

  registry/sha256/<ab>/<sha256>.json        first claim of these bytes: {"image_id", "record_id", "phash",
                                            "source" (the first record's provenance, for a new image), and for a
                                            near duplicate dropped by policy: "near_of", "distance"}
  provenance/<image_id>/<record_id>.json    one per later source record (URL, job, licence, metadata), so the
                                            same bytes from two providers are one image with two sources
  registry/snapshot/latest.json, snapshots/  the pHash index and aliases as of some moment, with the offsets
                                            of `verified` they include (`index/snapshots.py` generations)

Exact duplicates: the first record to bring some bytes creates the image (its id is the sha256); later
records with the same bytes add a provenance entry and end as DUPLICATE of it. Near duplicates (pHash within
`max_distance` bits of an image already registered, the `near_max` nearest) follow the policy: "keep" (a
separate image, reported), "link" (a separate image, reported; its manifest rows also list near images
registered after it, from the in-memory index) or "drop" (the record ends as DUPLICATE of the nearest image;
its bytes map to that image from then on, and its pHash is not matched against later arrivals, so chains of
small changes cannot drift an image far from what it was dropped for).

The in-memory pHash index is restored on start from the newest snapshot generation, then the `verified`
topic is replayed from the offsets that snapshot includes (`observe(..., at=(partition, offset))`): every
new image is on that topic, so restart time follows what changed since the snapshot, not the collection
(listing and reading every `registry/sha256/` entry took ~265 s at 6,000 images). The per-sha256 entries
stay the durable claim record (exact duplicates and redeliveries are answered from them) and are read at
start only when no snapshot generation exists: `rebuild_from_entries()`, once, on a store written before
generations. Calls for one sha256 must not race (messages are keyed by sha256).

"Seen before?" is answered in memory: every registered sha256 is in the pHash index, the aliases or
`unhashed` (images without a pHash), so a claim reads its entry only for bytes memory knows (an exact
duplicate or a redelivery, ~5% of records), not for new bytes (one S3 GET a record less). That needs the
restored state `complete`: a snapshot from before `unhashed` was kept is completed once by listing the
entries' keys (`learn_registered_from_listing`, 1 LIST per 1,000 images, no GETs); a registry that is
neither restored nor rebuilt reads every entry, as before. One window is left: right after a rebalance
moves a `fetched` partition, a copy of bytes the previous owner claimed moments before may arrive before
this replica has read that claim's `verified` message; it is then registered again under the same image id
(idempotent downstream, but reported as a new image rather than DUPLICATE).

Not on the topic: a near duplicate dropped under policy "drop" (it ends as DUPLICATE, no `verified`
message), so another replica's drops since the last snapshot are not replayed. Claims never need them
(dropped copies are never near matches, and their bytes are found by their entry: under policy "drop" a
claim with a near match reads its entry even when memory does not know its bytes); only the job report's
near groups list them, from the rows of the job itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from taxonstream.core.keys import (
    REGISTRY_ENTRIES_PREFIX,
    REGISTRY_LEGACY_INDEX,
    REGISTRY_LEGACY_META,
    REGISTRY_SNAPSHOT_PREFIX,
    provenance_key,
    provenance_prefix,
    registry_key,
)
from taxonstream.core.objects import JsonObjects, Store  # Store: what the registry needs (ObjectStore has it)
from taxonstream.index.snapshots import SnapshotStore, SnapshotTrigger
from taxonstream.integrity.neardup import HammingIndex
from taxonstream.integrity.phash import from_hex, to_hex

Policy = Literal["keep", "link", "drop"]
POLICIES: tuple[Policy, ...] = ("keep", "link", "drop")


class DirectoryStore(JsonObjects):
    """A Store in a local folder: objects are files, written atomically (get_json/put_json: JsonObjects)."""

    json_content_type = None  # put(key, data): files have no content type (test subclasses override put so)

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"key {key!r} leaves the store")
        return path

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)

    def list(self, prefix: str) -> list[str]:
        base = self.root.resolve()
        start = base / prefix.rsplit("/", 1)[0] if "/" in prefix else base
        if not start.exists():
            return []
        keys = (p.relative_to(base).as_posix() for p in start.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and not k.rsplit("/", 1)[-1].startswith(".partial-"))

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)


@dataclass(frozen=True)
class Claim:
    """What registering one record's bytes decided."""

    image_id: str  # the image these bytes belong to from now on
    duplicate_of: str | None  # set when the record ends as DUPLICATE (exact, or near under "drop")
    near: list[tuple[str, int]] = field(default_factory=list)  # other images within the radius, nearest first
    exact: bool = False  # duplicate_of is an exact (same bytes) duplicate

    @property
    def new_image(self) -> bool:
        return self.duplicate_of is None


class DuplicateRegistry:
    def __init__(
        self,
        store: Store,
        max_distance: int = 8,
        policy: Policy = "link",
        *,
        near_max: int = 8,
        snapshot_keep: int = 2,
        snapshot_changes: int = 10_000,
        snapshot_seconds: float = 60.0,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"near-duplicate policy must be one of {POLICIES}, not {policy!r}")
        self.store = store
        self.max_distance = max_distance
        self.policy = policy
        # A new image is reported near at most this many registered images, nearest first: how many lie within
        # the radius grows with the collection where pictures look alike at pHash's 32x32 (herbarium sheets on
        # one template; the e2e bench's shapes: 0.22 a picture at 3,000, ~7 at 100,000). The nearest matter.
        self.near_max = near_max
        # Keys are the sha256 of every registered content with a pHash; `aliases` maps those dropped as near
        # duplicates to their image, and they are never returned as near matches.
        self.index = HammingIndex(max_distance)
        self.aliases: dict[str, str] = {}
        # Registered contents not in the pHash index: no pHash (featureless, undecodable), or learnt from a listing.
        self.unhashed: set[str] = set()
        # Whether index + aliases + unhashed hold every registered sha256, so an unknown one is new bytes.
        self.complete = False
        # Next offset of each `verified` partition that the state includes: where a replay starts.
        self.offsets: dict[int, int] = {}
        self.snapshots = SnapshotStore(store, REGISTRY_SNAPSHOT_PREFIX, snapshot_keep)
        self.restored = self._restore()  # False: no snapshot generation (a new store, or one from before them)
        self.rebuilt_from_entries = 0  # how many entries `rebuild_from_entries` fetched one by one
        self.trigger = SnapshotTrigger(snapshot_changes, snapshot_seconds, size=self.size)

    # -- claims -----------------------------------------------------------------------------------------------

    def claim(self, sha256: str, phash: int | None, source: Mapping[str, Any]) -> Claim:
        """Register one record's bytes; `source` must carry "record_id" (plus url, job_id, licence, metadata…)."""
        record_id = str(source["record_id"])
        entry = self.store.get_json(registry_key(sha256)) if self.may_be_registered(sha256, phash) else None
        if entry is not None:
            image_id = entry["image_id"]
            if entry["record_id"] != record_id or "source" not in entry:  # a first source is in its entry
                self._add_provenance(image_id, source)
            if entry["record_id"] == record_id:  # the same record again (redelivery): replay its first answer
                near_of = entry.get("near_of")
                near = [] if near_of else self._near(phash, exclude=sha256)
                return Claim(image_id, near_of, near if not near_of else [(near_of, entry["distance"])])
            return Claim(image_id, image_id, exact=True)

        near = self._near(phash, exclude=sha256)
        entry = {"image_id": sha256, "record_id": record_id, "phash": to_hex(phash) if phash is not None else ""}
        if near and self.policy == "drop":
            target, distance = near[0]
            entry.update(image_id=target, near_of=target, distance=distance)
        if entry["image_id"] == sha256:  # a new image: its first source rides in its entry, one PUT not two
            entry["source"] = dict(source)
        else:  # dropped into another image (policy "drop"): a provenance entry of that image, before the entry
            self._add_provenance(entry["image_id"], source)
        self.store.put_json(registry_key(sha256), entry)
        self._remember(sha256, phash, entry["image_id"])
        if "near_of" in entry:
            return Claim(entry["image_id"], entry["image_id"], near)
        return Claim(sha256, None, near)

    def may_be_registered(self, sha256: str, phash: int | None) -> bool:
        """False only when these bytes are surely new: memory holds every registered sha256 and not this one.
        A near duplicate dropped (policy "drop") by another replica is in no message read here, but it is
        near a registered image: under "drop" such bytes count as maybe registered."""
        if not self.complete or sha256 in self.index or sha256 in self.aliases or sha256 in self.unhashed:
            return True
        return self.policy == "drop" and bool(self._near(phash, exclude=sha256))

    def _add_provenance(self, image_id: str, source: Mapping[str, Any]) -> None:
        self.store.put_json(provenance_key(image_id, str(source["record_id"])), dict(source))

    def _near(self, phash: int | None, exclude: str) -> list[tuple[str, int]]:
        if phash is None:
            return []
        near = [(k, d) for k, d in self.index.query(phash) if k != exclude and k not in self.aliases]
        return near[: self.near_max]

    def _remember(self, sha256: str, phash: int | None, image_id: str) -> None:
        if phash is None:  # exact-deduplicated through its entry only: nothing for the pHash index
            if sha256 not in self.unhashed:
                self.unhashed.add(sha256)
                self.trigger.note()
            return
        changed = self.index.add(sha256, phash)
        if image_id != sha256 and self.aliases.get(sha256) != image_id:
            self.aliases[sha256] = image_id
            changed = True
        if changed:
            self.trigger.note()

    def observe(
        self, sha256: str, phash: int | None, image_id: str | None = None, at: tuple[int, int] | None = None
    ) -> None:
        """Learn an image some replica registered, from its `verified` message at `at` = (partition, offset)."""
        self._remember(sha256, phash, image_id or sha256)
        if at is not None:
            self.advance(*at)

    def advance(self, partition: int, offset: int) -> None:
        """The state now includes the `verified` message at `offset` (observed, or skipped as unreadable)."""
        self.offsets[partition] = max(self.offsets.get(partition, 0), offset + 1)

    # -- questions --------------------------------------------------------------------------------------------

    def lookup(self, sha256: str) -> dict[str, Any] | None:
        return self.store.get_json(registry_key(sha256))

    def sources(self, image_id: str) -> list[dict[str, Any]]:
        """Every source of an image, by record id: the first in its registry entry (an image's id is the
        sha256 of its first bytes), the later ones under provenance/ (and the first there too in stores
        written before entries carried it)."""
        entry = self.store.get_json(registry_key(image_id)) or {}
        listed = [self.store.get_json(k) for k in self.store.list(provenance_prefix(image_id))]
        by_record = {str(s["record_id"]): s for s in [entry.get("source"), *listed] if s}
        return [by_record[r] for r in sorted(by_record)]

    def links(self, image_id: str) -> list[tuple[str, int]]:
        """The images near `image_id` now (policy "link"), nearest first, at most `near_max`: read from the
        in-memory pHash index, which holds every registered image (snapshot + replay of `verified`).

        Links used to be stored, 2 PUTs a pair (links/<a>/<b>.json both ways) plus the rewrites of pairs two
        replicas claimed at once; they said what the index already knows, and cost 3.9 of the checksummer's
        6 S3 calls a record on the e2e bench at 25k images."""
        phash = self.index.get(image_id) if self.policy == "link" else None
        if phash is None:
            return []
        return [(k, d) for k, d in self.near_images(phash) if k != image_id][: self.near_max]

    def near_images(self, phash: int, max_distance: int | None = None) -> list[tuple[str, int]]:
        """Registered images (not dropped copies) within the radius of a pHash, nearest first."""
        found = self.index.query(phash, max_distance)
        return [(k, d) for k, d in found if k not in self.aliases]

    # -- durable index ----------------------------------------------------------------------------------------

    def snapshot_due(self) -> bool:
        return self.trigger.due()

    def size(self) -> int:
        """Registered contents the snapshot holds (pHash index, aliases, unhashed): what a save rewrites."""
        return len(self.index) + len(self.aliases) + len(self.unhashed)

    def save_snapshot(self) -> str:
        """A new generation: the pHash index, the aliases and the `verified` offsets they include."""
        parts = {
            "index.bin": self.index.to_bytes(),
            "aliases.json": json.dumps(self.aliases, sort_keys=True).encode(),
            "unhashed.json": json.dumps(sorted(self.unhashed)).encode(),
        }
        meta = {
            "offsets": {str(p): o for p, o in sorted(self.offsets.items())},
            "max_distance": self.max_distance,
            "complete": self.complete,
        }
        name = self.snapshots.save(parts, meta)
        self.trigger.saved()
        return name

    def _restore(self) -> bool:
        found = self.snapshots.load()
        if found is None:
            return False
        snapshot = HammingIndex.from_bytes(found.parts["index.bin"])
        self.index = HammingIndex.build(snapshot.items(), self.max_distance)  # the configured radius
        self.aliases = dict(json.loads(found.parts.get("aliases.json", b"{}")))
        self.unhashed = set(json.loads(found.parts.get("unhashed.json", b"[]")))
        self.complete = bool(found.meta.get("complete", False))
        self.offsets = {int(p): int(o) for p, o in found.meta.get("offsets", {}).items()}
        return True

    def rebuild_from_entries(self) -> int:
        """Migration from a store without snapshot generations: the single snapshot written before them (if
        its checksum holds), then every entry it does not cover, listed and fetched one by one (linear in the
        collection: run once, then `save_snapshot`). Returns how many entries were fetched."""
        covered: set[str] = set()
        meta = self.store.get_json(REGISTRY_LEGACY_META)
        if meta is not None:
            try:
                data = self.store.get(REGISTRY_LEGACY_INDEX)
            except KeyError:
                data = b""
            if hashlib.sha256(data).hexdigest() == meta.get("index_sha256"):
                for sha256, phash in HammingIndex.from_bytes(data).items():
                    self._remember(sha256, phash, meta.get("aliases", {}).get(sha256, sha256))
                covered.update(meta.get("unhashed", []))
                self.unhashed.update(meta.get("unhashed", []))
        covered.update(k for k, _ in self.index.items())
        fetched = 0
        for key in self.store.list(REGISTRY_ENTRIES_PREFIX):
            sha256 = key.rsplit("/", 1)[-1].removesuffix(".json")
            if sha256 in covered:
                continue
            entry = self.store.get_json(key)
            if entry is None:
                continue
            fetched += 1
            self._remember(sha256, from_hex(entry["phash"]) if entry.get("phash") else None, entry["image_id"])
        self.rebuilt_from_entries = fetched
        self.complete = True
        return fetched

    def learn_registered_from_listing(self) -> int:
        """Complete a state restored from a snapshot written before `unhashed` was kept: every listed entry
        not in the index or aliases joins `unhashed` (keys only, no GETs). Returns how many joined."""
        before = len(self.unhashed)
        for key in self.store.list(REGISTRY_ENTRIES_PREFIX):
            sha256 = key.rsplit("/", 1)[-1].removesuffix(".json")
            if sha256 not in self.index and sha256 not in self.aliases:
                self.unhashed.add(sha256)
        self.complete = True
        self.trigger.note()
        return len(self.unhashed) - before
