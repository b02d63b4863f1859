"""Every S3 key, byte for byte as it was written before core/keys.py: objects already in a bucket must still
be found. The expected strings are written out by hand from the layout, not computed with the same code."""

from __future__ import annotations

import pytest

from taxonstream.core import keys

SHA = "ab" + "cd" + "0123456789" * 6


def test_original_job_and_manifest_keys() -> None:
    assert keys.original_key(SHA) == f"originals/sha256/ab/cd/{SHA}"
    assert keys.job_records_key("job-1", 7) == "jobs/job-1/records-000007.json"
    assert keys.job_records_prefix("job-1") == "jobs/job-1/records-"
    assert keys.manifest_row_key("job-1", "job-1:12") == "jobs/job-1/manifest/rows/job-1%3A12.json"
    assert keys.manifest_row_key("j", "a/b c") == "jobs/j/manifest/rows/a%2Fb%20c.json"
    assert keys.manifest_rows_prefix("job-1") == "jobs/job-1/manifest/rows/"
    assert keys.manifest_key("job-1", "parquet") == "jobs/job-1/manifest.parquet"


def test_registry_keys() -> None:
    assert keys.registry_key(SHA) == f"registry/sha256/ab/{SHA}.json"
    assert keys.provenance_key("img", "job:3") == "provenance/img/job:3.json"
    assert keys.REGISTRY_LEGACY_INDEX == "registry/snapshot/index.bin"
    assert keys.REGISTRY_LEGACY_META == "registry/snapshot/meta.json"


def test_derivative_keys_and_their_parse() -> None:
    found = keys.derivative_keys("img", "detr_standin", "2")
    assert found == {
        "crop": "derivatives/img/detr_standin/2/crop.jpg",
        "crop_small": "derivatives/img/detr_standin/2/crop_256.jpg",
        "original_small": "derivatives/img/detr_standin/2/original_256.jpg",
        "lineage": "derivatives/img/detr_standin/2/detection.json",
    }
    assert keys.parse_derivative_key(found["crop_small"]) == ("img", "detr_standin", "2")
    assert keys.parse_derivative_key("originals/sha256/ab/cd/x") is None


def test_index_and_snapshot_keys() -> None:
    assert keys.index_versions_key("faiss") == "index/faiss/versions.json"
    prefix = keys.index_snapshot_prefix("clip_a_image", "1", "faiss")
    assert prefix == "index/clip_a_image/1/faiss/"
    assert keys.snapshot_latest_key(prefix) == "index/clip_a_image/1/faiss/latest.json"
    bin_key = keys.snapshot_part_key(prefix, "20261203T120000-000000123", "bin")
    assert bin_key == "index/clip_a_image/1/faiss/snapshots/20261203T120000-000000123.bin"
    tombstones = keys.snapshot_part_key(prefix, "g1", "tombstones.json")
    assert keys.snapshot_generation_of(prefix, tombstones) == ("g1", "tombstones.json")
    assert keys.snapshot_generation_of(prefix, keys.snapshot_latest_key(prefix)) is None


def test_bank_and_model_repository_keys() -> None:
    assert keys.bank_keys("tol") == ("banks/tol/embeddings.npy", "banks/tol/names.json", "banks/tol/meta.json")
    for bad in ("", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="bank name"):
            keys.bank_keys(bad)
    assert keys.model_repository_key("", "m/1/model.py") == "m/1/model.py"
    assert keys.model_repository_key("triton/", "m/config.pbtxt") == "triton/m/config.pbtxt"
