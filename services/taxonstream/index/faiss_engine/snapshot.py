"""The FAISS engine's snapshot formats: the current self-describing archive, and the legacy IndexIDMap2.

Current (`taxonstream-faiss/1`): an uncompressed `.npz` holding a JSON header (format, kind, dim,
built_for, faiss version), the serialised FAISS index, the slot → image id list, the liveness bitmap,
IVF-PQ's float16 vectors and, from `dump()`, the metadata. Legacy: the bare serialised `IndexIDMap2`
the first indexer wrote, labelled by `faiss_id`, its metadata stored beside it. Anything else — a newer
format, another program's bytes — is refused with `SnapshotFormatError`, never read as an empty index.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass

import faiss
import numpy as np

FORMAT = "taxonstream-faiss/1"
LEGACY = "faiss-IndexIDMap2 (before slots; metadata kept beside it)"
SUPPORTED = (FORMAT, LEGACY)
_NPZ_MAGIC = b"PK"  # a zip archive: what np.savez writes
_LEGACY_MAGIC = b"IxM2"  # FAISS's four-character code of a serialised IndexIDMap2
_PARTS = ("header", "index", "ids", "live")


class SnapshotFormatError(ValueError):
    """A snapshot this code cannot read: its format is unknown, or it lacks what reading it needs."""

    def __init__(self, found: str, reason: str = "unknown format") -> None:
        self.found, self.supported = found, SUPPORTED
        super().__init__(
            f"cannot read FAISS snapshot of format {found!r} ({reason}); supported formats: {', '.join(SUPPORTED)}"
        )


@dataclass
class Snapshot:
    """What a current-format snapshot holds; `metadata` is None when it was kept beside it."""

    kind: str
    dim: int
    built_for: int
    index: faiss.Index
    ids: list[str]
    live: np.ndarray  # bool, one per slot (len(ids))
    raw16: np.ndarray | None
    metadata: dict[str, dict[str, str]] | None


def faiss_id(image_id: str) -> int:
    """The FAISS label of an image in legacy snapshots (first 60 bits of its sha256)."""
    return int(image_id[:15], 16)


def is_legacy(data: bytes) -> bool:
    return data.startswith(_LEGACY_MAGIC)


def pack(snapshot: Snapshot) -> bytes:
    header = {
        "format": FORMAT,
        "kind": snapshot.kind,
        "dim": snapshot.dim,
        "built_for": snapshot.built_for,
        "faiss": faiss.__version__,
    }
    arrays: dict[str, np.ndarray] = {
        "header": _json_bytes(header),
        "index": faiss.serialize_index(snapshot.index),
        "ids": _json_bytes(snapshot.ids),
        "live": np.packbits(snapshot.live, bitorder="little"),
    }
    if snapshot.raw16 is not None:
        arrays["raw16"] = snapshot.raw16
    if snapshot.metadata is not None:
        arrays["metadata"] = _json_bytes(snapshot.metadata)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def unpack(data: bytes) -> Snapshot:
    """A current-format snapshot; `SnapshotFormatError` for any other format (legacy: see `unpack_legacy`)."""
    if not data.startswith(_NPZ_MAGIC):
        if is_legacy(data):
            raise SnapshotFormatError(LEGACY, "the legacy format: read it with unpack_legacy")
        raise SnapshotFormatError(f"unrecognised bytes {data[:8]!r}")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as parts:
            if "header" not in parts.files:
                raise SnapshotFormatError(f"archive without a header (parts: {', '.join(parts.files)})")
            header = json.loads(parts["header"].tobytes())
            found = header.get("format") if isinstance(header, dict) else None
            if found != FORMAT:
                raise SnapshotFormatError(str(found))
            missing = [p for p in _PARTS if p not in parts.files]
            if missing:
                raise ValueError(f"FAISS snapshot {FORMAT} is damaged: it lacks {', '.join(missing)}")
            ids = json.loads(parts["ids"].tobytes())
            return Snapshot(
                kind=header["kind"],
                dim=header["dim"],
                built_for=header["built_for"],
                index=faiss.deserialize_index(parts["index"]),
                ids=ids,
                live=np.unpackbits(parts["live"], count=len(ids), bitorder="little").astype(bool),
                raw16=np.array(parts["raw16"]) if "raw16" in parts.files else None,
                metadata=json.loads(parts["metadata"].tobytes()) if "metadata" in parts.files else None,
            )
    except (zipfile.BadZipFile, EOFError, KeyError, json.JSONDecodeError) as error:
        raise ValueError(f"FAISS snapshot is damaged: {error}") from error


def unpack_legacy(data: bytes, metadata: Mapping[str, object]) -> tuple[int, list[str], np.ndarray]:
    """A legacy snapshot's dim, image ids (sorted) and their vectors, looked up by `faiss_id`."""
    try:
        old = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))  # already its own type
    except RuntimeError as error:  # FAISS's reader refuses truncated or corrupt bytes
        raise ValueError(f"legacy FAISS snapshot is damaged: {error}") from error
    ids = sorted(metadata)
    if not isinstance(old, faiss.IndexIDMap2) or old.ntotal != len(ids):
        raise ValueError(f"snapshot metadata ({len(ids)} images) does not match its index ({old.ntotal} vectors)")
    try:
        vectors = np.stack([old.reconstruct(faiss_id(i)) for i in ids]) if ids else np.empty((0, old.d), np.float32)
    except RuntimeError as error:  # an id the index does not hold
        raise ValueError(f"snapshot metadata does not match its index: {error}") from error
    return old.d, ids, vectors


def _json_bytes(value: object) -> np.ndarray:
    return np.frombuffer(json.dumps(value, separators=(",", ":")).encode(), dtype=np.uint8)
