"""The fetcher's download worker (records → fetched) and its settings-driven helpers."""

from __future__ import annotations

import hashlib
import logging
import time

from taxonstream.core.bus import Bus, Emit
from taxonstream.core.errors import Failed
from taxonstream.core.store import ObjectStore, original_key
from taxonstream.core.worker import StreamWorker, each
from taxonstream.fetcher.jobs import JobTable
from taxonstream.fetching.download import Downloader, RetryLater
from taxonstream.fetching.engine import NOT_SENT
from taxonstream.fetching.hosts import HostGates
from taxonstream.fetching.politeness import RatePolicy
from taxonstream.fetching.robots import Robots, fetch_robots, unreachable
from taxonstream.fetching.safety import host_of
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
        self.hosts = HostGates(RatePolicy.from_settings(settings))
        self.agent = settings.robots_agent

    def handle(self, record: Record) -> list[Emit]:
        job = self.jobs.job(record.job_id)
        if job is not None and job.cancelled:
            raise Failed("cancelled", f"job {record.job_id} was cancelled")
        if not record.force and (known := self._already_stored(record)) is not None:
            return [Emit(self.bus.topics.fetched, known.sha256, known)]
        if self.settings.fetch_robots_txt:
            rules = self.hosts.robots(host_of(record.url), lambda: self._read_robots(record.url), self.agent)
            if not rules.allowed(record.url, self.agent):
                reason = "robots_unreachable" if rules.disallow_all else "robots_disallowed"
                raise Failed(reason, rules.why or "robots.txt disallows this URL")
        data, attempts = self._download(record.url)
        info = inspect_image(data, self.settings.fetch_max_pixels)
        sha256 = hashlib.sha256(data).hexdigest()
        key, _ = self.store.put_original(data, sha256, info.mime)
        seen = {"sha256": sha256, "size": len(data), "mime": info.mime, "width": info.width, "height": info.height}
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
        )
        return [Emit(self.bus.topics.fetched, sha256, fetched)]

    def _read_robots(self, url: str) -> Robots:
        for attempt in range(1, self.settings.fetch_attempts + 1):
            try:
                return fetch_robots(self.downloader, url)
            except RetryLater as retry:
                if attempt == self.settings.fetch_attempts:
                    return unreachable(f"robots.txt could not be fetched: {retry.failure.message}")
                time.sleep(min(retry.delay or 0.5 * 2**attempt, 30.0))
        raise AssertionError("unreachable")

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

    def _download(self, url: str) -> tuple[bytes, int]:
        """Paced by the host's gate; 429/503 slow the host down (and honour Retry-After), errors back off."""
        host = host_of(url)
        throttles = 0
        for attempt in range(1, self.settings.fetch_throttled_attempts + 1):
            sent_at = self.hosts.acquire(host)
            started = time.monotonic()
            try:
                data = self.downloader.fetch(url).data
            except RetryLater as retry:
                reason = retry.failure.reason
                self.hosts.count(host, reason)
                if reason in {"http_429", "http_503"}:
                    throttles += 1
                    self.hosts.throttled(host, sent_at, retry.delay, limit=reason == "http_429")
                else:  # a body cut off mid-transfer is retried without slowing the whole host
                    self.hosts.failed(host, sent_at, congestion=reason != "incomplete_body")
                # Being told to slow down is not the record's fault: it gets more tries than errors do.
                errors = attempt - throttles
                if errors >= self.settings.fetch_attempts or attempt == self.settings.fetch_throttled_attempts:
                    raise Failed(reason, f"{retry.failure.message} (after {attempt} attempts)") from None
                continue
            except Failed as failure:
                if failure.reason in NOT_SENT:
                    self.hosts.released(host)
                else:  # a final answer (404, not an image …): the host is keeping up
                    self.hosts.count(host, failure.reason)
                    self.hosts.answered(host, sent_at, time.monotonic() - started)
                raise
            self.hosts.count(host, "http_200", len(data))
            self.hosts.answered(host, sent_at, time.monotonic() - started)
            return data, attempt
        raise AssertionError("unreachable")

    def worker(self) -> StreamWorker[Record]:
        return StreamWorker(
            stage=STAGE,
            bus=self.bus,
            source=self.bus.topics.records,
            message_type=Record,
            process=each(self.handle, threads=self.settings.fetch_concurrency),
            max_batch=self.settings.max_batch,
        )
