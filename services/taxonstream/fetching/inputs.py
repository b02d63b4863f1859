"""Rows of a URL list (CSV, TSV, JSONL or Parquet, optionally gzipped) as SourceRecords.

Three kinds of list are recognised from their columns:
- iDigBio media records: the URL is `ac:accessURI`, else `ac:bestQualityAccessURI`, else `dcterms:identifier`
  (per row); format from `dcterms:format`/`dc:format`/`ac:bestQualityFormat`; rights and licence fields;
- GBIF multimedia extension rows (`identifier`, `type`, `format`, `license`, `rightsHolder`, `creator`,
  `references`): only still images are kept (type StillImage, or no type and an image format);
- anything else with a URL column (`url`, `image_url`, … or `--url-col`).
Every column travels as metadata; the normalised `format`, `license`, `rights`, `rights_holder`, `creator`
and `references` are added so the index can filter on them whatever the source called them.
A row that cannot be read (bad quoting, too many fields, broken JSON) becomes a record with no URL and an
`_input_error` in its metadata, so it ends as a recorded failure instead of stopping the whole list.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from taxonstream.v1.messages_pb2 import SourceRecord

# Tried in order when no --url-col is given: plain lists, iDigBio media records, GBIF multimedia.
URL_COLUMNS = ("url", "image_url", "ac:accessURI", "ac:bestQualityAccessURI", "identifier", "dcterms:identifier")
IDIGBIO_URLS = ("ac:accessURI", "ac:bestQualityAccessURI", "dcterms:identifier")
IDIGBIO_FORMATS = ("dcterms:format", "dc:format", "ac:bestQualityFormat")
IDIGBIO_LICENSES = ("dcterms:license", "xmpRights:WebStatement", "xmpRights:UsageTerms", "dcterms:rights", "dc:rights")
IDIGBIO_RIGHTS = ("dcterms:rights", "dc:rights", "xmpRights:UsageTerms", "xmpRights:WebStatement", "dcterms:license")
TYPE_COLUMNS = ("type", "dc:type", "dcterms:type")
# Darwin Core archives may name columns by full term IRI.
TERM_PREFIXES = {
    "http://rs.tdwg.org/ac/terms/": "ac:",
    "http://purl.org/dc/terms/": "dcterms:",
    "http://purl.org/dc/elements/1.1/": "dc:",
    "http://ns.adobe.com/xap/1.0/rights/": "xmpRights:",
}
INPUT_ERROR = "_input_error"


class InputError(ValueError):
    pass


@dataclass
class InputStats:
    """What reading a list found, for the summary: its kind and the rows it did not turn into records."""

    kind: str = ""
    rows: int = 0
    not_images: int = 0
    no_url: int = 0
    bad_rows: int = 0


def _kind(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    if kind in {".csv", ".tsv", ".txt", ".jsonl", ".json", ".parquet"}:
        return kind
    raise InputError(f"{path}: unknown format {kind or '(no extension)'}; use .csv, .tsv, .jsonl or .parquet")


def _text(path: Path) -> io.TextIOBase:
    if path.suffix.lower() == ".gz":
        return io.TextIOWrapper(gzip.open(path), encoding="utf-8-sig", newline="", errors="replace")
    return open(path, encoding="utf-8-sig", newline="", errors="replace")


def _short(name: object) -> str:
    name = str(name)
    for iri, prefix in TERM_PREFIXES.items():
        if name.startswith(iri):
            return prefix + name[len(iri) :]
    return name


def _bad(message: str) -> dict[str, object]:
    return {INPUT_ERROR: message}


def _csv_rows(handle: io.TextIOBase, path: Path, delimiter: str) -> Iterator[dict[str, object]]:
    # strict: an unterminated quote or text after a closing quote is an error, not a silently merged row.
    reader = csv.reader(handle, delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as error:
        raise InputError(f"{path}: the header row cannot be read: {error}") from error
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as error:  # the reader resumes at the next line
            yield _bad(f"line {reader.line_num}: {error}")
            continue
        if not values:
            continue
        if len(values) > len(header):
            yield _bad(f"line {reader.line_num}: {len(values)} fields where the header has {len(header)}")
            continue
        yield dict(zip(header, values + [""] * (len(header) - len(values)), strict=True))


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
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    yield _bad(f"line {number}: not JSON: {error}")
                    continue
                if not isinstance(row, dict):
                    row = _bad(f"line {number}: a JSON {type(row).__name__}, not an object")
                yield row
            return
        yield from _csv_rows(handle, path, "\t" if kind == ".tsv" else ",")


def url_column(columns: list[str], wanted: str | None) -> str:
    if wanted:
        if wanted not in columns:
            raise InputError(f"no column {wanted!r}; the columns are: {', '.join(columns)}")
        return wanted
    for candidate in URL_COLUMNS:
        if candidate in columns:
            return candidate
    raise InputError(f"no URL column found among {', '.join(columns)}; name it with --url-col")


def detect_kind(columns: list[str]) -> str:
    """'idigbio', 'gbif' or 'plain', from the columns a list has."""
    names = set(columns)
    if names & {"ac:accessURI", "ac:bestQualityAccessURI"}:
        return "idigbio"
    if "dcterms:identifier" in names and any(c.startswith(("ac:", "xmpRights:", "idigbio:")) for c in names):
        return "idigbio"
    if "identifier" in names and names & {"type", "format"} and not names & {"url", "image_url"}:
        return "gbif"
    return "plain"


def _first(row: dict[str, str], columns: tuple[str, ...]) -> str:
    for column in columns:
        value = row.get(column, "").strip()
        if value:
            return value
    return ""


def _still_image(row: dict[str, str], strict: bool) -> bool:
    """GBIF's rule: type StillImage, or no type and an image format. Lenient (iDigBio): no type is fine."""
    kind = _first(row, TYPE_COLUMNS).rsplit("/", 1)[-1].lower()
    if kind:
        return kind in ("stillimage", "image", "photograph")
    media = _first(row, ("format", *IDIGBIO_FORMATS)).lower()
    if not strict:
        return not media.startswith(("audio/", "video/"))
    return "image" in media


def _normalised(row: dict[str, str], kind: str) -> dict[str, str]:
    if kind == "idigbio":
        extra = {
            "format": _first(row, IDIGBIO_FORMATS),
            "license": _first(row, IDIGBIO_LICENSES),
            "rights": _first(row, IDIGBIO_RIGHTS),
            "rights_holder": _first(row, ("xmpRights:Owner", "dcterms:rightsHolder", "rightsHolder")),
            "creator": _first(row, ("dcterms:creator", "dc:creator", "creator")),
            "references": _first(row, ("ac:furtherInformationURL", "dcterms:references", "references")),
        }
    elif kind == "gbif":
        extra = {
            "format": row.get("format", ""),
            "license": row.get("license", ""),
            "rights_holder": row.get("rightsHolder", ""),
            "creator": row.get("creator", ""),
            "references": row.get("references", ""),
        }
    else:
        return {}
    return {k: v for k, v in extra.items() if v and k not in row}


def read_records(path: Path, url_col: str | None = None, stats: InputStats | None = None) -> Iterator[SourceRecord]:
    """Every row becomes a record (a bad URL fails at fetch time, recorded, instead of vanishing).

    GBIF rows that are not still images, or have no identifier, are left out and counted in `stats`.
    """
    _kind(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    stats = stats if stats is not None else InputStats()
    column: str | None = None
    for raw in _rows(path):
        stats.rows += 1
        if INPUT_ERROR in raw:
            stats.bad_rows += 1
            yield SourceRecord(url="", metadata={INPUT_ERROR: str(raw[INPUT_ERROR])})
            continue
        row = {_short(k): "" if v is None else str(v) for k, v in raw.items()}
        if not stats.kind:
            stats.kind = detect_kind(list(row))
            column = url_column(list(row), url_col) if url_col or stats.kind == "plain" else url_col
            if stats.kind == "gbif" and not column:
                column = "identifier"
        if stats.kind == "idigbio" and not column:
            url = _first(row, IDIGBIO_URLS)
            source = next((c for c in IDIGBIO_URLS if row.get(c, "").strip() == url and url), None)
        else:
            url, source = row.get(column, "").strip(), column
        if stats.kind in ("gbif", "idigbio") and not _still_image(row, strict=stats.kind == "gbif"):
            stats.not_images += 1
            continue
        if stats.kind == "gbif" and not url:
            stats.no_url += 1
            continue
        metadata = {k: v for k, v in row.items() if k != source}
        metadata.update(_normalised(row, stats.kind))
        yield SourceRecord(url=url, metadata=metadata)
