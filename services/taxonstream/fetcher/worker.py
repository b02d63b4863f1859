"""The fetcher's download worker (records → fetched) and its settings-driven helpers."""

from __future__ import annotations

import hashlib
import logging

from taxonstream.core import metrics
from taxonstream.core.bus import Bus, Emit
from taxonstream.core.errors import Failed
from taxonstream.core.store import ObjectStore, original_key
from taxonstream.core.worker import StreamWorker, each
from taxonstream.fetcher.jobs import JobTable
from taxonstream.fetching.download import Downloader
from taxonstream.fetching.hosts import HostGates
from taxonstream.fetching.settings import FetcherSettings
from taxonstream.fetching.validate import inspect_decoded
from taxonstream.integrity.checksums import digest_bytes, parse_algorithms
from taxonstream.integrity.phash import DRAFT_SIZE, ImageUnreadable, phash_bytes, phash_image, to_hex
from taxonstream.v1.messages_pb2 import FetchedImage, Record

log = logging.getLogger(__name__)
STAGE = "fetcher"
# Hashed here, where the bytes are in memory, and carried in FetchedImage: the checksummer then reads no
# original back (one S3 GET a record less). Its default algorithms; it reads the object for any others.
DIGESTS = parse_algorithms(["md5", "sha1", "sha256"])
# A content-addressed PUT is idempotent, so a HEAD before it only pays off when it can save a big upload
# (an exact duplicate, ~5% of records): for a 7 kB JPEG the HEAD costs the S3 server as much as the PUT.
STAT_BEFORE_PUT_BYTES = 4 << 20


def url_key(url: str) -> str:
    """Where the fetcher remembers what a URL gave: the bytes' sha256 and what they are."""
    digest = hashlib.sha256(url.strip().encode()).hexdigest()
    return f"urls/{digest[:2]}/{digest}.json"


class FetchWorker:
    """records → download, validate, store the original → fetched."""

    def __init__(self, settings: FetcherSettings, bus: Bus, store: ObjectStore, jobs: JobTable) -> None:
        self.settings = settings
        self.bus = bus
        self.store = store
        self.jobs = jobs
        self.downloader = Downloader(settings)
        # Pacing, attempts and robots.txt per host, by the attempt policy the standalone engine follows too.
        self.hosts = HostGates.from_settings(settings, self.downloader)

    def handle(self, record: Record) -> list[Emit]:
        job = self.jobs.job(record.job_id)
        if job is not None and job.cancelled:
            raise Failed("cancelled", f"job {record.job_id} was cancelled")
        if not record.force and (known := self._already_stored(record)) is not None:
            return [Emit(self.bus.topics.fetched, known.sha256, known)]
        if self.settings.fetch_robots_txt:
            self.hosts.obey_robots(record.url)
        # Keyed by the record: a long pause of its host defers it (Deferred) instead of holding the batch.
        data, attempts = self.hosts.download(record.url, key=f"{record.record_id}\n{record.url}")
        with metrics.timed("decode"):
            # One decode validates and feeds the pHash: a JPEG at pHash's draft scale (>= 256 px a side,
            # 1/4 of a 3000x2000 photo), still entropy-decoded in full, so a truncated one fails here.
            info, decoded = inspect_decoded(data, self.settings.fetch_max_pixels, draft_side=DRAFT_SIZE)
            try:  # a multi-frame image: phash_bytes decodes its first frame again
                phash = to_hex(phash_image(decoded) if decoded is not None else phash_bytes(data))
            except ImageUnreadable:
                phash = ""  # featureless: exact-deduplicated only
        with metrics.timed("hash"):
            digests = digest_bytes(data, DIGESTS)
        sha256 = digests["sha256"]
        seen = {"sha256": sha256, "size": len(data), "mime": info.mime, "width": info.width, "height": info.height}
        seen.update(digests=digests, phash=phash)
        key = original_key(sha256)
        if len(data) >= STAT_BEFORE_PUT_BYTES:
            self.store.put_original(data, sha256, info.mime)
        else:
            self.store.put(key, data, info.mime)
        # After the original: an entry with digests is trusted without a HEAD of the original it names.
        self.store.put_json(url_key(record.url), seen)
        fetched = FetchedImage(
            record=record,
            sha256=sha256,
            object_key=key,
            size_bytes=len(data),
            mime=info.mime,
            width=info.width,
            height=info.height,
            attempts=attempts,
            digests=digests,
            phash=phash,
            data=data if len(data) <= self.settings.fetch_inline_max_bytes else b"",
        )
        return [Emit(self.bus.topics.fetched, sha256, fetched)]

    def _already_stored(self, record: Record) -> FetchedImage | None:
        """A URL fetched before (by any job) is not downloaded again: its stored original stands in.

        One GET: an entry with digests was written after its original. One without (written beside the
        original, in parallel, before digests were kept) counts only when a HEAD finds the original."""
        seen = self.store.get_json(url_key(record.url))
        if seen is None or ("digests" not in seen and not self.store.exists(original_key(seen["sha256"]))):
            return None
        hashed = {"digests": seen["digests"], "phash": seen.get("phash", "")} if "digests" in seen else {}
        return FetchedImage(
            record=record,
            sha256=seen["sha256"],
            object_key=original_key(seen["sha256"]),
            size_bytes=seen["size"],
            mime=seen["mime"],
            width=seen["width"],
            height=seen["height"],
            attempts=0,
            **hashed,
        )

    def worker(self) -> StreamWorker[Record]:
        return StreamWorker(
            stage=STAGE,
            bus=self.bus,
            source=self.bus.topics.records,
            message_type=Record,
            process=each(self.handle, threads=self.settings.fetch_concurrency),
            max_batch=self.settings.max_batch,
        )
