"""Checksummer service: digests, buddy-checks and duplicates over gRPC; the worker fetched → verified | duplicate.

Per original: every configured digest (the sha256 must match what the fetcher stored), the expected
checksums the input row carried (a mismatch fails the record with both values), a pHash, and a claim in
the duplicate registry: the same bytes become one image with every source kept; near duplicates are kept,
linked or dropped by policy.
"""

from __future__ import annotations

import threading
import time
from typing import Literal

import grpc
from pydantic import Field

from taxonstream.core.bus import Bus, Emit
from taxonstream.core.errors import Failed
from taxonstream.core.outcomes import outcome
from taxonstream.core.server import Service, connect, registrar
from taxonstream.core.settings import CoreSettings
from taxonstream.core.store import ObjectStore, original_key
from taxonstream.core.worker import StreamWorker, each
from taxonstream.integrity.buddycheck import ExpectedChecksumError, describe, expected_checksums, verify
from taxonstream.integrity.checksums import ChecksumError, digest_bytes, parse_algorithms
from taxonstream.integrity.phash import phash_bytes, to_hex
from taxonstream.integrity.registry import DuplicateRegistry
from taxonstream.v1 import checksummer_pb2, checksummer_pb2_grpc
from taxonstream.v1.messages_pb2 import FetchedImage, NearImage, Outcome, VerifiedImage

STAGE = "checksummer"


class ChecksummerSettings(CoreSettings):
    grpc_port: int = 24062
    metrics_port: int = 9162
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
        self._lock = threading.Lock()

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
        }
        with self._lock:
            claim = self.registry.claim(fetched.sha256, phash, source)
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

    def snapshot(self, force: bool = False) -> None:
        """The pHash index to S3 now and then, so a restart reads one object instead of every entry."""
        if force or time.monotonic() - self._last_snapshot >= self.snapshot_seconds:
            with self._lock:
                self.registry.save_snapshot()
            self._last_snapshot = time.monotonic()


class ChecksummerServicer(checksummer_pb2_grpc.ChecksummerServicer):
    def __init__(self, store: ObjectStore, registry: DuplicateRegistry) -> None:
        self.store = store
        self.registry = registry

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
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the image does not decode")
        else:
            sha256, phash = request.sha256.lower(), None
        entry = self.registry.lookup(sha256)
        if phash is None and entry and entry.get("phash"):
            phash = int(entry["phash"], 16)
        image_id = entry["image_id"] if entry else ""
        records = sorted(s["record_id"] for s in self.registry.sources(image_id)) if image_id else []
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


def build(settings: ChecksummerSettings) -> Service:
    bus, store = connect(settings)
    work = ChecksumWorker(settings, bus, store)
    worker = StreamWorker(
        stage=STAGE,
        bus=bus,
        source=bus.topics.fetched,
        message_type=FetchedImage,
        process=each(work.handle),  # one at a time: claims must not race
        on_idle=work.snapshot,
        max_batch=settings.max_batch,
    )
    servicer = ChecksummerServicer(store, work.registry)
    return Service(
        name=STAGE,
        register=registrar(
            checksummer_pb2, "Checksummer", checksummer_pb2_grpc.add_ChecksummerServicer_to_server, servicer
        ),
        loops=[worker.run],
        on_stop=lambda: work.snapshot(force=True),
    )
