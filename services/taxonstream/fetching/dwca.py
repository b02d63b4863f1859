"""Darwin Core Archives as users download them (a GBIF download .zip, or the unpacked folder): media rows
joined to their occurrence.

meta.xml says, per data file, its delimiter, quote, header lines, encoding and which column holds which
term (by IRI; named here by the IRI's last segment, `http://rs.tdwg.org/ac/terms/accessURI` → `accessURI`,
the names GBIF and Symbiota headers use). The media come from the multimedia extension (GBIF Simple
Multimedia or Audubon Core, or an Audubon Core core file); each media row is joined by `coreid` to its
core occurrence, whose taxonomy, coordinates, country, institution and catalogue number (CORE_FIELDS)
travel with it.

Written on zipfile + xml.etree + csv rather than python-dwca-reader (0.17): that package extracts the whole
archive to a temporary folder first (GBIF downloads run to tens of GB) and decodes with errors="replace",
which would hide exactly the encoding problems this project refuses; here members are streamed from the zip
and every row keeps the line it starts on.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from xml.etree import ElementTree

from taxonstream.fetching.tables import Dialect, TableError, parse_delimiter, records, text_lines

MEDIA_ROW_TYPES = {
    "http://rs.gbif.org/terms/1.0/Multimedia",  # GBIF Simple Multimedia
    "http://rs.tdwg.org/ac/terms/Multimedia",  # Audubon Core
    "http://rs.gbif.org/terms/1.0/Image",  # the older GBIF image extension
}
# Occurrence fields that travel with each image (the index's taxonomy facets read the rank names).
CORE_FIELDS = (
    "kingdom",
    "phylum",
    "class",
    "order",
    "family",
    "genus",
    "specificEpithet",
    "infraspecificEpithet",
    "species",
    "taxonRank",
    "scientificName",
    "vernacularName",
    "decimalLatitude",
    "decimalLongitude",
    "country",
    "countryCode",
    "stateProvince",
    "institutionCode",
    "collectionCode",
    "catalogNumber",
    "occurrenceID",
    "basisOfRecord",
    "eventDate",
    "recordedBy",
)
LINE = "source_line"


@dataclass
class DataFile:
    """One <core> or <extension> of meta.xml."""

    location: str
    row_type: str
    dialect: Dialect
    encoding: str
    id_index: int | None
    columns: dict[int, str]  # index -> short term name
    defaults: dict[str, str] = field(default_factory=dict)  # terms with a constant value and no column

    @property
    def names(self) -> list[str]:
        return [self.columns[i] for i in sorted(self.columns)] + [
            n for n in self.defaults if n not in self.columns.values()
        ]


def short_term(iri: str) -> str:
    return iri.rstrip("/#").replace("#", "/").rsplit("/", 1)[-1]


def _unescape(value: str) -> str:
    return value.replace("\\t", "\t").replace("\\n", "\n").replace("\\r", "\r")


def _data_file(element: ElementTree.Element, id_tag: str, where: str) -> DataFile:
    def local(tag: str) -> str:
        return tag.rsplit("}", 1)[-1]

    children = {local(c.tag): c for c in element}
    files = next((c for c in element.iter() if local(c.tag) == "location"), None)
    if files is None or not (files.text or "").strip():
        raise TableError(f"{where}: meta.xml names no <location> for a {local(element.tag)}")
    quote = _unescape(element.get("fieldsEnclosedBy", '"'))
    try:
        delimiter = parse_delimiter(_unescape(element.get("fieldsTerminatedBy", ",")))
        headers = int(element.get("ignoreHeaderLines", "0"))
    except (TableError, ValueError) as error:
        raise TableError(f"{where}: meta.xml {local(element.tag)}: {error}") from None
    columns: dict[int, str] = {}
    defaults: dict[str, str] = {}
    identifier = children.get(id_tag)
    id_index = int(identifier.get("index", "0")) if identifier is not None else None
    for child in element:
        if local(child.tag) != "field":
            continue
        name = short_term(child.get("term", ""))
        if child.get("index") is not None:
            index = int(child.get("index", "0"))
            taken = set(columns.values())
            columns[index] = name if name not in taken else f"{name}_{index}"
        elif child.get("default") is not None:
            defaults[name] = child.get("default", "")
    if id_index is not None and id_index not in columns:
        columns[id_index] = "id" if id_tag == "id" else "coreid"
    return DataFile(
        location=(files.text or "").strip(),
        row_type=element.get("rowType", ""),
        dialect=Dialect(delimiter, quote or None, headers),
        encoding=element.get("encoding", "UTF-8"),
        id_index=id_index,
        columns=columns,
        defaults=defaults,
    )


class Archive:
    """A DwC-A zip or folder: its meta.xml and its data files, streamed (nothing is extracted)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        self.prefix = ""
        if path.is_dir():
            meta = path / "meta.xml"
            if not meta.is_file():
                raise TableError(f"{path}: a folder without meta.xml is not a Darwin Core Archive")
            text = meta.read_bytes()
        else:
            try:
                self.zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as error:
                raise TableError(f"{path}: not a readable zip archive ({error})") from None
            names = [n for n in self.zip.namelist() if n.rsplit("/", 1)[-1] == "meta.xml"]
            if not names:
                raise TableError(f"{path}: no meta.xml in the archive, so it is not a Darwin Core Archive")
            meta_name = min(names, key=len)  # the top-level one (an archive may wrap everything in a folder)
            self.prefix = meta_name[: -len("meta.xml")]
            text = self.zip.read(meta_name)
        try:
            root = ElementTree.fromstring(text)
        except ElementTree.ParseError as error:
            raise TableError(f"{path}: meta.xml is not valid XML ({error})") from None
        cores = [e for e in root if e.tag.rsplit("}", 1)[-1] == "core"]
        if len(cores) != 1:
            raise TableError(f"{path}: meta.xml must have one <core>, not {len(cores)}")
        self.core = _data_file(cores[0], "id", str(path))
        self.extensions = [_data_file(e, "coreid", str(path)) for e in root if e.tag.rsplit("}", 1)[-1] == "extension"]

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()

    def media_file(self) -> DataFile:
        for data in (*self.extensions, self.core):
            if data.row_type in MEDIA_ROW_TYPES:
                return data
        kinds = ", ".join(short_term(d.row_type) for d in (self.core, *self.extensions))
        raise TableError(f"{self.path}: no multimedia extension in the archive (it has: {kinds})")

    def _open(self, data: DataFile) -> IO[bytes]:
        if self.zip is None:
            target = self.path / data.location
            if not target.is_file():
                raise TableError(f"{self.path}: meta.xml names {data.location}, which is not in the folder")
            return open(target, "rb")
        try:
            return io.BufferedReader(self.zip.open(self.prefix + data.location))  # type: ignore[arg-type]
        except KeyError:
            raise TableError(f"{self.path}: meta.xml names {data.location}, which is not in the archive") from None

    def rows(self, data: DataFile, encoding: str | None = None) -> Iterator[tuple[int, dict[str, str] | str]]:
        """(line, row by term name) for each data row of `data`, or (line, error) for a broken one."""
        where = Path(f"{self.path}/{data.location}")
        names = data.columns
        with self._open(data) as handle:
            lines = text_lines(where, encoding or _encoding(data.encoding), source=handle)
            for record in records(lines, data.dialect, lambda: 0):
                if record.line <= data.dialect.header_lines:
                    continue
                if record.fields is None:
                    yield record.line, f"{data.location} line {record.line}: {record.error}"
                    continue
                if len(record.fields) > len(names) and max(names, default=-1) < len(record.fields) - 1:
                    extra = record.fields[max(names, default=-1) + 1 :]
                    if any(v.strip() for v in extra):
                        yield record.line, f"{data.location} line {record.line}: more fields than meta.xml names"
                        continue
                row = dict(data.defaults)
                for index, name in names.items():
                    row[name] = record.fields[index] if index < len(record.fields) else ""
                yield record.line, row


def _encoding(declared: str) -> str | None:
    """meta.xml's encoding: UTF-8 is read with BOM detection (the reader's default), others as declared."""
    return None if declared.replace("-", "").lower() in ("utf8", "") else declared


def media_rows(path: Path, encoding: str | None = None) -> Iterator[tuple[int, dict[str, str] | str]]:
    """(line in the media file, media row with its occurrence's CORE_FIELDS) for every media row."""
    archive = Archive(path)
    try:
        media = archive.media_file()
        core_by_id: dict[str, dict[str, str]] = {}
        joined = media is not archive.core and media.id_index is not None
        media_id = media.columns.get(media.id_index or 0, "coreid")
        if joined:
            wanted = set()
            for _line, row in archive.rows(media, encoding):  # pass 1: the occurrences the media point at
                if isinstance(row, dict):
                    wanted.add(row.get(media_id, ""))
            core_id = archive.core.columns.get(archive.core.id_index or 0, "id")
            for _line, row in archive.rows(archive.core, encoding):  # pass 2: only their CORE_FIELDS
                if isinstance(row, dict) and row.get(core_id, "") in wanted:
                    core_by_id[row[core_id]] = {k: row[k] for k in CORE_FIELDS if row.get(k, "")}
        for line, row in archive.rows(media, encoding):
            if isinstance(row, dict) and joined:
                occurrence = core_by_id.get(row.get(media_id, ""), {})
                row = {**row, **{k: v for k, v in occurrence.items() if not row.get(k, "")}}
            yield line, row
    finally:
        archive.close()


def is_archive(path: Path) -> bool:
    return path.suffix.lower() == ".zip" or (path.is_dir() and (path / "meta.xml").is_file())
