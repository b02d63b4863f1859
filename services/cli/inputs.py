"""Rows of a URL list (CSV, TSV, JSONL or Parquet, optionally gzipped) as SourceRecords."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path

from taxonstream.v1.messages_pb2 import SourceRecord

# Tried in order when no --url-col is given: plain lists, iDigBio media records, GBIF multimedia.
URL_COLUMNS = ("url", "image_url", "ac:accessURI", "ac:bestQualityAccessURI", "identifier", "dcterms:identifier")


class InputError(ValueError):
    pass


def _kind(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    if kind in {".csv", ".tsv", ".txt", ".jsonl", ".json", ".parquet"}:
        return kind
    raise InputError(f"{path}: unknown format {kind or '(no extension)'}; use .csv, .tsv, .jsonl or .parquet")


def _text(path: Path) -> io.TextIOBase:
    if path.suffix.lower() == ".gz":
        return io.TextIOWrapper(gzip.open(path), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _rows(path: Path) -> Iterator[dict[str, object]]:
    kind = _kind(path)
    if kind == ".parquet":
        import pyarrow.parquet as pq

        # Batches, not the whole table: a 100M-row list must not land in memory at once.
        for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000):
            yield from batch.to_pylist()
        return
    with _text(path) as handle:
        if kind in {".jsonl", ".json"}:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise InputError(f"{path}:{number}: not a JSON object per line: {error}") from error
                    if not isinstance(row, dict):
                        raise InputError(f"{path}:{number}: expected a JSON object")
                    yield row
            return
        yield from csv.DictReader(handle, delimiter="\t" if kind == ".tsv" else ",")


def url_column(columns: list[str], wanted: str | None) -> str:
    if wanted:
        if wanted not in columns:
            raise InputError(f"no column {wanted!r}; the columns are: {', '.join(columns)}")
        return wanted
    for candidate in URL_COLUMNS:
        if candidate in columns:
            return candidate
    raise InputError(f"no URL column found among {', '.join(columns)}; name it with --url-col")


def read_records(path: Path, url_col: str | None = None) -> Iterator[SourceRecord]:
    """Every row becomes a record (a bad URL fails at fetch time, recorded, instead of vanishing)."""
    _kind(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    column = None
    for row in _rows(path):
        if column is None:
            column = url_column(list(row), url_col)
        url = row.get(column)
        metadata = {str(k): "" if v is None else str(v) for k, v in row.items() if k != column}
        yield SourceRecord(url="" if url is None else str(url).strip(), metadata=metadata)
