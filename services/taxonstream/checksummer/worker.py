"""The checksummer's settings and worker fetched → verified | duplicate.

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
from typing import Literal

from google.protobuf.message import DecodeError
from kafka import TopicPartition
from pydantic import Field

from taxonstream.core.bus import Bus, Emit, decode
from taxonstream.core.errors import Failed, Poison
from taxonstream.core.outcomes import outcome
from taxonstream.core.settings import SERVICE_PORTS, CoreSettings
from taxonstream.core.store import ObjectStore
from taxonstream.integrity.buddycheck import ExpectedChecksumError, describe, expected_checksums, verify
from taxonstream.integrity.checksums import digest_bytes, parse_algorithms
from taxonstream.integrity.jobs import (
    manifest_row,
    row_key,
)
from taxonstream.integrity.phash import from_hex, phash_bytes, to_hex
from taxonstream.integrity.registry import DuplicateRegistry
from taxonstream.v1.messages_pb2 import FetchedImage, NearImage, Outcome, VerifiedImage

log = logging.getLogger(__name__)
STAGE = "checksummer"


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
