"""Shard writers: WebDataset tar, HDF5 and ZIP, cut into shards of a fixed number of samples.

Every shard is written as `<path>.part` and renamed when complete, so a shard that exists is whole.

- webdataset: POSIX (ustar) tar, per sample `<key>.<ext>` (the image), `<key>.json` (its record) and,
  with vectors, `<key>.npy`; WebDataset groups members by the name before the first dot.
- hdf5: one row per sample in datasets `key`, `split`, `ext`, `metadata` (JSON text), `image`
  (variable-length uint8: the file's bytes, unchanged) and, with vectors, `vector` (float32, n × d).
- zip: the images as `<key>.<ext>` (stored, not recompressed), `metadata.jsonl` and `metadata.csv`
  (one row per sample, in the same order) and, with vectors, `vectors.npy` (rows in that order).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tarfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

FORMATS = ("webdataset", "hdf5", "zip")
SUFFIX = {"webdataset": "tar", "hdf5": "h5", "zip": "zip"}


@dataclass
class Sample:
    key: str  # unique within the export, no dots or slashes (WebDataset splits names at the first dot)
    data: bytes
    ext: str
    record: dict[str, Any]  # what the sample's .json / metadata row holds
    split: str
    vector: np.ndarray | None = None


@dataclass
class ShardInfo:
    path: str  # relative to the export folder
    split: str  # "" when shards mix splits
    samples: int
    bytes: int
    sha256: str
    splits: dict[str, int] = field(default_factory=dict)


class Shard(Protocol):
    def add(self, sample: Sample) -> None: ...
    def close(self) -> None: ...


def _npy(vector: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(vector, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def _json(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, ensure_ascii=False).encode()


class TarShard:
    def __init__(self, path: Path) -> None:
        self.tar = tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 - closed by close()
        self.mtime = int(time.time())

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), self.mtime, 0o444
        self.tar.addfile(info, io.BytesIO(data))

    def add(self, sample: Sample) -> None:
        self._member(f"{sample.key}.{sample.ext}", sample.data)
        self._member(f"{sample.key}.json", _json(sample.record))
        if sample.vector is not None:
            self._member(f"{sample.key}.npy", _npy(sample.vector))

    def close(self) -> None:
        self.tar.close()


class ZipShard:
    def __init__(self, path: Path) -> None:
        self.zip = zipfile.ZipFile(path, "w", allowZip64=True)
        self.records: list[dict[str, Any]] = []
        self.vectors: list[np.ndarray] = []

    def add(self, sample: Sample) -> None:
        name = f"{sample.key}.{sample.ext}"
        self.zip.writestr(name, sample.data, compress_type=zipfile.ZIP_STORED)  # images are compressed already
        self.records.append({"key": sample.key, "file": name, "split": sample.split, **sample.record})
        if sample.vector is not None:
            self.vectors.append(np.asarray(sample.vector, dtype=np.float32))

    def close(self) -> None:
        deflate = zipfile.ZIP_DEFLATED
        lines = b"".join(_json(r) + b"\n" for r in self.records)
        self.zip.writestr("metadata.jsonl", lines, compress_type=deflate)
        self.zip.writestr("metadata.csv", _csv(self.records), compress_type=deflate)
        if self.vectors:
            self.zip.writestr("vectors.npy", _npy(np.stack(self.vectors)), compress_type=deflate)
        self.zip.close()


def _csv(records: list[dict[str, Any]]) -> bytes:
    """Flat columns for spreadsheets: the record's scalars, then its `metadata` mapping one column per key."""
    rows = []
    for r in records:
        row = {k: v for k, v in r.items() if not isinstance(v, dict | list)}
        row.update({k: v for k, v in (r.get("metadata") or {}).items() if k not in row})
        rows.append(row)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


class H5Shard:
    FLUSH = 256  # rows buffered between appends: one resize per batch, not per image

    def __init__(self, path: Path) -> None:
        import h5py  # the `export` extra; only this format needs it

        self.h5py = h5py
        self.file = h5py.File(path, "w")
        self.file.attrs["format"] = "taxonstream-export"
        self.file.attrs["version"] = 1
        self.rows: list[Sample] = []
        self.count = 0

    def _dataset(self, name: str, dtype, shape: tuple[int, ...] = ()):
        if name not in self.file:
            self.file.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype, chunks=True)
        return self.file[name]

    def add(self, sample: Sample) -> None:
        self.rows.append(sample)
        if len(self.rows) >= self.FLUSH:
            self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        text, raw = self.h5py.string_dtype("utf-8"), self.h5py.vlen_dtype(np.uint8)
        columns: dict[str, tuple[Any, list[Any], tuple[int, ...]]] = {
            "key": (text, [s.key for s in self.rows], ()),
            "split": (text, [s.split for s in self.rows], ()),
            "ext": (text, [s.ext for s in self.rows], ()),
            "metadata": (text, [_json(s.record).decode() for s in self.rows], ()),
            "image": (raw, [np.frombuffer(s.data, dtype=np.uint8) for s in self.rows], ()),
        }
        vectors = [s.vector for s in self.rows if s.vector is not None]
        if vectors:
            if len(vectors) != len(self.rows):
                raise ValueError("either every sample of an export has a vector or none has")
            stacked = np.stack([np.asarray(v, dtype=np.float32) for v in vectors])
            columns["vector"] = (np.float32, list(stacked), stacked.shape[1:])
        end = self.count + len(self.rows)
        for name, (dtype, values, shape) in columns.items():
            dataset = self._dataset(name, dtype, shape)
            dataset.resize((end, *shape))
            if dtype is raw:  # h5py writes ragged rows one element at a time
                for offset, value in enumerate(values):
                    dataset[self.count + offset] = value
            else:
                dataset[self.count : end] = np.asarray(values, dtype=object if dtype is text else dtype)
        self.count = end
        self.rows = []

    def close(self) -> None:
        self._flush()
        self.file.attrs["samples"] = self.count
        self.file.close()


OPENERS: dict[str, Callable[[Path], Shard]] = {"webdataset": TarShard, "hdf5": H5Shard, "zip": ZipShard}


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            sha.update(block)
    return sha.hexdigest()


class _Sequence:
    """One run of numbered shards (`<stem>-000000.<suffix>`, …), each holding at most `chunk_size` samples."""

    def __init__(self, out: Path, stem: str, fmt: str, chunk_size: int, split: str) -> None:
        self.out, self.stem, self.fmt, self.chunk_size, self.split = out, stem, fmt, chunk_size, split
        self.number = 0
        self.current: Shard | None = None
        self.path: Path | None = None
        self.in_shard = 0
        self.splits: dict[str, int] = {}
        self.done: list[ShardInfo] = []

    def add(self, sample: Sample) -> None:
        if self.current is None:
            self.path = self.out / f"{self.stem}-{self.number:06d}.{SUFFIX[self.fmt]}"
            self.current = OPENERS[self.fmt](_part(self.path))
        self.current.add(sample)
        self.in_shard += 1
        self.splits[sample.split] = self.splits.get(sample.split, 0) + 1
        if self.in_shard >= self.chunk_size:
            self.finish()

    def finish(self) -> None:
        if self.current is None or self.path is None:
            return
        self.current.close()
        os.replace(_part(self.path), self.path)
        self.done.append(
            ShardInfo(
                path=self.path.name,
                split=self.split,
                samples=self.in_shard,
                bytes=self.path.stat().st_size,
                sha256=_digest(self.path),
                splits=dict(sorted(self.splits.items())),
            )
        )
        self.current, self.path, self.in_shard, self.splits = None, None, 0, {}
        self.number += 1


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


class ShardedWriter:
    """Samples in, shards out: one sequence for the whole export, or one per split (`<name>-<split>-NNNNNN`)."""

    def __init__(self, out: Path, name: str, fmt: str, chunk_size: int = 10_000, by_split: bool = False) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        if chunk_size < 1:
            raise ValueError("chunk size must be at least 1")
        if not name or any(c in name for c in "/\\") or name.startswith("."):
            raise ValueError(f"shard name {name!r} must be a plain file name")
        self.out, self.name, self.fmt, self.chunk_size, self.by_split = out, name, fmt, chunk_size, by_split
        self.sequences: dict[str, _Sequence] = {}

    def add(self, sample: Sample) -> None:
        if "." in sample.key or "/" in sample.key:
            raise ValueError(f"sample key {sample.key!r} may not contain '.' or '/'")
        split = sample.split if self.by_split else ""
        if split not in self.sequences:
            stem = f"{self.name}-{split}" if split else self.name
            self.sequences[split] = _Sequence(self.out, stem, self.fmt, self.chunk_size, split)
        self.sequences[split].add(sample)

    def close(self) -> list[ShardInfo]:
        shards: list[ShardInfo] = []
        for sequence in self.sequences.values():
            sequence.finish()
            shards.extend(sequence.done)
        return shards
