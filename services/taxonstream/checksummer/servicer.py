"""Checksummer gRPC API: digests, duplicate look-ups, buddy-checks, job manifests and duplicate reports."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from taxonstream.checksummer.worker import phash_or_none
from taxonstream.core.errors import InvalidArgument, NotFound
from taxonstream.core.keys import manifest_key
from taxonstream.core.store import ObjectStore, original_key
from taxonstream.integrity.buddycheck import ExpectedChecksumError, describe, expected_checksums, verify
from taxonstream.integrity.checksums import ChecksumError, digest_bytes, parse_algorithms
from taxonstream.integrity.jobs import (
    FORMATS,
    job_duplicates,
    load_rows,
    manifest_bytes,
    submitted_record_ids,
    with_links,
)
from taxonstream.integrity.phash import from_hex
from taxonstream.integrity.registry import DuplicateRegistry
from taxonstream.v1 import checksummer_pb2, checksummer_pb2_grpc
from taxonstream.v1.messages_pb2 import NearImage

log = logging.getLogger(__name__)
MANIFEST_PART = 1 << 20  # bytes per streamed part of a manifest


class ChecksummerServicer(checksummer_pb2_grpc.ChecksummerServicer):
    def __init__(self, store: ObjectStore, registry: DuplicateRegistry, lock: threading.Lock | None = None) -> None:
        self.store = store
        self.registry = registry
        self.lock = lock or threading.Lock()  # the worker's: the pHash index changes under the worker and observer

    def Checksum(self, request, context) -> checksummer_pb2.ChecksumResponse:
        if request.HasField("object_key"):
            try:
                data = self.store.get(request.object_key)
            except KeyError:
                raise NotFound(f"no object {request.object_key!r}") from None
        else:
            data = request.data
        try:
            values = digest_bytes(data, parse_algorithms(list(request.algorithms) or ["md5", "sha256"]))
        except ChecksumError as error:
            raise InvalidArgument(str(error)) from error
        return checksummer_pb2.ChecksumResponse(digests=values, size_bytes=len(data))

    def FindDuplicates(self, request, context) -> checksummer_pb2.FindDuplicatesResponse:
        radius = request.max_distance or None
        if request.HasField("image"):
            sha256 = digest_bytes(request.image, parse_algorithms(["sha256"]))["sha256"]
            phash = phash_or_none(request.image)
            if phash is None:
                raise InvalidArgument("the image does not decode, or is featureless (no pHash)")
        else:
            sha256, phash = request.sha256.lower(), None
        entry = self.registry.lookup(sha256)
        if phash is None and entry and entry.get("phash"):
            phash = from_hex(entry["phash"])
        image_id = entry["image_id"] if entry else ""
        records = sorted(s["record_id"] for s in self.registry.sources(image_id)) if image_id else []
        with self.lock:
            near = [] if phash is None else self.registry.near_images(phash, radius)
        return checksummer_pb2.FindDuplicatesResponse(
            image_id=image_id,
            record_ids=records,
            near=[NearImage(image_id=i, distance=d) for i, d in near if i != image_id],
        )

    def BuddyCheck(self, request, context) -> checksummer_pb2.BuddyCheckResponse:
        response = checksummer_pb2.BuddyCheckResponse()
        for row in request.rows:
            try:
                expected = expected_checksums(dict(row.expected))
                data = self.store.get(original_key(row.sha256.lower()))
            except ExpectedChecksumError as error:
                raise InvalidArgument(f"{row.name}: {error}") from error
            except KeyError:
                response.missing += 1
                response.results.add(name=row.name, ok=False, problem="missing")
                continue
            mismatches = verify(data, expected)
            response.mismatched += bool(mismatches)
            response.results.add(name=row.name, ok=not mismatches, problem=describe(mismatches))
        return response

    def JobManifest(self, request, context) -> Iterator[checksummer_pb2.JobManifestPart]:
        fmt = (request.format or "csv").lower().lstrip(".")
        if fmt not in FORMATS:
            raise InvalidArgument(f"format must be one of {FORMATS}, not {fmt!r}")
        job_id = self._job_id(request.job_id)
        records = submitted_record_ids(self.store, job_id)
        rows = load_rows(self.store, job_id)
        if not records and not rows:
            raise NotFound(f"no job {job_id!r}")
        if self.registry.policy == "link":  # near images registered after a row was written, from memory
            with self.lock:
                rows = [
                    with_links(row, self.registry.links(row["image_id"]) if row.get("phash") else []) for row in rows
                ]
        data, algorithms = manifest_bytes(rows, fmt)
        key = manifest_key(job_id, fmt)
        self.store.put(key, data, "text/csv" if fmt == "csv" else "application/vnd.apache.parquet")
        with_row = {r["record_id"] for r in rows}
        without = [r for r in records if r not in with_row]
        for start in range(0, len(data), MANIFEST_PART):
            yield checksummer_pb2.JobManifestPart(data=data[start : start + MANIFEST_PART])
        summary = checksummer_pb2.JobManifestSummary(
            job_id=job_id,
            key=key,
            format=fmt,
            algorithms=algorithms,
            records=len(records),
            rows=len(rows),
            exact_duplicates=sum(1 for r in rows if r.get("duplicate_of") and r["duplicate_of"] == r.get("sha256")),
            near_duplicates=sum(1 for r in rows if r.get("near_duplicates")),
            without_row=len(without),
            without_row_ids=without[:100],
        )
        yield checksummer_pb2.JobManifestPart(summary=summary)

    def JobDuplicates(self, request, context) -> checksummer_pb2.JobDuplicatesResponse:
        job_id = self._job_id(request.job_id)
        rows = load_rows(self.store, job_id)
        if not rows and not submitted_record_ids(self.store, job_id):
            raise NotFound(f"no job {job_id!r}")
        radius = request.max_distance or self.registry.max_distance

        def near_query(value: int, distance: int) -> list[tuple[str, int]]:
            with self.lock:
                return self.registry.index.query(value, distance)

        found = job_duplicates(rows, self.registry, radius, near_query)

        def source(s) -> checksummer_pb2.DuplicateSource:
            return checksummer_pb2.DuplicateSource(record_id=s.record_id, job_id=s.job_id, url=s.url)

        return checksummer_pb2.JobDuplicatesResponse(
            job_id=job_id,
            rows=len(rows),
            contents=found.contents,
            max_distance=radius,
            exact=[
                checksummer_pb2.ExactDuplicateGroup(image_id=g.image_id, sources=[source(s) for s in g.sources])
                for g in found.exact
            ],
            near=[
                checksummer_pb2.NearDuplicateGroup(
                    members=[
                        checksummer_pb2.NearDuplicateMember(
                            sha256=m.sha256,
                            image_id=m.image_id,
                            phash=m.phash,
                            source=source(m.source),
                            in_job=m.in_job,
                        )
                        for m in g.members
                    ],
                    pairs=[checksummer_pb2.NearDuplicatePair(a=a, b=b, distance=d) for a, b, d in g.pairs],
                )
                for g in found.near
            ],
        )

    @staticmethod
    def _job_id(job_id: str) -> str:
        job_id = job_id.strip()
        if not job_id or "/" in job_id:
            raise InvalidArgument(f"not a job id: {job_id!r}")
        return job_id
