"""An export end to end over an in-memory object source: split per sample, errors recorded, manifest counts."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter

import numpy as np
import pytest

from taxonstream.core.errors import Transient
from taxonstream.core.store import original_key
from taxonstream.export.run import Plan, export, prepare
from taxonstream.export.select import Item, Selection
from taxonstream.export.split import assign


class DictStore:
    """Objects by key; a key listed in `flaky` fails with Transient that many times first."""

    def __init__(self, objects: dict[str, bytes], flaky: dict[str, int] | None = None) -> None:
        self.objects = objects
        self.flaky = dict(flaky or {})

    def get(self, key: str) -> bytes:
        if self.flaky.get(key, 0) > 0:
            self.flaky[key] -= 1
            raise Transient("S3 unavailable: test")
        return self.objects[key]  # KeyError when missing, as ObjectStore.get


EPITHETS = ("plexippus", "gilippus", "chrysippus", "eresimus")


def selection(n: int) -> tuple[Selection, dict[str, bytes]]:
    items, objects = [], {}
    for i in range(n):
        image_id = f"{i:064x}"
        key = original_key(image_id)
        objects[key] = b"\xff\xd8\xff" + bytes([i % 256]) * (i + 1)
        metadata = {"original_key": key, "scientificName": f"Danaus {EPITHETS[i % 4]}", "job_id": "j"}
        items.append(Item(image_id, metadata, np.full(4, i, dtype=np.float32)))
    return Selection(items, "clip/1"), objects


def test_export_records_every_image_once_with_its_split(tmp_path):
    chosen, objects = selection(30)
    missing = chosen.items[7]
    del objects[missing.metadata["original_key"]]
    flaky_key = chosen.items[3].metadata["original_key"]
    store = DictStore(objects, flaky={flaky_key: 2})
    prepare(tmp_path / "out")
    plan = Plan(format="webdataset", chunk_size=8, seed=4, with_vectors=True, workers=4, name="j")
    manifest = export(chosen, plan, store, tmp_path / "out", {"kind": "job", "job_id": "j"}, progress=False)

    expected_split = assign(
        [i.image_id for i in chosen.items], [i.metadata["scientificName"] for i in chosen.items], plan.fractions, 4
    )
    split_of = {i.image_id: s for i, s in zip(chosen.items, expected_split, strict=True)}
    seen: Counter[str] = Counter()
    for shard in manifest["shards"]:
        with tarfile.open(tmp_path / "out" / shard["path"]) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                data = tar.extractfile(member).read()
                if ext == "json":
                    record = json.loads(data)
                    assert record["split"] == split_of[key]
                    assert record["species"] == record["metadata"]["scientificName"]
                    seen[key] += 1
                elif ext == "jpg":
                    assert data == objects[original_key(key)]
                elif ext == "npy":
                    assert np.load(io.BytesIO(data))[0] == int(key, 16)
    assert set(seen) == {i.image_id for i in chosen.items} - {missing.image_id}
    assert set(seen.values()) == {1}
    counts = manifest["counts"]
    assert counts["selected"] == 30 and counts["exported"] == 29 and counts["errors"] == 1
    assert sum(counts["by_split"].values()) == 29
    assert counts["by_split"] == dict(Counter(split_of[k] for k in seen))
    assert counts["errors_by_reason"] == {"missing": 1}
    assert [s["samples"] for s in manifest["shards"]] == [8, 8, 8, 5]
    assert manifest["vectors"] == {"dimension": 4} and manifest["model"] == "clip/1"
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert errors == [
        {
            "image_id": missing.image_id,
            "split": split_of[missing.image_id],
            "content": "original",
            "object_key": missing.metadata["original_key"],
            "reason": "missing: the object is not in S3",
        }
    ]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest


def test_images_without_the_content_and_outages_are_errors_not_crashes(tmp_path):
    chosen, objects = selection(5)
    chosen.items[0].metadata.pop("original_key")
    down = chosen.items[1].metadata["original_key"]
    store = DictStore(objects, flaky={down: 10})
    plan = Plan(format="zip", retries=2, workers=2)
    manifest = export(chosen, plan, store, tmp_path, {"kind": "filters"}, progress=False)
    assert manifest["counts"]["exported"] == 3
    assert manifest["counts"]["errors_by_reason"] == {"no_object": 1, "unavailable": 1}


def test_prepare_refuses_a_folder_with_files(tmp_path):
    (tmp_path / "old.tar").write_bytes(b"x")
    with pytest.raises(ValueError):
        prepare(tmp_path)
    prepare(tmp_path / "new" / "deeper")
    assert (tmp_path / "new" / "deeper").is_dir()
