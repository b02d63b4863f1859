"""Rows of a URL list (CSV, TSV, TXT, JSONL or Parquet, optionally gzipped, or a Darwin Core Archive) as
SourceRecords.

Four kinds of list are recognised from their columns:
- iDigBio media records (`ac:` / `dcterms:` prefixed): iDigBio's own URL rule, per row — `ac:accessURI`,
  else `ac:bestQualityAccessURI`, else, only when the row has no `ac:` value at all, `dcterms:identifier`,
  else `dc:identifier`;
- Audubon Core with unprefixed terms (a DwC-A multimedia extension, Symbiota exports: `accessURI`,
  `identifier`, `Owner`, `rights`, `UsageTerms`, `WebStatement`): the same rule, so `identifier` (often a
  UUID) is a URL only when no Audubon term is filled;
- GBIF multimedia extension rows (`identifier`, `type`, `format`, `license`, `rightsHolder`, `creator`,
  `references`): only still images are kept (type StillImage, or no type and an image format);
- anything else with a URL column (`url`, `image_url`, … or `--url-col`, matched case-insensitively).
Every column travels as metadata, with `source_line` (the line the row starts on, the header being line 1;
the row number for Parquet); the normalised `format`, `license`, `rights`, `rights_holder`, `creator` and
`references` are added so the index can filter on them whatever the source called them.
A row that cannot be read (bad quoting, too many fields, broken JSON) becomes a record with no URL and an
`_input_error` in its metadata, so it ends as a recorded failure instead of stopping the whole list.
Rows left out (not a still image; no URL where asked) are told to `on_skip` with their line and reason.
A file with no data rows, an undecodable byte, a broken Parquet or gzip file is an InputError, one line.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from taxonstream.fetching import dwca, tables
from taxonstream.v1.messages_pb2 import SourceRecord

# Tried in order when no --url-col is given: plain lists, iDigBio media records, GBIF multimedia.
URL_COLUMNS = ("url", "image_url", "ac:accessURI", "ac:bestQualityAccessURI", "identifier", "dcterms:identifier")
# iDigBio's rule (idb-backend): access URIs first; identifiers only where no Audubon Core term is filled.
ACCESS_URIS = ("ac:accessURI", "accessURI", "ac:bestQualityAccessURI", "bestQualityAccessURI")
IDENTIFIER_URLS = ("dcterms:identifier", "identifier", "dc:identifier")
# Audubon Core terms as unprefixed column names (Symbiota, DwC-A extensions named by the IRI's last segment).
AC_TERMS = {
    "accessURI",
    "bestQualityAccessURI",
    "goodQualityAccessURI",
    "mediumQualityAccessURI",
    "thumbnailAccessURI",
    "furtherInformationURL",
    "associatedSpecimenReference",
    "associatedObservationReference",
    "subtype",
    "subjectPart",
    "subjectOrientation",
    "caption",
    "hashFunction",
    "hashValue",
    "variantLiteral",
    "providerManagedID",
    "metadataLanguage",
    "metadataLanguageLiteral",
}
FORMATS = ("dcterms:format", "dc:format", "format", "ac:bestQualityFormat", "bestQualityFormat")
LICENSES = (
    "dcterms:license",
    "license",
    "xmpRights:WebStatement",
    "WebStatement",
    "xmpRights:UsageTerms",
    "UsageTerms",
    "dcterms:rights",
    "dc:rights",
    "rights",
)
RIGHTS = (
    "dcterms:rights",
    "dc:rights",
    "rights",
    "xmpRights:UsageTerms",
    "UsageTerms",
    "xmpRights:WebStatement",
    "WebStatement",
    "dcterms:license",
    "license",
)
RIGHTS_HOLDERS = ("xmpRights:Owner", "Owner", "dcterms:rightsHolder", "rightsHolder", "dc:rightsHolder")
CREATORS = ("dcterms:creator", "dc:creator", "creator")
REFERENCES = ("ac:furtherInformationURL", "furtherInformationURL", "dcterms:references", "references")
TYPE_COLUMNS = ("type", "dc:type", "dcterms:type")
# Darwin Core archives may name columns by full term IRI.
TERM_PREFIXES = {
    "http://rs.tdwg.org/ac/terms/": "ac:",
    "http://purl.org/dc/terms/": "dcterms:",
    "http://purl.org/dc/elements/1.1/": "dc:",
    "http://ns.adobe.com/xap/1.0/rights/": "xmpRights:",
}
INPUT_ERROR = "_input_error"
LINE = dwca.LINE
NOT_IMAGE, NO_URL = "not_still_image", "no_url"

# (line, reason, the row's columns) for a row left out.
OnSkip = Callable[[int, str, dict[str, str]], None]


class InputError(ValueError):
    pass


@dataclass
class InputStats:
    """What reading a list found, for the summary: its kind, its columns and the rows it left out."""

    kind: str = ""
    rows: int = 0
    not_images: int = 0
    no_url: int = 0
    bad_rows: int = 0
    columns: list[str] = field(default_factory=list)
    url_column: str = ""
    skipped: Counter = field(default_factory=Counter)  # by reason


SUFFIXES = {".csv", ".tsv", ".txt", ".jsonl", ".json", ".parquet"}


def _kind(path: Path) -> str:
    if dwca.is_archive(path):
        return ".zip"
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    if kind in SUFFIXES:
        return kind
    raise InputError(
        f"{path}: unknown format {kind or '(no extension)'}; use .csv, .tsv, .txt, .jsonl, .parquet "
        "or a Darwin Core Archive (.zip or its folder)"
    )


def _short(name: object) -> str:
    name = str(name)
    for iri, prefix in TERM_PREFIXES.items():
        if name.startswith(iri):
            return prefix + name[len(iri) :]
    return name


def _bad(message: str, line: int) -> dict[str, object]:
    return {INPUT_ERROR: message, LINE: line}


def _csv_rows(path: Path, encoding: str | None, delimiter: str | None) -> Iterator[tuple[int, dict[str, object]]]:
    dialect = tables.sniff_dialect(path, encoding, delimiter)
    header: list[str] = []
    for record in tables.records(tables.text_lines(path, encoding), dialect, lambda: len(header)):
        if not header:
            if record.fields is None:
                raise InputError(f"{path}: the header row (line {record.line}) cannot be read: {record.error}")
            header.extend(record.fields)
            continue
        if record.fields is None:
            yield record.line, _bad(f"line {record.line}: {record.error}", record.line)
            continue
        values = record.fields
        if len(values) > len(header):
            message = f"line {record.line}: {len(values)} fields where the header has {len(header)}"
            yield record.line, _bad(message, record.line)
            continue
        yield record.line, dict(zip(header, values + [""] * (len(header) - len(values)), strict=True))
    if not header:
        raise InputError(f"{path}: empty file (no header, no rows)")


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, object]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        source = pq.ParquetFile(path)
        number = 0
        # Batches, not the whole table: a 100M-row list must not land in memory at once.
        for batch in source.iter_batches(batch_size=10_000):
            for row in batch.to_pylist():
                number += 1
                yield number, row
    except (pa.ArrowException, OSError) as error:
        raise InputError(f"{path}: not a readable Parquet file ({error})") from None


def _json_rows(path: Path, encoding: str | None) -> Iterator[tuple[int, dict[str, object]]]:
    for number, line in enumerate(tables.text_lines(path, encoding), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            yield number, _bad(f"line {number}: not JSON: {error}", number)
            continue
        if not isinstance(row, dict):
            row = _bad(f"line {number}: a JSON {type(row).__name__}, not an object", number)
        yield number, row


def _archive_rows(path: Path, encoding: str | None) -> Iterator[tuple[int, dict[str, object]]]:
    for line, row in dwca.media_rows(path, encoding):
        yield line, (_bad(row, line) if isinstance(row, str) else row)


def _rows(path: Path, encoding: str | None, delimiter: str | None) -> Iterator[tuple[int, dict[str, object]]]:
    kind = _kind(path)
    try:
        if kind == ".zip":
            yield from _archive_rows(path, encoding)
        elif kind == ".parquet":
            yield from _parquet_rows(path)
        elif kind in {".jsonl", ".json"}:
            yield from _json_rows(path, encoding)
        else:
            yield from _csv_rows(path, encoding, delimiter)
    except tables.TableError as error:
        raise InputError(str(error)) from None
    except (OSError, EOFError) as error:  # a truncated .gz, an unreadable file
        raise InputError(f"{path}: cannot be read ({error})") from None


def find_column(columns: list[str], wanted: str, option: str) -> str:
    """`wanted` as the header spells it (matched case-insensitively, like cautious-robot), or InputError."""
    if wanted in columns:
        return wanted
    matches = [c for c in columns if c.lower() == wanted.lower()]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise InputError(f"{option} {wanted!r} matches several columns: {', '.join(matches)}")
    raise InputError(f"{option}: no column {wanted!r}; the columns are: {', '.join(columns)}")


def url_column(columns: list[str], wanted: str | None) -> str:
    if wanted:
        return find_column(columns, wanted, "--url-col")
    for candidate in URL_COLUMNS:
        if candidate in columns:
            return candidate
    raise InputError(f"no URL column found among {', '.join(columns)}; name it with --url-col")


def detect_kind(columns: list[str]) -> str:
    """'idigbio', 'audubon', 'gbif' or 'plain', from the columns a list has."""
    names = set(columns)
    if names & {"ac:accessURI", "ac:bestQualityAccessURI"}:
        return "idigbio"
    if "dcterms:identifier" in names and any(c.startswith(("ac:", "xmpRights:", "idigbio:")) for c in names):
        return "idigbio"
    if names & {"accessURI", "bestQualityAccessURI"}:
        return "audubon"
    if "identifier" in names and names & {"type", "format"} and not names & {"url", "image_url"}:
        return "gbif"
    return "plain"


def _first(row: dict[str, str], columns: tuple[str, ...]) -> str:
    for column in columns:
        value = row.get(column, "").strip()
        if value:
            return value
    return ""


def audubon_url(row: dict[str, str]) -> tuple[str, str | None]:
    """(URL, the column it came from) by iDigBio's rule."""
    for column in ACCESS_URIS:
        if row.get(column, "").strip():
            return row[column].strip(), column
    if any(v.strip() and (k.startswith("ac:") or k in AC_TERMS) for k, v in row.items()):
        return "", None  # an Audubon Core record without an access URI: its identifier is not a URL
    for column in IDENTIFIER_URLS:
        if row.get(column, "").strip():
            return row[column].strip(), column
    return "", None


def _still_image(row: dict[str, str], strict: bool) -> bool:
    """GBIF's rule: type StillImage, or no type and an image format. Lenient (iDigBio): no type is fine."""
    kind = _first(row, TYPE_COLUMNS).rsplit("/", 1)[-1].lower()
    if kind:
        return kind in ("stillimage", "image", "photograph")
    media = _first(row, FORMATS).lower()
    if not strict:
        return not media.startswith(("audio/", "video/"))
    return "image" in media


def _normalised(row: dict[str, str], kind: str) -> dict[str, str]:
    if kind not in ("idigbio", "audubon", "gbif"):
        return {}
    extra = {
        "format": _first(row, FORMATS),
        "license": _first(row, LICENSES),
        "rights": _first(row, RIGHTS),
        "rights_holder": _first(row, RIGHTS_HOLDERS),
        "creator": _first(row, CREATORS),
        "references": _first(row, REFERENCES),
    }
    if kind == "gbif":
        extra.pop("rights")
    return {k: v for k, v in extra.items() if v and k not in row}


def read_records(
    path: Path,
    url_col: str | None = None,
    stats: InputStats | None = None,
    *,
    delimiter: str | None = None,
    encoding: str | None = None,
    limit: int | None = None,
    on_skip: OnSkip | None = None,
    skip_empty_urls: bool = False,
) -> Iterator[SourceRecord]:
    """Every row becomes a record (a bad URL fails at fetch time, recorded, instead of vanishing).

    Rows that are not still images (GBIF, iDigBio, Audubon Core), GBIF rows without an identifier and, with
    `skip_empty_urls`, any row without a URL are left out: counted in `stats` and told to `on_skip`.
    `limit` counts input rows, whatever becomes of them. Raises InputError when the list has no data rows.
    """
    _kind(path)
    if not (path.is_file() or path.is_dir()):
        raise InputError(f"{path}: no such file")
    stats = stats if stats is not None else InputStats()
    column: str | None = None

    def skip(line: int, reason: str, row: dict[str, str]) -> None:
        stats.skipped[reason] += 1
        if reason == NOT_IMAGE:
            stats.not_images += 1
        else:
            stats.no_url += 1
        if on_skip is not None:
            on_skip(line, reason, row)

    for line, raw in _rows(path, encoding, delimiter):
        if limit is not None and stats.rows >= limit:
            return
        stats.rows += 1
        if INPUT_ERROR in raw:
            stats.bad_rows += 1
            yield SourceRecord(url="", metadata={INPUT_ERROR: str(raw[INPUT_ERROR]), LINE: str(line)})
            continue
        row = {_short(k): "" if v is None else str(v) for k, v in raw.items()}
        if not stats.kind:
            stats.columns = list(row)
            stats.kind = detect_kind(stats.columns)
            column = url_column(stats.columns, url_col) if url_col or stats.kind == "plain" else None
            if stats.kind == "gbif" and not column:
                column = "identifier"
            stats.url_column = column or "url"
        if stats.kind in ("idigbio", "audubon") and not column:
            url, source = audubon_url(row)
        else:
            url, source = row.get(column or "", "").strip(), column
        if stats.kind in ("gbif", "idigbio", "audubon") and not _still_image(row, strict=stats.kind == "gbif"):
            skip(line, NOT_IMAGE, row)
            continue
        if not url and (stats.kind == "gbif" or skip_empty_urls):
            skip(line, NO_URL, row)
            continue
        metadata = {k: v for k, v in row.items() if k != source}
        metadata.update(_normalised(row, stats.kind))
        metadata[LINE] = str(line)
        yield SourceRecord(url=url, metadata=metadata)
    if stats.rows == 0:
        raise InputError(f"{path}: no data rows (only a header, or nothing)")
