"""`taxonstream export` through the real stack: a job's images in every format, several shards each,
read back and compared with the stored objects and the index's metadata; a query export; a missing
object recorded, not fatal; a job that does not exist refused."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
from pipeline_helpers import submit, unique_job, wait_done

from taxonstream.cli.main import main as taxonstream
from taxonstream.export.content import box_to_cut, cut_crop
from taxonstream.v1 import indexer_pb2

EPITHETS = ("plexippus", "gilippus", "eresimus")


def read_shards(folder: Path, fmt: str) -> dict[str, list[dict]]:
    """image id → every sample found for it (bytes, record, vector), from the shards the manifest lists."""
    manifest = json.loads((folder / "manifest.json").read_text())
    found: dict[str, list[dict]] = {}
    for shard in manifest["shards"]:
        path = folder / shard["path"]
        if fmt == "webdataset":
            groups: dict[str, dict[str, bytes]] = {}
            with tarfile.open(path) as tar:
                for member in tar.getmembers():
                    key, _, ext = member.name.partition(".")
                    groups.setdefault(key, {})[ext] = tar.extractfile(member).read()
            for key, members in groups.items():
                image_ext = next(e for e in members if e not in {"json", "npy"})
                vector = np.load(io.BytesIO(members["npy"])) if "npy" in members else None
                sample = {"data": members[image_ext], "record": json.loads(members["json"]), "vector": vector}
                found.setdefault(key, []).append(sample)
        elif fmt == "zip":
            with zipfile.ZipFile(path) as archive:
                records = [json.loads(line) for line in archive.read("metadata.jsonl").splitlines()]
                for r in records:
                    found.setdefault(r["key"], []).append({"data": archive.read(r["file"]), "record": r})
        else:
            with h5py.File(path, "r") as f:
                for i in range(len(f["key"])):
                    record = json.loads(f["metadata"][i])
                    assert f["split"][i].decode() == record["split"]
                    sample = {"data": f["image"][i].tobytes(), "record": record}
                    found.setdefault(f["key"][i].decode(), []).append(sample)
    return found


@pytest.fixture(scope="module")
def ingested(fetcher, indexer, site):
    # A genus of this run only, letters alone (a binomial's genus has no digits).
    tag = "".join(chr(ord("a") + int(c, 16)) for c in unique_job("x").rsplit("-", 1)[1])
    genus = f"Danaus{tag}"
    images = site.images(12)
    metadata = [{"scientificName": f"{genus} {EPITHETS[i % 3]}", "license": "CC0-1.0"} for i in range(12)]
    job = unique_job("export")
    submit(fetcher, job, [site.url("img", p) for p in images], metadata)
    assert wait_done(fetcher, job, timeout=300).indexed == 12
    listed = {h.image_id: dict(h.metadata) for h in indexer.ListImages(indexer_pb2.ListImagesRequest(job_id=job))}
    assert len(listed) == 12
    return job, genus, listed


@pytest.mark.parametrize("fmt", ["webdataset", "hdf5", "zip"])
def test_export_a_job_in_each_format(ingested, store, tmp_path, fmt, capsys):
    job, _, listed = ingested
    out = tmp_path / fmt
    assert taxonstream(["export", job, "--format", fmt, "--out", str(out), "--chunk-size", "5", "--quiet"]) == 0
    print(capsys.readouterr().out)  # the command's summary, with its images/s, for the log
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["shards"]) == 3 and [s["samples"] for s in manifest["shards"]] == [5, 5, 2]
    assert manifest["query"] == {"kind": "job", "job_id": job, "filters": {}}
    assert (out / "errors.jsonl").read_text() == ""

    found = read_shards(out, fmt)
    assert set(found) == set(listed) and all(len(samples) == 1 for samples in found.values())
    splits: Counter[str] = Counter()
    for image_id, [sample] in found.items():
        assert sample["data"] == store.get(listed[image_id]["original_key"])
        assert sample["record"]["metadata"] == listed[image_id]
        assert sample["record"]["object_key"] == listed[image_id]["original_key"]
        splits[sample["record"]["split"]] += 1
    assert manifest["counts"]["by_split"] == {s: splits.get(s, 0) for s in ("train", "val", "test")}
    assert sum(splits.values()) == manifest["counts"]["exported"] == 12
    # Per species (4 images each): 20% → 1 test, 10% → 0 val (rounded half up from 0.4), 3 train.
    assert splits == {"train": 9, "test": 3}


def test_crops_with_vectors_by_split_and_a_missing_object(ingested, indexer, store, tmp_path, capsys):
    job, _, listed = ingested
    request = indexer_pb2.ListImagesRequest(job_id=job, with_vectors=True)
    vectors = {h.image_id: np.asarray(h.vector, dtype=np.float32) for h in indexer.ListImages(request)}
    lost = sorted(listed)[0]
    # This run's own image: its crop removed from S3 behind the index's back, and put back after, since a
    # demo-sized original is its own crop (the other tests of the module export it).
    lost_key = listed[lost]["crop_key"]
    lost_bytes = store.get(lost_key)
    store.client.remove_object(store.bucket_for(lost_key), lost_key)
    out = tmp_path / "crops"
    argv = ["export", job, "--content", "crop", "--out", str(out), "--chunk-size", "2", "--shard-by-split"]
    try:
        exit_code = taxonstream([*argv, "--with-vectors", "--seed", "3", "--quiet"])
    finally:
        store.put(lost_key, lost_bytes)
    assert exit_code == 1  # something was left out
    assert "1 images left out (1 missing)" in capsys.readouterr().err

    manifest = json.loads((out / "manifest.json").read_text())
    [error] = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert error["image_id"] == lost and error["object_key"] == listed[lost]["crop_key"]
    assert error["reason"].startswith("missing")
    found = read_shards(out, "webdataset")
    assert set(found) == set(listed) - {lost}
    for image_id, [sample] in found.items():
        # A stored crop as it is; where the detector stored none (demo-sized originals), the box of the original.
        box = box_to_cut("crop", listed[image_id])
        stored = store.get(listed[image_id]["crop_key"])
        assert sample["data"] == (stored if box is None else cut_crop(stored, box))
        np.testing.assert_allclose(sample["vector"], vectors[image_id], rtol=1e-6)
    for shard in manifest["shards"]:
        assert shard["path"].startswith(f"{job}-{shard['split']}-") and set(shard["splits"]) == {shard["split"]}
    counts = manifest["counts"]
    assert counts["exported"] == 11 and counts["errors"] == 1
    assert sum(counts["by_split"].values()) + 1 == counts["selected"] == 12
    assert manifest["vectors"]["dimension"] == len(next(iter(vectors.values())))


def test_export_a_text_query_and_a_filter(ingested, store, tmp_path):
    _, genus, listed = ingested
    species = f"{genus} {EPITHETS[0]}"
    mine = {i for i, m in listed.items() if m["scientificName"] == species}
    out = tmp_path / "text"
    argv = ["export", "--text", f"a photo of {species}", "-k", "3", "--filter", f"genus={genus}", "--out", str(out)]
    assert taxonstream([*argv, "--format", "zip", "--content", "small", "--quiet"]) == 0
    found = read_shards(out, "zip")
    assert len(found) == 3 and set(found) <= set(listed)
    ranks = sorted(s[0]["record"]["rank"] for s in found.values())
    assert ranks == [1, 2, 3]
    for image_id, [sample] in found.items():
        assert sample["data"] == store.get(listed[image_id]["thumbnail_key"])

    out = tmp_path / "filter"
    assert taxonstream(["export", "--filter", f"species={species}", "--out", str(out), "--quiet"]) == 0
    assert set(read_shards(out, "webdataset")) == mine


def test_a_job_that_does_not_exist_is_refused(local_stack, tmp_path, capsys):
    missing = unique_job("never-submitted")
    assert taxonstream(["export", missing, "--out", str(tmp_path / "none")]) == 2
    assert f"no job {missing!r}" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
