"""Manifests keep sum-buddy's columns first; buddy-checks name the expected and the actual value."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from taxonstream.integrity.buddycheck import (
    ExpectedChecksumError,
    Mismatch,
    check_manifest,
    describe,
    expected_checksums,
    verify,
)
from taxonstream.integrity.manifest import (
    ManifestRow,
    columns,
    filename_of_url,
    license_of,
    object_path,
    read_manifest,
    write_manifest,
)

DATA = b"specimen photo bytes"
MD5 = hashlib.md5(DATA).hexdigest()
SHA256 = hashlib.sha256(DATA).hexdigest()


def _rows() -> list[ManifestRow]:
    return [
        ManifestRow(
            filepath=object_path("taxonstream", f"originals/sha256/{SHA256[:2]}/{SHA256[2:4]}/{SHA256}"),
            filename="IMG_0001.jpg",
            digests={"md5": MD5, "sha256": SHA256},
            key=f"originals/sha256/{SHA256[:2]}/{SHA256[2:4]}/{SHA256}",
            source_url="https://example.org/media/IMG_0001.jpg",
            license="CC BY 4.0",
            record_id="r1",
            job_id="j1",
            image_id=SHA256,
            size_bytes=len(DATA),
            phash="8f3c0000ffff0001",
            near_duplicates=(("ab" * 32, 4), ("cd" * 32, 6)),
        ),
        ManifestRow(filepath="s3://taxonstream/x", filename="a, b.jpg", digests={"md5": MD5}, duplicate_of=SHA256),
    ]


def test_csv_manifest_starts_with_sum_buddys_columns_and_writes_its_line_ends(tmp_path: Path) -> None:
    path = tmp_path / "job.csv"
    assert write_manifest(_rows(), path, ["md5", "sha256"]) == 2
    raw = path.read_bytes()
    assert raw.startswith(b"filepath,filename,md5,sha256,key,source_url,license,")
    assert raw.count(b"\r\n") == 3 and b'"a, b.jpg"' in raw
    rows = read_manifest(path)
    assert rows[0]["md5"] == MD5 and rows[0]["near_duplicates"] == f"{'ab' * 32}:4;{'cd' * 32}:6"
    assert rows[1]["sha256"] == "" and rows[1]["duplicate_of"] == SHA256 and rows[1]["size_bytes"] == ""


def test_parquet_manifest_has_the_same_columns(tmp_path: Path) -> None:
    path = tmp_path / "job.parquet"
    write_manifest(_rows(), path, ["md5", "sha256"])
    table = pq.read_table(path)
    assert table.column_names == columns(["md5", "sha256"])
    assert table.column("size_bytes").to_pylist() == [len(DATA), None]
    assert read_manifest(path)[0]["filename"] == "IMG_0001.jpg"
    with pytest.raises(ValueError):
        write_manifest(_rows(), tmp_path / "job.txt", ["md5"])


def test_licence_and_filename_come_from_the_record() -> None:
    assert license_of({"dcterms:rights": "CC0", "license": ""}) == "CC0"  # empty values do not count
    assert license_of({"License": "CC BY-NC 4.0", "dc:rights": "x"}) == "CC BY-NC 4.0"
    assert license_of({}) == ""
    assert filename_of_url("https://host/a/b/IMG%20001.JPG?size=full") == "IMG 001.JPG"
    assert filename_of_url("https://host/", fallback="r1") == "r1"


def test_expected_checksums_are_read_from_common_columns() -> None:
    assert expected_checksums({"md5": MD5.upper(), "title": "x"}) == {"md5": MD5}
    assert expected_checksums({"sha256_checksum": SHA256, "checksum_md5": MD5}) == {"sha256": SHA256, "md5": MD5}
    assert expected_checksums({"ac:hashFunction": "SHA-256", "ac:hashValue": SHA256}) == {"sha256": SHA256}
    assert expected_checksums({"md5": "", "url": "https://x"}) == {}  # column present but empty: nothing expected
    with pytest.raises(ExpectedChecksumError, match="32"):
        expected_checksums({"md5": "abc"})
    with pytest.raises(ExpectedChecksumError, match="not hexadecimal"):
        expected_checksums({"sha1": "z" * 40})
    with pytest.raises(ExpectedChecksumError, match="unknown ac:hashFunction"):
        expected_checksums({"ac:hashFunction": "crc32", "ac:hashValue": "1234"})


def test_verify_reports_expected_and_actual_values() -> None:
    assert verify(DATA, {"md5": MD5, "sha256": SHA256}) == []
    wrong = "0" * 32
    mismatches = verify(DATA, {"md5": wrong, "sha256": SHA256})
    assert mismatches == [Mismatch("md5", wrong, MD5)]
    assert describe(mismatches) == f"md5 expected {wrong}, got {MD5}"
    # A digest computed already (the stream computes sha256 anyway) is used, not recomputed.
    assert verify(DATA, {"sha256": SHA256}, known={"sha256": "f" * 64}) == [Mismatch("sha256", SHA256, "f" * 64)]
    assert verify(DATA, {"shake_128": hashlib.shake_128(DATA).hexdigest(10)}) == []


def test_check_manifest_finds_matches_mismatches_missing_and_unexpected() -> None:
    expected = [
        {"filename": "a.jpg", "md5": "A" * 32},
        {"filename": "b.jpg", "md5": "b" * 32},
        {"filename": "c.jpg", "md5": "c" * 32},
    ]
    actual = [  # what `taxonstream checksum` (or sum-buddy) wrote for the downloaded folder
        {"filepath": "dl/a.jpg", "filename": "a.jpg", "md5": "a" * 32},
        {"filepath": "dl/b.jpg", "filename": "b.jpg", "md5": "0" * 32},
        {"filepath": "dl/d.jpg", "filename": "d.jpg", "md5": "d" * 32},
    ]
    result = check_manifest(expected, actual)
    assert result.matched == ["a.jpg"]
    assert result.mismatched == [("b.jpg", "b" * 32, "0" * 32)]
    assert result.missing == [("c.jpg", "c" * 32)] and result.unexpected == ["d.jpg"] and not result.ok
    with pytest.raises(ValueError, match="sha256"):
        check_manifest(expected, actual, algorithm="sha256")
