"""The fetcher's download worker (records → fetched) and its settings-driven helpers."""

from __future__ import annotations

import hashlib
import logging

from taxonstream.core import metrics
from taxonstream.core.bus import Bus, Emit
from taxonstream.core.errors import Failed
from taxonstream.core.store import ObjectStore, original_key, raise_first
from taxonstream.core.worker import StreamWorker, each
from taxonstream.fetcher.jobs import JobTable
from taxonstream.fetching.download import Downloader
from taxonstream.fetching.hosts import HostGates
from taxonstream.fetching.settings import FetcherSettings
from taxonstream.fetching.validate import inspect_image
from taxonstream.v1.messages_pb2 import FetchedImage, Record

log = logging.getLogger(__name__)
STAGE = "fetcher"


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
        info = inspect_image(data, self.settings.fetch_max_pixels)
        with metrics.timed("hash"):
            sha256 = hashlib.sha256(data).hexdigest()
        seen = {"sha256": sha256, "size": len(data), "mime": info.mime, "width": info.width, "height": info.height}
        # The original and what the URL gave, side by side: `_already_stored` trusts the URL's entry only
        # when the original exists too, so their order does not matter.
        stored = self.store.map(
            lambda put: put(),
            [
                lambda: self.store.put_original(data, sha256, info.mime),
                lambda: self.store.put_json(url_key(record.url), seen),
            ],
        )
        raise_first(stored)
        key = original_key(sha256)
        fetched = FetchedImage(
            record=record,
            sha256=sha256,
            object_key=key,
            size_bytes=len(data),
            mime=info.mime,
            width=info.width,
            height=info.height,
            attempts=attempts,
        )
        return [Emit(self.bus.topics.fetched, sha256, fetched)]

    def _already_stored(self, record: Record) -> FetchedImage | None:
        """A URL fetched before (by any job) is not downloaded again: its stored original stands in."""
        seen = self.store.get_json(url_key(record.url))
        if seen is None or not self.store.exists(original_key(seen["sha256"])):
            return None
        return FetchedImage(
            record=record,
            sha256=seen["sha256"],
            object_key=original_key(seen["sha256"]),
            size_bytes=seen["size"],
            mime=seen["mime"],
            width=seen["width"],
            height=seen["height"],
            attempts=0,
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
