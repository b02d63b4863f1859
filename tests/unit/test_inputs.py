"""URL lists in every accepted format become records; bad files fail with a clear error."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taxonstream.cli.inputs import InputError, read_records

ROWS = [
    {"url": "http://a.example/1.jpg", "scientificName": "Apis mellifera", "license": "CC0"},
    {"url": " http://b.example/2.jpg ", "scientificName": "Bombus terrestris", "license": "CC-BY"},
]


def check(records):
    records = list(records)
    assert [r.url for r in records] == ["http://a.example/1.jpg", "http://b.example/2.jpg"]
    assert records[1].metadata["scientificName"] == "Bombus terrestris"
    assert "url" not in records[0].metadata


def test_csv(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("url,scientificName,license\n" + "\n".join(",".join(r.values()) for r in ROWS) + "\n")
    check(read_records(path))


def test_gzipped_tsv(tmp_path):
    path = tmp_path / "list.tsv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("url\tscientificName\tlicense\n" + "\n".join("\t".join(r.values()) for r in ROWS) + "\n")
    check(read_records(path))


def test_jsonl(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    check(read_records(path))


def test_parquet(tmp_path):
    path = tmp_path / "list.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    check(read_records(path))


def test_idigbio_column_is_found_without_url_col(tmp_path):
    path = tmp_path / "media.csv"
    path.write_text("coreid,ac:accessURI,dcterms:rights\n1,http://x.example/m.jpg,CC0\n")
    assert [r.url for r in read_records(path)] == ["http://x.example/m.jpg"]


def test_named_column_must_exist(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("link\nhttp://a.example/1.jpg\n")
    with pytest.raises(InputError, match="no column 'url'"):
        list(read_records(path, "url"))
    assert [r.url for r in read_records(path, "link")] == ["http://a.example/1.jpg"]


def test_unknown_extension_and_missing_file_are_clear(tmp_path):
    with pytest.raises(InputError, match="unknown format"):
        list(read_records(tmp_path / "list.xlsx"))
    with pytest.raises(InputError, match="no such file"):
        list(read_records(tmp_path / "absent.csv"))


def test_an_empty_url_still_becomes_a_record(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("url,genus\n,Apis\n")
    assert [(r.url, r.metadata["genus"]) for r in read_records(path)] == [("", "Apis")]
