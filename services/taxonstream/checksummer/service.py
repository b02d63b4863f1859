"""Checksummer service: digests, buddy-checks and duplicates over gRPC; the worker fetched → verified | duplicate.

Per original: every configured digest (the sha256 must match what the fetcher stored), the expected
checksums the input row carried (a mismatch fails the record with both values), a pHash, and a claim in
the duplicate registry: the same bytes become one image with every source kept; near duplicates are kept,
linked or dropped by policy. Each verified record's manifest row is stored before its offset is committed
(`integrity/jobs.py`), so a job's manifest is complete whichever replica handled which record.

Several replicas share the `fetched` partitions (keyed by sha256, so exact duplicates always meet in one
replica), but near duplicates can land anywhere: every replica also follows the whole `verified` topic
(`ReplicaObserver`) and adds other replicas' new images to its pHash index.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import grpc
from google.protobuf.message import DecodeError
from kafka import TopicPartition
from pydantic import Field

from taxonstream.core.bus import Bus, Emit, decode
from taxonstream.core.errors import Failed, Poison
from taxonstream.core.outcomes import outcome
from taxonstream.core.server import Service, connect, registrar
from taxonstream.core.settings import SERVICE_PORTS, CoreSettings
from taxonstream.core.store import ObjectStore, original_key
from taxonstream.core.worker import StreamWorker, each
from taxonstream.integrity.buddycheck import ExpectedChecksumError, describe, expected_checksums, verify
from taxonstream.integrity.checksums import ChecksumError, digest_bytes, parse_algorithms
from taxonstream.integrity.jobs import (
    FORMATS,
    job_duplicates,
    load_rows,
    manifest_bytes,
    manifest_key,
    manifest_row,
    row_key,
    submitted_record_ids,
    with_links,
)
from taxonstream.integrity.phash import from_hex, phash_bytes, to_hex
from taxonstream.integrity.registry import DuplicateRegistry
from taxonstream.v1 import checksummer_pb2, checksummer_pb2_grpc
from taxonstream.v1.messages_pb2 import FetchedImage, NearImage, Outcome, VerifiedImage

log = logging.getLogger(__name__)
STAGE = "checksummer"
MANIFEST_PART = 1 << 20  # bytes per streamed part of a manifest


class ChecksummerSettings(CoreSettings):
    grpc_port: int = SERVICE_PORTS["checksummer"].grpc
    metrics_port: int = SERVICE_PORTS["checksummer"].metrics
    # Comma-separated hashlib names computed for every original (sha256 is always among them).
    checksum_algorithms: str = "md5,sha1,sha256"
    # pHash Hamming distance (of 64 bits) within which two images count as near duplicates.
    near_max_distance: int = Field(default=8, ge=0, le=32)
    near_policy: Literal["keep", "link", "drop"] = "link"
    registry_snapshot_seconds: float = 60.0


def phash_or_none(data: bytes) -> int | None:
    try:
        return phash_bytes(data)
    except (OSError, ValueError, SyntaxError):
        return None  # the fetcher decoded it, so this is rare: the image is still exact-deduplicated


class ChecksumWorker:
    def __init__(self, settings: ChecksummerSettings, bus: Bus, store: ObjectStore) -> None:
        self.bus = bus
        self.store = store
        names = {n.strip() for n in settings.checksum_algorithms.split(",") if n.strip()} | {"sha256"}
        self.algorithms = parse_algorithms(sorted(names))
        self.registry = DuplicateRegistry(store, settings.near_max_distance, settings.near_policy)
        self.snapshot_seconds = settings.registry_snapshot_seconds
        self._last_snapshot = time.monotonic()
        self.lock = threading.Lock()  # the registry's index: claims, observed images and RPC queries

    def handle(self, fetched: FetchedImage) -> list[Emit]:
        record = fetched.record
        try:
            data = self.store.get(fetched.object_key)
        except KeyError:
            raise Failed("missing_object", f"original {fetched.object_key} is not in the store") from None
        digests = digest_bytes(data, self.algorithms)
        if digests["sha256"] != fetched.sha256:
            raise Failed("checksum_mismatch", f"stored bytes hash to {digests['sha256']}, expected {fetched.sha256}")
        try:
            mismatches = verify(data, expected_checksums(record.metadata), known=digests)
        except ExpectedChecksumError as error:
            raise Failed("bad_expected_checksum", str(error)) from None
        if mismatches:
            raise Failed("checksum_mismatch", describe(mismatches))
        phash = phash_or_none(data)
        source = {
            "record_id": record.record_id,
            "job_id": record.job_id,
            "url": record.url,
            "metadata": dict(record.metadata),
            "sha256": fetched.sha256,  # tells exact copies from near duplicates dropped for the image
        }
        with self.lock:
            claim = self.registry.claim(fetched.sha256, phash, source)
        row = manifest_row(
            bucket=self.store.bucket,
            object_key=fetched.object_key,
            sha256=fetched.sha256,
            size_bytes=len(data),
            record={**source, "row": record.row},
            digests=digests,
            image_id=claim.image_id,
            phash=to_hex(phash) if phash is not None else "",
            duplicate_of=claim.duplicate_of or "",
            near=claim.near,
        )
        # Before the outcome is produced (and the offset committed): a redelivery writes the same row again.
        self.store.put_json(row_key(record.job_id, record.record_id), row)
        if claim.duplicate_of is not None:
            return [outcome(self.bus.topics, record, Outcome.DUPLICATE, stage=STAGE, image_id=claim.duplicate_of)]
        verified = VerifiedImage(
            image_id=claim.image_id,
            fetched=fetched,
            md5=digests.get("md5", ""),
            digests=digests,
            phash=to_hex(phash) if phash is not None else "",
            near=[NearImage(image_id=i, distance=d) for i, d in claim.near],
        )
        return [Emit(self.bus.topics.verified, verified.image_id, verified)]

    def observe(self, verified: VerifiedImage) -> None:
        """An image some replica (maybe this one) registered: into the pHash index, and under policy "link" the
        links its claim could not see (a near duplicate claimed at the same moment on another replica)."""
        if not verified.phash:
            return
        sha256, phash = verified.fetched.sha256 or verified.image_id, from_hex(verified.phash)
        with self.lock:
            self.registry.observe(sha256, phash, verified.image_id)
            known = {n.image_id for n in verified.near}
            missed = [(o, d) for o, d in self.registry.near_images(phash) if o not in known and o != sha256]
        if self.registry.policy == "link":
            self.registry.link(sha256, missed)  # every replica that sees the pair writes the same links

    def snapshot(self, force: bool = False) -> None:
        """The pHash index to S3 now and then, so a restart reads one object instead of every entry."""
        if force or time.monotonic() - self._last_snapshot >= self.snapshot_seconds:
            with self.lock:
                self.registry.save_snapshot()
            self._last_snapshot = time.monotonic()


class ReplicaObserver:
    """Follows every partition of `verified` (replica mode, no group) and tells the worker each new image.

    It starts at the end offsets taken *before* the registry was loaded from S3: an image registered earlier
    is in what the load read (its entry is written before its message is produced), a later one is in the
    topic from those offsets on, so none is missed between the two.
    """

    def __init__(self, bus: Bus, work: ChecksumWorker, start: dict[TopicPartition, int]) -> None:
        self.bus = bus
        self.work = work
        self.start = start

    def run(self, stop: threading.Event) -> None:
        consumer = self.bus.reader([self.bus.topics.verified], self.start)
        try:
            while not stop.is_set():
                for part in consumer.poll(timeout_ms=500, max_records=500).values():
                    for raw in part:
                        try:
                            self.work.observe(decode(raw.value, raw.headers, VerifiedImage))
                        except (Poison, DecodeError, ValueError) as error:
                            log.warning("skipped a verified message", extra={"offset": raw.offset, "error": str(error)})
        finally:
            consumer.close(autocommit=False)


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
                context.abort(grpc.StatusCode.NOT_FOUND, f"no object {request.object_key!r}")
        else:
            data = request.data
        try:
            values = digest_bytes(data, parse_algorithms(list(request.algorithms) or ["md5", "sha256"]))
        except ChecksumError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        return checksummer_pb2.ChecksumResponse(digests=values, size_bytes=len(data))

    def FindDuplicates(self, request, context) -> checksummer_pb2.FindDuplicatesResponse:
        radius = request.max_distance or None
        if request.HasField("image"):
            sha256 = digest_bytes(request.image, parse_algorithms(["sha256"]))["sha256"]
            phash = phash_or_none(request.image)
            if phash is None:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, "the image does not decode, or is featureless (no pHash)"
                )
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
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{row.name}: {error}")
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
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"format must be one of {FORMATS}, not {fmt!r}")
        job_id = self._job_id(request.job_id, context)
        records = submitted_record_ids(self.store, job_id)
        rows = load_rows(self.store, job_id)
        if not records and not rows:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {job_id!r}")
        with ThreadPoolExecutor(max_workers=16) as pool:  # one listing per row: S3 latency, not CPU
            # Only images with a pHash can have near-duplicate links (and only under policy "link").
            linkable = self.registry.policy == "link"
            links = pool.map(lambda r: self.registry.links(r["image_id"]) if linkable and r.get("phash") else [], rows)
            rows = [with_links(row, found) for row, found in zip(rows, links, strict=True)]
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
        job_id = self._job_id(request.job_id, context)
        rows = load_rows(self.store, job_id)
        if not rows and not submitted_record_ids(self.store, job_id):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {job_id!r}")
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
    def _job_id(job_id: str, context) -> str:
        job_id = job_id.strip()
        if not job_id or "/" in job_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a job id: {job_id!r}")
        return job_id


def build(settings: ChecksummerSettings) -> Service:
    bus, store = connect(settings)
    start = bus.end_offsets(bus.topics.verified)  # before the registry loads: see ReplicaObserver
    work = ChecksumWorker(settings, bus, store)
    observer = ReplicaObserver(bus, work, start)
    worker = StreamWorker(
        stage=STAGE,
        bus=bus,
        source=bus.topics.fetched,
        message_type=FetchedImage,
        process=each(work.handle),  # one at a time: claims must not race
        on_idle=work.snapshot,
        max_batch=settings.max_batch,
    )
    servicer = ChecksummerServicer(store, work.registry, work.lock)
    return Service(
        name=STAGE,
        register=registrar(
            checksummer_pb2, "Checksummer", checksummer_pb2_grpc.add_ChecksummerServicer_to_server, servicer
        ),
        loops=[worker.run, observer.run],
        on_stop=lambda: work.snapshot(force=True),
    )
