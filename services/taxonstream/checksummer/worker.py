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
from dataclasses import dataclass
from typing import Literal

from google.protobuf.message import DecodeError
from kafka import TopicPartition
from pydantic import Field

from taxonstream.core import metrics
from taxonstream.core.bus import Bus, Emit, decode
from taxonstream.core.errors import Failed, Poison, Transient
from taxonstream.core.keys import REGISTRY_ENTRIES_PREFIX, registry_key
from taxonstream.core.outcomes import outcome
from taxonstream.core.settings import SERVICE_PORTS, CoreSettings
from taxonstream.core.staging import StagedStore
from taxonstream.core.store import ObjectStore
from taxonstream.core.supervision import report_ok
from taxonstream.core.worker import in_batches
from taxonstream.integrity.buddycheck import ExpectedChecksumError, describe, expected_checksums, verify
from taxonstream.integrity.checksums import digest_bytes, parse_algorithms
from taxonstream.integrity.jobs import manifest_row, row_batches
from taxonstream.integrity.phash import from_hex, phash_bytes, to_hex
from taxonstream.integrity.registry import Claim, DuplicateRegistry
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
    # At most this many near duplicates linked to a new image, nearest first (integrity/registry.py).
    near_max: int = Field(default=8, ge=1, le=1000)
    # A registry snapshot (pHash index + the `verified` offsets it includes) once this many images changed
    # it, or this often while any do, and at shutdown; the newest `registry_snapshot_keep` stay in S3.
    registry_snapshot_seconds: float = 60.0
    registry_snapshot_changes: int = Field(default=10_000, ge=1)
    registry_snapshot_keep: int = Field(default=2, ge=1, le=100)
    # How long a claim waits for the start-up replay of `verified` before it is retried later.
    registry_replay_wait_seconds: float = Field(default=30.0, gt=0)


def phash_or_none(data: bytes) -> int | None:
    try:
        return phash_bytes(data)
    except (OSError, ValueError, SyntaxError):
        return None  # the fetcher decoded it, so this is rare: the image is still exact-deduplicated


@dataclass(frozen=True)
class Checked:
    """One original read and hashed, before its claim."""

    fetched: FetchedImage
    digests: dict[str, str]
    phash: int | None
    size_bytes: int


@dataclass(frozen=True)
class Claimed:
    checked: Checked
    claim: Claim
    row: dict  # the record's manifest row


class ChecksumWorker:
    def __init__(self, settings: ChecksummerSettings, bus: Bus, store: ObjectStore) -> None:
        self.bus = bus
        # Claims and rows staged per batch (core/staging.py): ~5 S3 round trips a record become a few a batch.
        self.store = StagedStore(store)
        names = {n.strip() for n in settings.checksum_algorithms.split(",") if n.strip()} | {"sha256"}
        self.algorithms = parse_algorithms(sorted(names))
        self.registry = DuplicateRegistry(
            self.store,
            settings.near_max_distance,
            settings.near_policy,
            near_max=settings.near_max,
            snapshot_keep=settings.registry_snapshot_keep,
            snapshot_changes=settings.registry_snapshot_changes,
            snapshot_seconds=settings.registry_snapshot_seconds,
        )
        if not self.registry.restored:  # no snapshot generation yet: a new store, or one written before them
            self.registry.rebuild_from_entries()
        elif not self.registry.complete:  # a snapshot from before it kept `unhashed`: once, keys only
            self.registry.learn_registered_from_listing()
        self.lock = threading.Lock()  # the registry's index: claims, observed images and RPC queries
        # Set while the registry holds every image on `verified` up to the start: claims wait for it, or a
        # near duplicate of an image registered since the snapshot would be missed. ReplicaObserver clears it.
        self.replayed = threading.Event()
        self.replayed.set()
        self.replay_wait = settings.registry_replay_wait_seconds
        # Reads and hashing run concurrently; claims run in order in one call for the batch.
        self.process = in_batches(self.prepare, self.claim_all, self.finish, concurrency=settings.stage_concurrency)

    def handle(self, fetched: FetchedImage) -> list[Emit]:
        """One message through the batch path (tests, a one-off): its emits, or its error raised."""
        (result,) = self.process([fetched])
        if isinstance(result, Exception):
            raise result
        return result

    def prepare(self, fetched: FetchedImage) -> Checked:
        """Read, hash and pHash one original (messages of a batch do this concurrently), or take what the
        fetcher computed from the bytes it stored when the message carries that."""
        if (carried := self._carried(fetched)) is not None:
            return carried
        try:
            data = self.store.get(fetched.object_key)
        except KeyError:
            raise Failed("missing_object", f"original {fetched.object_key} is not in the store") from None
        with metrics.timed("hash"):
            digests = digest_bytes(data, self.algorithms)
        if digests["sha256"] != fetched.sha256:
            raise Failed("checksum_mismatch", f"stored bytes hash to {digests['sha256']}, expected {fetched.sha256}")
        try:
            with metrics.timed("hash"):
                mismatches = verify(data, expected_checksums(fetched.record.metadata), known=digests)
        except ExpectedChecksumError as error:
            raise Failed("bad_expected_checksum", str(error)) from None
        if mismatches:
            raise Failed("checksum_mismatch", describe(mismatches))
        with metrics.timed("decode"):  # a JPEG is decoded at >= 256 px (libjpeg scaling): phash.py
            phash = phash_or_none(data)
        return Checked(fetched, digests, phash, len(data))

    def _carried(self, fetched: FetchedImage) -> Checked | None:
        """The message's own digests and pHash, when they cover every configured algorithm and every
        expected checksum of the input row; else None (the original is read: older messages, other sums)."""
        names = {a.name for a in self.algorithms}
        if not fetched.HasField("phash") or not names <= set(fetched.digests):
            return None
        try:
            expected = expected_checksums(fetched.record.metadata)
        except ExpectedChecksumError as error:
            raise Failed("bad_expected_checksum", str(error)) from None
        if not set(expected) <= set(fetched.digests):
            return None
        digests = {name: fetched.digests[name] for name in sorted(names)}
        if digests["sha256"] != fetched.sha256:
            raise Failed("checksum_mismatch", f"fetched bytes hash to {digests['sha256']}, expected {fetched.sha256}")
        if mismatches := verify(b"", expected, known=fetched.digests):  # every expected sum is known
            raise Failed("checksum_mismatch", describe(mismatches))
        phash = from_hex(fetched.phash) if fetched.phash else None
        return Checked(fetched, digests, phash, fetched.size_bytes)

    def claim_all(self, checked: list[Checked]) -> list[Claimed | Exception]:
        """Claims in message order (each sees the ones before it), their S3 reads and writes batched: the
        registry entries read in parallel first, every write of the batch stored in parallel at the end,
        registry entries after the provenance, links and rows they stand for. Nothing is produced (and
        no offset committed) before those writes are stored; a failed write retries the whole batch."""
        if not self.replayed.wait(self.replay_wait):
            raise Transient("the duplicate registry is still replaying `verified` since its snapshot")
        results: list[Claimed | Exception] = []
        with self.store.staged(last=lambda key: key.startswith(REGISTRY_ENTRIES_PREFIX)):
            with self.lock:  # only bytes memory knows have an entry to read (exact copies, redeliveries)
                known = [
                    c.fetched.sha256 for c in checked if self.registry.may_be_registered(c.fetched.sha256, c.phash)
                ]
            self.store.prefetch(registry_key(sha256) for sha256 in known)
            with self.lock:  # in memory from here on: the lock is held for microseconds, not round trips
                for c in checked:
                    try:
                        results.append(self._claim(c))
                    except Exception as error:  # noqa: BLE001 - this message fails alone, sorted by the worker
                        results.append(error)
            # One row object per job for the batch, before the outcomes (and offsets): rewritten on redelivery.
            rows = [r.row for r in results if isinstance(r, Claimed)]
            for key, value in row_batches(rows).items():
                self.store.put_json(key, value)
        return results

    def _claim(self, checked: Checked) -> Claimed:
        fetched, digests, phash = checked.fetched, checked.digests, checked.phash
        record = fetched.record
        source = {
            "record_id": record.record_id,
            "job_id": record.job_id,
            "url": record.url,
            "metadata": dict(record.metadata),
            "sha256": fetched.sha256,  # tells exact copies from near duplicates dropped for the image
        }
        claim = self.registry.claim(fetched.sha256, phash, source)
        row = manifest_row(
            bucket=self.store.bucket_for(fetched.object_key),
            object_key=fetched.object_key,
            sha256=fetched.sha256,
            size_bytes=checked.size_bytes,
            record={**source, "row": record.row},
            digests=digests,
            image_id=claim.image_id,
            phash=to_hex(phash) if phash is not None else "",
            duplicate_of=claim.duplicate_of or "",
            near=claim.near,
        )
        return Claimed(checked, claim, row)  # the row is stored with its batch's (claim_all)

    def finish(self, fetched: FetchedImage, claimed: Claimed | Exception) -> list[Emit]:
        if isinstance(claimed, Exception):
            raise claimed
        claim = claimed.claim
        if claim.duplicate_of is not None:
            return [
                outcome(self.bus.topics, fetched.record, Outcome.DUPLICATE, stage=STAGE, image_id=claim.duplicate_of)
            ]
        digests, phash = claimed.checked.digests, claimed.checked.phash
        verified = VerifiedImage(
            image_id=claim.image_id,
            fetched=fetched,
            md5=digests.get("md5", ""),
            digests=digests,
            phash=to_hex(phash) if phash is not None else "",
            near=[NearImage(image_id=i, distance=d) for i, d in claim.near],
        )
        return [Emit(self.bus.topics.verified, verified.image_id, verified)]

    def observe(self, verified: VerifiedImage, at: tuple[int, int] | None = None) -> None:
        """An image some replica (maybe this one) registered, from `verified` at (partition, offset): into the
        pHash index, which answers "seen before?" and the near images of later claims and manifests."""
        sha256 = verified.fetched.sha256 or verified.image_id
        phash = from_hex(verified.phash) if verified.phash else None  # without one: still registered
        with self.lock:
            self.registry.observe(sha256, phash, verified.image_id, at)

    def snapshot(self, force: bool = False) -> None:
        """A registry snapshot when enough changed (or at shutdown, `force`), so a restart replays little."""
        with self.lock:
            if self.registry.trigger.changes and (force or self.registry.snapshot_due()):
                self.registry.save_snapshot()


class ReplicaObserver:
    """Follows every partition of `verified` (replica mode, no group) and tells the worker each new image.

    `ends` are the end offsets taken before the registry was restored. From a snapshot it replays from the
    offsets the snapshot includes, and claims wait (`work.replayed`) until it has reached `ends`: every image
    registered before the start is then known, whichever replica claimed it. Without a snapshot the registry
    was rebuilt from its entries (an image registered earlier is in what that read: its entry is written
    before its message is produced) and the topic is followed from `ends` on, so none is missed between.
    """

    def __init__(self, bus: Bus, work: ChecksumWorker, ends: dict[TopicPartition, int]) -> None:
        self.bus = bus
        self.work = work
        self.until = dict(ends)
        registry = work.registry
        if registry.restored:
            self.start = {tp: registry.offsets.get(tp.partition, 0) for tp in ends}
            if any(self.start[tp] < end for tp, end in ends.items()):
                work.replayed.clear()
        else:
            self.start = dict(ends)
            registry.offsets = {tp.partition: o for tp, o in ends.items()}
            work.snapshot(force=True)  # rebuilt from the entries: the next start replays from here instead

    def run(self, stop: threading.Event) -> None:
        consumer = self.bus.reader([self.bus.topics.verified], self.start)
        began, replayed = time.monotonic(), 0
        try:
            kept_from = consumer.beginning_offsets(list(self.start))
            lost = {tp.partition: (o, kept_from[tp]) for tp, o in self.start.items() if kept_from.get(tp, 0) > o}
            if lost:  # retention deleted messages the snapshot does not include: their images are unknown here
                log.warning("verified messages after the registry snapshot are gone", extra={"partitions": lost})
            while not stop.is_set():
                for part in consumer.poll(timeout_ms=500, max_records=500).values():
                    for raw in part:
                        at = (raw.partition, raw.offset)
                        try:
                            self.work.observe(decode(raw.value, raw.headers, VerifiedImage), at)
                        except (Poison, DecodeError, ValueError) as error:
                            log.warning("skipped a verified message", extra={"offset": raw.offset, "error": str(error)})
                            with self.work.lock:
                                self.work.registry.advance(*at)
                        replayed += 1
                report_ok()
                if not self.work.replayed.is_set() and self._caught_up(consumer):
                    self.work.replayed.set()
                    took = round(time.monotonic() - began, 3)
                    log.info("registry replayed", extra={"messages": replayed, "seconds": took})
        finally:
            consumer.close(autocommit=False)

    def _caught_up(self, consumer) -> bool:
        """Read up to `until`; positions, not the last message seen, so gaps (deleted, compacted) count too."""
        positions = {tp: consumer.position(tp) for tp in self.until}
        with self.work.lock:
            for tp, position in positions.items():
                self.work.registry.advance(tp.partition, position - 1)
        return all(positions[tp] >= end for tp, end in self.until.items())
