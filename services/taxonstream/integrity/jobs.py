"""A job's manifest and duplicate groups, from the row objects the checksummer writes.

Why objects that are never appended to: the checksummer runs as several replicas and Kafka delivers at least
once, so each worker batch's rows of a job are written as one object (named by the batch's record ids) by
whichever replica verified them, before its offsets are committed; nothing has to be appended or merged. A
batch redelivered whole rewrites the same object; one cut differently writes another holding some of the
same records, so assembly keeps one row per record id. The manifest is assembled when asked for. Keys
(next to the fetcher's `jobs/<job_id>/records-NNNNNN.json`):

  jobs/<job_id>/manifest/row-batches/<digest>.json         {"rows": [row, ...]}: one batch's rows of the job
  jobs/<job_id>/manifest/rows/<record id, %-quoted>.json   one record's row (written before row batches)
  jobs/<job_id>/manifest.csv | manifest.parquet            the last assembled manifest

A row holds the ManifestRow fields plus the record's row number and sha256. One object per batch instead of
one per record: ~1 S3 PUT per 32 records instead of 32.

Rows exist for records whose stored bytes the checksummer verified: new images, exact duplicates (linked to
the image by `image_id`/`duplicate_of`) and near duplicates. Records that failed (download, validation, a
checksum mismatch) have no row; the job's outcome report lists them with their reason, and the assembly
reports which submitted records have no row.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taxonstream.core.keys import (
    job_records_prefix,
    manifest_row_batch_key,
    manifest_row_batches_prefix,
    manifest_row_key,
    manifest_rows_prefix,
    provenance_key,
)
from taxonstream.integrity.manifest import ManifestRow, filename_of_url, license_of, object_path, write_manifest
from taxonstream.integrity.neardup import connected
from taxonstream.integrity.phash import from_hex
from taxonstream.integrity.registry import DuplicateRegistry, Store

FORMATS = ("csv", "parquet")


# The key layout lives in core/keys.py; these names are the ones the checksummer and tests use.
rows_prefix = manifest_rows_prefix
row_key = manifest_row_key
row_batches_prefix = manifest_row_batches_prefix


def row_batches(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The objects that store these rows: one per job, {key: {"rows": [...]}}, named by their record ids."""
    by_job: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_job.setdefault(str(row["job_id"]), []).append(row)
    return {
        manifest_row_batch_key(job, [str(r["record_id"]) for r in found]): {"rows": list(found)}
        for job, found in by_job.items()
    }


def manifest_row(
    *,
    bucket: str,
    object_key: str,
    sha256: str,
    size_bytes: int,
    record: Mapping[str, Any],
    digests: Mapping[str, str],
    image_id: str,
    phash: str,
    duplicate_of: str = "",
    near: Sequence[tuple[str, int]] = (),
) -> dict[str, Any]:
    """The stored row of one verified record: a ManifestRow's fields plus the record's row number and sha256."""
    url = str(record.get("url", ""))
    metadata = record.get("metadata") or {}
    row = ManifestRow(
        filepath=object_path(bucket, object_key),
        filename=filename_of_url(url, fallback=sha256),
        digests=dict(digests),
        key=object_key,
        source_url=url,
        license=license_of(metadata),
        record_id=str(record["record_id"]),
        job_id=str(record.get("job_id", "")),
        image_id=image_id,
        size_bytes=size_bytes,
        phash=phash,
        duplicate_of=duplicate_of,
        near_duplicates=tuple(near),
    )
    stored = dataclasses.asdict(row)
    stored["near_duplicates"] = [[i, d] for i, d in row.near_duplicates]
    return {**stored, "row": int(record.get("row", 0)), "sha256": sha256}


def to_manifest_row(stored: Mapping[str, Any]) -> ManifestRow:
    names = {f.name for f in dataclasses.fields(ManifestRow)}
    values = {k: v for k, v in stored.items() if k in names}
    values["near_duplicates"] = tuple((str(i), int(d)) for i, d in stored.get("near_duplicates", []))
    return ManifestRow(**values)


def algorithms_of(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Digest columns: md5 first (sum-buddy's default, so its readers find it third), then the rest sorted."""
    names = {a for r in rows for a in r.get("digests", {})}
    return sorted(names, key=lambda a: (a != "md5", a))


def load_rows(store: Store, job_id: str, threads: int = 16) -> list[dict[str, Any]]:
    """Every stored row of a job (per-record objects and row batches), one per record id, in the order the
    records were submitted. A record in several objects (redelivered) has the same answer in each: the
    per-record object, else the batch first by key, is kept."""
    keys = sorted(store.list(rows_prefix(job_id))) + sorted(store.list(row_batches_prefix(job_id)))
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(keys)))) as pool:
        found = list(pool.map(store.get_json, keys))
    rows: dict[str, dict[str, Any]] = {}
    for value in found:
        for row in value.get("rows", []) if isinstance(value, dict) and "rows" in value else [value]:
            if isinstance(row, dict) and "record_id" in row:
                rows.setdefault(str(row["record_id"]), row)
    return sorted(rows.values(), key=lambda r: (r.get("row", 0), r.get("record_id", "")))


def with_links(row: Mapping[str, Any], links: Iterable[tuple[str, int]]) -> dict[str, Any]:
    """A stored row with the near-duplicate links registered since it was written.

    A row lists the near duplicates known when its record was verified; a near copy verified later (or at
    the same moment on another replica) is linked in the registry in both directions, and belongs in the
    manifest too.
    """
    merged = {str(i): int(d) for i, d in row.get("near_duplicates", [])}
    for other, distance in links:
        if other != row.get("image_id"):
            merged.setdefault(other, int(distance))
    near = sorted(merged.items(), key=lambda item: (item[1], item[0]))
    return {**row, "near_duplicates": [[i, d] for i, d in near]}


def submitted_record_ids(store: Store, job_id: str) -> list[str]:
    """The record ids the fetcher kept for a job (empty: no such job, or submitted before it kept them)."""
    ids: list[str] = []
    for key in sorted(store.list(job_records_prefix(job_id))):
        ids.extend(str(r["record_id"]) for r in store.get_json(key) or [])
    return ids


def manifest_bytes(rows: Sequence[Mapping[str, Any]], fmt: str) -> tuple[bytes, list[str]]:
    """The manifest as CSV (sum-buddy's dialect) or Parquet bytes, and its digest columns."""
    if fmt not in FORMATS:
        raise ValueError(f"a manifest is one of {FORMATS}, not {fmt!r}")
    algorithms = algorithms_of(rows)
    with tempfile.TemporaryDirectory(prefix="taxonstream-manifest-") as folder:
        path = Path(folder) / f"manifest.{fmt}"
        write_manifest((to_manifest_row(r) for r in rows), path, algorithms)
        return path.read_bytes(), algorithms


# -- duplicate groups touching a job ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    record_id: str
    job_id: str
    url: str


@dataclass(frozen=True)
class ExactGroup:
    image_id: str
    sources: list[Source]  # every record that brought these bytes, from any job


@dataclass(frozen=True)
class NearMember:
    sha256: str  # the content
    image_id: str  # the image it belongs to (itself, or the image it was dropped for under policy "drop")
    phash: str
    source: Source  # the record that first brought it
    in_job: bool


@dataclass
class NearGroup:
    members: list[NearMember] = field(default_factory=list)
    pairs: list[tuple[str, str, int]] = field(default_factory=list)  # (sha256, sha256, bits), every close pair


@dataclass(frozen=True)
class JobDuplicates:
    exact: list[ExactGroup]
    near: list[NearGroup]
    contents: int  # distinct contents among the job's rows


def _source(entry: Mapping[str, Any]) -> Source:
    return Source(str(entry.get("record_id", "")), str(entry.get("job_id", "")), str(entry.get("url", "")))


def _order(source: Source, job: str) -> tuple[bool, str, int, str]:
    """The job's own records first, in submission order (record ids are "<job>:<row>"), then other jobs'."""
    _, _, row = source.record_id.rpartition(":")
    return (source.job_id != job, source.job_id, int(row) if row.isdigit() else -1, source.record_id)


def job_duplicates(
    rows: Sequence[Mapping[str, Any]],
    registry: DuplicateRegistry,
    max_distance: int | None = None,
    near_query: Any = None,
    threads: int = 16,
) -> JobDuplicates:
    """Exact groups (images of the job's rows with more than one source) and near groups (contents within the
    radius, transitively) that include at least one of the job's rows; other jobs' records appear as members.

    `near_query(phash, radius)` answers from the registry's pHash index (the caller may wrap it in a lock).
    """
    store = registry.store
    job = str(rows[0].get("job_id", "")) if rows else ""
    query = near_query or (lambda value, radius: registry.index.query(value, radius))
    radius = registry.max_distance if max_distance is None else max_distance

    # Exact: provenance entries of each image whose bytes are the image's own (a near duplicate dropped for
    # the image also has a provenance entry there, with other bytes; it belongs to a near group instead).
    images = sorted({str(r["image_id"]) for r in rows if r.get("image_id")})
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(images)))) as pool:
        found = list(pool.map(registry.sources, images))
    exact = []
    for image_id, entries in zip(images, found, strict=True):
        same = [e for e in entries if e and e.get("sha256", image_id) == image_id]
        if len(same) > 1:
            sources = sorted((_source(e) for e in same), key=lambda s: _order(s, job))
            exact.append(ExactGroup(image_id, sources))

    # Near: connected components of the close pairs, seeded by the job's own contents.
    own: dict[str, Mapping[str, Any]] = {}
    for r in rows:
        own.setdefault(str(r.get("sha256", r.get("image_id", ""))), r)
    pairs: dict[tuple[str, str], int] = {}
    phashes: dict[str, str] = {}
    for sha, r in own.items():
        if not r.get("phash"):
            continue
        phashes[sha] = str(r["phash"])
        for other, distance in query(from_hex(str(r["phash"])), radius):
            if other != sha:
                pairs[(min(sha, other), max(sha, other))] = int(distance)
    members: dict[str, NearMember] = {}
    for sha in {s for pair in pairs for s in pair}:
        if sha in own:
            r = own[sha]
            source = Source(str(r.get("record_id", "")), str(r.get("job_id", "")), str(r.get("source_url", "")))
            members[sha] = NearMember(sha, str(r.get("image_id", sha)), phashes.get(sha, ""), source, True)
            continue
        entry = registry.lookup(sha) or {}
        image_id = str(entry.get("image_id", sha))
        first = entry.get("source") or store.get_json(provenance_key(image_id, str(entry.get("record_id", "")))) or {}
        members[sha] = NearMember(sha, image_id, str(entry.get("phash", "")), _source(first), False)

    def member_order(sha: str) -> tuple:
        return (*_order(members[sha].source, job), sha)

    groups = []
    for component in connected((a, b, d) for (a, b), d in pairs.items()):
        keys = {k for a, b, _ in component for k in (a, b)}
        groups.append(
            NearGroup(
                members=[members[k] for k in sorted(keys, key=member_order)],
                pairs=sorted(component, key=lambda p: (p[2], p[0], p[1])),
            )
        )
    groups.sort(key=lambda g: member_order(g.members[0].sha256))
    return JobDuplicates(exact=exact, near=groups, contents=len(own))
