"""Per-job manifests: sum-buddy's columns (`filepath,filename,<algorithm>…`) first, then ours.

A tool that reads sum-buddy's CSV (cautious-robot's buddy-check, a curator's script) finds its columns where
it expects them; our columns follow: where the object is stored, where it came from, under which licence,
and how it relates to the rest of the collection. CSV is written exactly like sum-buddy's (csv.writer
defaults: CRLF, minimal quoting); Parquet holds the same columns, sizes as integers.
"""

from __future__ import annotations

import csv
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

EXTRA_COLUMNS = (
    "key",  # object key of the stored original
    "source_url",
    "license",
    "record_id",
    "job_id",
    "image_id",  # sha256 of the bytes: the image every exact duplicate links to
    "size_bytes",
    "phash",  # 16 hex digits
    "duplicate_of",  # image id of an earlier record with the same bytes, else empty
    "near_duplicates",  # "image_id:distance" entries separated by ";"
)

# Where iDigBio media records and GBIF multimedia rows keep the rights statement, most specific first.
LICENSE_COLUMNS = (
    "license",
    "dcterms:license",
    "xmpRights:UsageTerms",
    "dcterms:rights",
    "dc:rights",
    "rights",
    "xmpRights:WebStatement",
)


@dataclass(frozen=True)
class ManifestRow:
    filepath: str
    filename: str
    digests: Mapping[str, str]
    key: str = ""
    source_url: str = ""
    license: str = ""
    record_id: str = ""
    job_id: str = ""
    image_id: str = ""
    size_bytes: int | None = None
    phash: str = ""
    duplicate_of: str = ""
    near_duplicates: Sequence[tuple[str, int]] = field(default_factory=tuple)

    def values(self, algorithms: Sequence[str]) -> list[str | int | None]:
        near = ";".join(f"{image}:{distance}" for image, distance in self.near_duplicates)
        return [
            self.filepath,
            self.filename,
            *(self.digests.get(a, "") for a in algorithms),
            self.key,
            self.source_url,
            self.license,
            self.record_id,
            self.job_id,
            self.image_id,
            self.size_bytes,
            self.phash,
            self.duplicate_of,
            near,
        ]


def columns(algorithms: Sequence[str]) -> list[str]:
    return ["filepath", "filename", *algorithms, *EXTRA_COLUMNS]


def license_of(metadata: Mapping[str, str]) -> str:
    lowered = {k.lower(): v for k, v in metadata.items()}
    for name in LICENSE_COLUMNS:
        value = lowered.get(name.lower(), "").strip()
        if value:
            return value
    return ""


def filename_of_url(url: str, fallback: str = "") -> str:
    """The last path segment of a URL, decoded ('' paths and bare hosts give `fallback`)."""
    name = posixpath.basename(unquote(urlsplit(url).path))
    return name or fallback


def object_path(bucket: str, key: str) -> str:
    """sum-buddy's `filepath` for an object: a URI any S3 tool can read it from."""
    return f"s3://{bucket}/{key}"


def write_manifest(rows: Iterable[ManifestRow], path: str | Path, algorithms: Sequence[str]) -> int:
    """Write rows to `path` as CSV or Parquet (by extension); returns how many were written."""
    path = Path(path)
    header = columns(algorithms)
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        data = [r.values(algorithms) for r in rows]
        schema = pa.schema([(c, pa.int64() if c == "size_bytes" else pa.string()) for c in header])
        table = pa.Table.from_pylist([dict(zip(header, v, strict=True)) for v in data], schema=schema)
        pq.write_table(table, path)
        return len(data)
    if path.suffix.lower() != ".csv":
        raise ValueError(f"{path}: a manifest is .csv or .parquet")
    count = 0
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if v is None else v for v in row.values(algorithms)])
            count += 1
    return count


def read_manifest(path: str | Path) -> list[dict[str, str]]:
    """Rows of a manifest (ours or sum-buddy's, CSV or Parquet) as strings, missing values as ''."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return [{k: "" if v is None else str(v) for k, v in row.items()} for row in pq.read_table(path).to_pylist()]
    with open(path, newline="") as handle:
        return [dict(row) for row in csv.DictReader(handle)]
