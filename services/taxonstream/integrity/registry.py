"""The duplicate registry: which bytes became which image, every source of each, and near-duplicate links.

Durable state is a key/value object store (the S3 `ObjectStore` in the service; `DirectoryStore` here for
tests and single-machine use), in the key layout the checksummer already writes:

  registry/sha256/<ab>/<sha256>.json        first claim of these bytes: {"image_id", "record_id", "phash",
                                            and for a near duplicate dropped by policy: "near_of", "distance"}
  provenance/<image_id>/<record_id>.json    one per source record (URL, job, licence, metadata), so the same
                                            bytes from two providers are one image with two provenance entries
  links/<image_id>/<other_id>.json          near-duplicate links (policy "link"), both directions
  registry/snapshot/index.bin, meta.json    the pHash index as of some moment, to start without reading
                                            every entry again

Exact duplicates: the first record to bring some bytes creates the image (its id is the sha256); later
records with the same bytes add a provenance entry and end as DUPLICATE of it. Near duplicates (pHash within
`max_distance` bits of an image already registered) follow the policy: "keep" (a separate image, reported),
"link" (a separate image, linked both ways) or "drop" (the record ends as DUPLICATE of the nearest image;
its bytes map to that image from then on, and its pHash is not matched against later arrivals, so chains of
small changes cannot drift an image far from what it was dropped for).

The in-memory pHash index is rebuilt on start: the snapshot if its checksum holds, then every registry
entry the snapshot does not cover (found by listing keys, fetched one by one); with no snapshot, all of them.
Calls for one sha256 must not race (the service's messages are keyed by sha256; one consumer owns a key).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from taxonstream.integrity.neardup import HammingIndex
from taxonstream.integrity.phash import from_hex, to_hex

Policy = Literal["keep", "link", "drop"]
POLICIES: tuple[Policy, ...] = ("keep", "link", "drop")
SNAPSHOT_INDEX = "registry/snapshot/index.bin"
SNAPSHOT_META = "registry/snapshot/meta.json"


class Store(Protocol):
    """What the registry needs of an object store (the core's ObjectStore has exactly this)."""

    def get(self, key: str) -> bytes: ...  # KeyError when missing
    def put(self, key: str, data: bytes) -> None: ...
    def get_json(self, key: str) -> Any | None: ...
    def put_json(self, key: str, value: Any) -> None: ...
    def list(self, prefix: str) -> list[str]: ...


class DirectoryStore:
    """A Store in a local folder: objects are files, written atomically."""

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

    def get_json(self, key: str) -> Any | None:
        try:
            return json.loads(self.get(key))
        except KeyError:
            return None

    def put_json(self, key: str, value: Any) -> None:
        self.put(key, json.dumps(value, sort_keys=True).encode())

    def list(self, prefix: str) -> list[str]:
        base = self.root.resolve()
        start = base / prefix.rsplit("/", 1)[0] if "/" in prefix else base
        if not start.exists():
            return []
        keys = (p.relative_to(base).as_posix() for p in start.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and not k.rsplit("/", 1)[-1].startswith(".partial-"))


def registry_key(sha256: str) -> str:
    return f"registry/sha256/{sha256[:2]}/{sha256}.json"


def provenance_key(image_id: str, record_id: str) -> str:
    return f"provenance/{image_id}/{record_id}.json"


def link_key(image_id: str, other: str) -> str:
    return f"links/{image_id}/{other}.json"


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
    def __init__(self, store: Store, max_distance: int = 8, policy: Policy = "link") -> None:
        if policy not in POLICIES:
            raise ValueError(f"near-duplicate policy must be one of {POLICIES}, not {policy!r}")
        self.store = store
        self.max_distance = max_distance
        self.policy = policy
        # Keys are the sha256 of every registered content with a pHash; `aliases` maps those dropped as near
        # duplicates to their image, and they are never returned as near matches.
        self.index = HammingIndex(max_distance)
        self.aliases: dict[str, str] = {}
        self.unhashed: set[str] = set()  # registered without a pHash (not decodable as an image)
        self.rebuilt_from_entries = 0  # how many entries the last load had to fetch one by one
        self._load()

    # -- claims -----------------------------------------------------------------------------------------------

    def claim(self, sha256: str, phash: int | None, source: Mapping[str, Any]) -> Claim:
        """Register one record's bytes; `source` must carry "record_id" (plus url, job_id, licence, metadata…)."""
        record_id = str(source["record_id"])
        entry = self.store.get_json(registry_key(sha256))
        if entry is not None:
            image_id = entry["image_id"]
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
        # Provenance before the registry entry: a crash in between leaves a harmless extra provenance file,
        # and the redelivered record then takes the path above.
        self._add_provenance(entry["image_id"], source)
        if self.policy == "link":
            self.link(sha256, near)
        self.store.put_json(registry_key(sha256), entry)
        self._remember(sha256, phash, entry["image_id"])
        if "near_of" in entry:
            return Claim(entry["image_id"], entry["image_id"], near)
        return Claim(sha256, None, near)

    def link(self, sha256: str, near: Sequence[tuple[str, int]]) -> None:
        """Near-duplicate links in both directions; writing the same pair again changes nothing."""
        for other, distance in near:
            self.store.put_json(link_key(sha256, other), {"distance": distance})
            self.store.put_json(link_key(other, sha256), {"distance": distance})

    def _add_provenance(self, image_id: str, source: Mapping[str, Any]) -> None:
        self.store.put_json(provenance_key(image_id, str(source["record_id"])), dict(source))

    def _near(self, phash: int | None, exclude: str) -> list[tuple[str, int]]:
        if phash is None:
            return []
        return [(k, d) for k, d in self.index.query(phash) if k != exclude and k not in self.aliases]

    def _remember(self, sha256: str, phash: int | None, image_id: str) -> None:
        if phash is None:
            self.unhashed.add(sha256)
            return
        self.index.add(sha256, phash)
        if image_id != sha256:
            self.aliases[sha256] = image_id

    def observe(self, sha256: str, phash: int, image_id: str | None = None) -> None:
        """Learn a claim another replica made (e.g. from a compacted topic of registrations)."""
        self._remember(sha256, phash, image_id or sha256)

    # -- questions --------------------------------------------------------------------------------------------

    def lookup(self, sha256: str) -> dict[str, Any] | None:
        return self.store.get_json(registry_key(sha256))

    def sources(self, image_id: str) -> list[dict[str, Any]]:
        """Every provenance entry of an image, by record id."""
        keys = self.store.list(f"provenance/{image_id}/")
        return [self.store.get_json(k) for k in keys]

    def links(self, image_id: str) -> list[tuple[str, int]]:
        keys = self.store.list(f"links/{image_id}/")
        found = [(k.rsplit("/", 1)[-1].removesuffix(".json"), self.store.get_json(k)["distance"]) for k in keys]
        return sorted(found, key=lambda kd: (kd[1], kd[0]))

    def near_images(self, phash: int, max_distance: int | None = None) -> list[tuple[str, int]]:
        """Registered images (not dropped copies) within the radius of a pHash, nearest first."""
        found = self.index.query(phash, max_distance)
        return [(k, d) for k, d in found if k not in self.aliases]

    # -- durable index ----------------------------------------------------------------------------------------

    def save_snapshot(self) -> None:
        """Write the pHash index so the next start reads one object instead of every entry."""
        index = self.index.to_bytes()
        self.store.put(SNAPSHOT_INDEX, index)
        meta = {
            "index_sha256": hashlib.sha256(index).hexdigest(),
            "aliases": self.aliases,
            "unhashed": sorted(self.unhashed),
            "max_distance": self.max_distance,
        }
        self.store.put_json(SNAPSHOT_META, meta)

    def _load(self) -> None:
        meta = self.store.get_json(SNAPSHOT_META)
        if meta is not None:
            try:
                data = self.store.get(SNAPSHOT_INDEX)
            except KeyError:
                data = b""
            if hashlib.sha256(data).hexdigest() == meta.get("index_sha256"):
                snapshot = HammingIndex.from_bytes(data)
                self.index = HammingIndex.build(snapshot.items(), self.max_distance)
                self.aliases = dict(meta.get("aliases", {}))
                self.unhashed = set(meta.get("unhashed", []))
        covered = set(self.unhashed)
        covered.update(k for k, _ in self.index.items())
        self.rebuilt_from_entries = 0
        for key in self.store.list("registry/sha256/"):
            sha256 = key.rsplit("/", 1)[-1].removesuffix(".json")
            if sha256 in covered:
                continue
            entry = self.store.get_json(key)
            if entry is None:
                continue
            self.rebuilt_from_entries += 1
            self._remember(sha256, from_hex(entry["phash"]) if entry.get("phash") else None, entry["image_id"])
