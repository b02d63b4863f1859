"""Land cover for a table of points (CSV, TSV or Parquet) and for index records' metadata."""

from __future__ import annotations

import csv
import threading
from collections.abc import Mapping
from pathlib import Path

from taxonstream.landcover.cover import BoxSizes, RasterCover
from taxonstream.landcover.crosswalk import COLUMNS, REASON_COLUMN, SHARE_COLUMNS
from taxonstream.landcover.points import Covers, cover_points

# Tried in order (case-insensitive, Darwin Core prefixes dropped) when no --lat-col/--lon-col is given.
LAT_NAMES = ("decimallatitude", "latitude", "lat")
LON_NAMES = ("decimallongitude", "longitude", "lon", "long", "lng")


class TableError(ValueError):
    """An input table this command cannot use (one line: what and where)."""


def coordinate_column(columns: list[str], wanted: str | None, names: tuple[str, ...], what: str) -> str:
    if wanted:
        if wanted not in columns:
            raise TableError(f"no {what} column {wanted!r}; the columns are {', '.join(columns[:20])}")
        return wanted
    bare = {c.split(":")[-1].strip().lower(): c for c in reversed(columns)}
    for name in names:
        if name in bare:
            return bare[name]
    raise TableError(f"no {what} column found (looked for {', '.join(names)}): name it with --{what[:3]}-col")


def read_table(path: Path) -> tuple[list[str], list[dict[str, object]]]:
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        return table.column_names, table.to_pylist()
    delimiter = "\t" if suffix in (".tsv", ".tab") else ","
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except (UnicodeDecodeError, csv.Error) as error:
        raise TableError(f"{path}: not a readable CSV ({error})") from None


def write_table(path: Path, columns: list[str], rows: list[dict[str, object]]) -> None:
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        # Typed columns: a share column is float64 with nulls where a row has none (CSV writes them empty).
        shares = set(SHARE_COLUMNS)
        typed = [{k: (None if k in shares and v == "" else v) for k, v in row.items()} for row in rows]
        pq.write_table(pa.Table.from_pylist(typed), path)
        return
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def cover_table(
    source: Path,
    target: Path,
    raster: str,
    lat_col: str | None = None,
    lon_col: str | None = None,
    sizes: BoxSizes | None = None,
    workers: int | None = None,
) -> Covers:
    """The input's rows with LatLonCover's columns (and a reason column) added, written to `target`."""
    columns, rows = read_table(source)
    lat = coordinate_column(columns, lat_col, LAT_NAMES, "latitude")
    lon = coordinate_column(columns, lon_col, LON_NAMES, "longitude")
    covers = cover_points(raster, [r.get(lat) for r in rows], [r.get(lon) for r in rows], sizes, workers)
    added = [*COLUMNS, REASON_COLUMN]
    out_columns = [c for c in columns if c not in added] + added
    out_rows = [{**row, **covers.columns(i)} for i, row in enumerate(rows)]
    write_table(target, out_columns, out_rows)
    return covers


class RecordCover:
    """The sixteen shares added to an index record's metadata (the indexer keeps one open raster)."""

    def __init__(self, raster: str, sizes: BoxSizes | None = None) -> None:
        self.raster = raster
        self.reader = RasterCover(raster, sizes)
        self._lock = threading.Lock()  # a GDAL dataset is not to be read from two threads at once

    def add(self, metadata: Mapping[str, str]) -> dict[str, str]:
        """`metadata` plus the shares when it has coordinates (or the reason it got none); else unchanged."""
        out = dict(metadata)
        columns = list(metadata)
        try:
            lat = coordinate_column(columns, None, LAT_NAMES, "latitude")
            lon = coordinate_column(columns, None, LON_NAMES, "longitude")
        except TableError:
            return out
        if not str(metadata[lat]).strip() and not str(metadata[lon]).strip():
            return out
        with self._lock:
            covers = cover_points(self.raster, [metadata[lat]], [metadata[lon]], workers=1, reader=self.reader)
        out.update(covers.metadata(0))
        return out

    def close(self) -> None:
        self.reader.close()
