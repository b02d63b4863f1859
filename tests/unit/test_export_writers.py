"""Shard writers: every format reads back sample for sample, shards are cut at the chunk size."""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from taxonstream.export.writers import Sample, ShardedWriter

h5py = pytest.importorskip("h5py")


def samples(n: int, with_vectors: bool = False) -> list[Sample]:
    rng = np.random.default_rng(n)
    out = []
    for i in range(n):
        data = rng.integers(0, 256, size=int(rng.integers(1, 3000)), dtype=np.uint8).tobytes()
        record = {"image_id": f"id{i:04d}", "metadata": {"genus": f"G{i % 3}", "url": f"http://x/{i}"}}
        vector = rng.standard_normal(8).astype(np.float32) if with_vectors else None
        out.append(
            Sample(f"id{i:04d}", data, "jpg" if i % 2 else "png", record, ["train", "val", "test"][i % 3], vector)
        )
    return out


def read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    groups: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, _, ext = member.name.partition(".")
            groups.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return groups


def read_zip(path: Path) -> tuple[list[dict], dict[str, bytes], np.ndarray | None]:
    with zipfile.ZipFile(path) as archive:
        records = [json.loads(line) for line in archive.read("metadata.jsonl").splitlines()]
        files = {r["file"]: archive.read(r["file"]) for r in records}
        rows = list(csv.DictReader(io.StringIO(archive.read("metadata.csv").decode())))
        assert [r["key"] for r in rows] == [r["key"] for r in records]
        assert [r["genus"] for r in rows] == [r["metadata"]["genus"] for r in records]
        vectors = np.load(io.BytesIO(archive.read("vectors.npy"))) if "vectors.npy" in archive.namelist() else None
    return records, files, vectors


def read_h5(path: Path) -> list[dict]:
    with h5py.File(path, "r") as f:
        n = len(f["key"])
        assert f.attrs["samples"] == n
        return [
            {
                "key": f["key"][i].decode(),
                "split": f["split"][i].decode(),
                "ext": f["ext"][i].decode(),
                "record": json.loads(f["metadata"][i]),
                "data": f["image"][i].tobytes(),
                "vector": f["vector"][i] if "vector" in f else None,
            }
            for i in range(n)
        ]


@pytest.mark.parametrize("fmt", ["webdataset", "zip", "hdf5"])
@pytest.mark.parametrize("with_vectors", [False, True])
def test_round_trip_and_chunking(tmp_path, fmt, with_vectors):
    given = samples(23, with_vectors)
    writer = ShardedWriter(tmp_path, "job-1", fmt, chunk_size=10)
    for sample in given:
        writer.add(sample)
    shards = writer.close()
    suffix = {"webdataset": "tar", "zip": "zip", "hdf5": "h5"}[fmt]
    assert [s.path for s in shards] == [f"job-1-{n:06d}.{suffix}" for n in range(3)]
    assert [s.samples for s in shards] == [10, 10, 3]
    assert sorted(os.listdir(tmp_path)) == [s.path for s in shards]  # no .part left behind
    for shard in shards:
        assert shard.bytes == (tmp_path / shard.path).stat().st_size

    found: list[tuple[str, bytes, str, dict, np.ndarray | None]] = []  # key, data, ext, record, vector
    for shard in shards:
        path = tmp_path / shard.path
        if fmt == "webdataset":
            for key, members in read_tar(path).items():
                ext = next(e for e in members if e not in {"json", "npy"})
                vector = np.load(io.BytesIO(members["npy"])) if "npy" in members else None
                found.append((key, members[ext], ext, json.loads(members["json"]), vector))
        elif fmt == "zip":
            records, files, vectors = read_zip(path)
            for row, r in enumerate(records):
                vector = vectors[row] if vectors is not None else None
                found.append((r["key"], files[r["file"]], r["file"].rsplit(".", 1)[1], r, vector))
        else:
            for r in read_h5(path):
                found.append((r["key"], r["data"], r["ext"], {**r["record"], "split": r["split"]}, r["vector"]))
    assert [f[0] for f in found] == [s.key for s in given]
    for (key, data, ext, record, vector), sample in zip(found, given, strict=True):
        assert data == sample.data and ext == sample.ext
        assert record["metadata"] == sample.record["metadata"] and record["image_id"] == key
        if fmt != "webdataset":
            assert record["split"] == sample.split
        if with_vectors:
            np.testing.assert_array_equal(vector, sample.vector)
        else:
            assert vector is None


def test_shards_per_split(tmp_path):
    writer = ShardedWriter(tmp_path, "x", "webdataset", chunk_size=4, by_split=True)
    given = samples(20)
    for sample in given:
        writer.add(sample)
    shards = writer.close()
    per_split = {s: sum(1 for g in given if g.split == s) for s in ("train", "val", "test")}
    for split, count in per_split.items():
        mine = [s for s in shards if s.split == split]
        assert sum(s.samples for s in mine) == count
        assert [s.path for s in mine] == [f"x-{split}-{n:06d}.tar" for n in range(-(-count // 4))]
        for shard in mine:
            assert shard.splits == {split: shard.samples}
            keys = set(read_tar(tmp_path / shard.path))
            assert keys <= {g.key for g in given if g.split == split}


def test_bad_keys_names_and_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError):
        ShardedWriter(tmp_path, "x", "parquet")
    with pytest.raises(ValueError):
        ShardedWriter(tmp_path, "x", "zip", chunk_size=0)
    with pytest.raises(ValueError):
        ShardedWriter(tmp_path, "../x", "zip")
    writer = ShardedWriter(tmp_path, "x", "webdataset")
    with pytest.raises(ValueError):
        writer.add(Sample("a.b", b"1", "jpg", {}, "train"))


def test_webdataset_package_reads_the_shards_when_installed(tmp_path):
    wds = pytest.importorskip("webdataset")  # only checked where the package already is; not a dependency
    writer = ShardedWriter(tmp_path, "w", "webdataset", chunk_size=5)
    given = samples(12)
    for sample in given:
        writer.add(sample)
    urls = [str(tmp_path / s.path) for s in writer.close()]
    read = {row["__key__"]: row for row in wds.WebDataset(urls, shardshuffle=False)}
    assert set(read) == {s.key for s in given}
    for sample in given:
        assert read[sample.key][sample.ext] == sample.data
