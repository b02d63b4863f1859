"""Index versions: one index per embedding model, one of them serving searches that name no model.

`taxonstream reembed --model NEW` adds a version. Each version has its own replica worker on the
`embedded` topic and its own snapshots, so a new version fills (backfill plus fresh images) while the
serving one keeps answering; `Serve` switches the default. The list of versions and the serving one live
in S3, so every replica (and a restarted one) keeps the same versions.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from kafka import TopicPartition

from taxonstream.core.keys import index_versions_key
from taxonstream.core.store import ObjectStore
from taxonstream.core.supervision import Health, current_health, supervised

log = logging.getLogger(__name__)
REFRESH_SECONDS = 5.0
W = TypeVar("W")


@dataclass(frozen=True, order=True)
class VersionKey:
    model: str
    version: str

    def __str__(self) -> str:
        return f"{self.model}/{self.version}"

    @classmethod
    def parse(cls, text: str, default_version: str = "1") -> VersionKey:
        """ "bioclip2_image/3" or "bioclip2_image" (version `default_version`)."""
        model, _, version = text.strip().partition("/")
        if not model or "/" in version:
            raise ValueError(f"{text!r}: give MODEL or MODEL/VERSION")
        return cls(model, version or default_version)


class Registry:
    """`index/<backend>/versions.json`: {"serving": "m/v", "versions": {"m/v": {"start_offsets": {p: o}}}}."""

    def __init__(self, store: ObjectStore, backend: str, default: VersionKey) -> None:
        self.store = store
        self.key = index_versions_key(backend)
        self.default = default

    def read(self) -> tuple[VersionKey, dict[VersionKey, dict[int, int]]]:
        state = self.store.get_json(self.key) or {}
        versions = {
            VersionKey.parse(k): {int(p): int(o) for p, o in v.get("start_offsets", {}).items()}
            for k, v in state.get("versions", {}).items()
        }
        versions.setdefault(self.default, {})
        serving = VersionKey.parse(state["serving"]) if state.get("serving") else self.default
        return serving, versions

    def write(self, serving: VersionKey, versions: dict[VersionKey, dict[int, int]]) -> None:
        self.store.put_json(
            self.key,
            {
                "serving": str(serving),
                "versions": {
                    str(k): {"start_offsets": {str(p): o for p, o in offsets.items()}}
                    for k, offsets in sorted(versions.items())
                },
            },
        )


class Versions(Generic[W]):
    """The index workers of every version, started as they appear in the registry.

    `make(key, start_offsets)` builds a version's worker; `loop(worker)` gives the function its thread runs.
    """

    def __init__(
        self,
        registry: Registry,
        topic: str,
        make: Callable[[VersionKey, dict[TopicPartition, int]], W],
        loop: Callable[[W], Callable[[threading.Event], None]],
    ) -> None:
        self.registry = registry
        self.topic = topic
        self._make = make
        self._loop = loop
        self._lock = threading.Lock()
        self._workers: dict[VersionKey, W] = {}
        self._threads: list[threading.Thread] = []
        self._stops: dict[VersionKey, threading.Event] = {}  # per version, so one can be retired alone
        self._stop: threading.Event | None = None
        self._crashed: list[BaseException] = []
        self._health: Health | None = None  # the pod's, taken from the supervised loop that runs `run`
        self.serving, versions = registry.read()
        for key, offsets in versions.items():
            self._add(key, offsets)

    def _add(self, key: VersionKey, offsets: dict[int, int]) -> W:
        worker = self._make(key, {TopicPartition(self.topic, p): o for p, o in offsets.items()})
        self._workers[key] = worker
        if self._stop is not None:  # running: the new version starts consuming at once
            self._start(key, worker)
        return worker

    def _start(self, key: VersionKey, worker: W) -> None:
        assert self._stop is not None
        # Outages (Kafka, S3 away) restart the version's loop with backoff, reported to the pod's health.
        stop, loop = threading.Event(), supervised(f"index {key}", self._loop(worker), self._health)
        self._stops[key] = stop

        def guarded() -> None:
            try:
                loop(stop)
            except BaseException as error:  # one version's worker dying takes the pod down, like any loop
                log.exception("index worker died", extra={"version": str(key)})
                self._crashed.append(error)
                if self._stop is not None:
                    self._stop.set()

        thread = threading.Thread(target=guarded, name=f"index-{key}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def get(self, key: VersionKey | None = None) -> W | None:
        with self._lock:
            return self._workers.get(key or self.serving)

    def items(self) -> Iterator[tuple[VersionKey, W]]:
        with self._lock:
            return iter(list(self._workers.items()))

    def add(self, key: VersionKey, start_offsets: Callable[[], dict[TopicPartition, int]]) -> tuple[W, bool]:
        """The version's worker, registering and starting it when new (reading from `start_offsets()`)."""
        with self._lock:
            serving, versions = self.registry.read()
            if key in versions:
                self._refresh_locked(serving, versions)
                return self._workers[key], False
            versions[key] = {tp.partition: o for tp, o in start_offsets().items()}
            self.registry.write(serving, versions)
            self._refresh_locked(serving, versions)
            log.info("index version added", extra={"version": str(key), "start": versions[key]})
            return self._workers[key], True

    def serve(self, key: VersionKey) -> VersionKey:
        """Make `key` the serving version; returns the previous one."""
        with self._lock:
            serving, versions = self.registry.read()
            if key not in versions:
                raise KeyError(str(key))
            self.registry.write(key, versions)
            self._refresh_locked(key, versions)
            return serving

    def retire(self, key: VersionKey) -> W:
        """Stop keeping version `key` (never the serving one); returns its worker, stopped."""
        with self._lock:
            serving, versions = self.registry.read()
            if key not in versions:
                raise KeyError(str(key))
            if key == serving:
                raise ValueError(f"{key} is the serving version; serve another one first")
            del versions[key]
            self.registry.write(serving, versions)
            return self._refresh_locked(serving, versions)[key]

    def refresh(self) -> None:
        """Pick up versions and the serving choice that another replica wrote."""
        with self._lock:
            self._refresh_locked(*self.registry.read())

    def _refresh_locked(self, serving: VersionKey, versions: dict[VersionKey, dict[int, int]]) -> dict[VersionKey, W]:
        """Start new versions, stop retired ones (returned), follow the serving choice."""
        for key, offsets in versions.items():
            if key not in self._workers:
                self._add(key, offsets)
        retired = {key: self._workers.pop(key) for key in list(self._workers) if key not in versions}
        for key in retired:
            stop = self._stops.pop(key, None)
            if stop is not None:
                stop.set()
            log.info("index version retired", extra={"version": str(key)})
        if serving != self.serving:
            log.info("serving index version changed", extra={"from": str(self.serving), "to": str(serving)})
            self.serving = serving
        return retired

    def run(self, stop: threading.Event) -> None:
        """Runs every version's worker until `stop`, adding versions other replicas register."""
        with self._lock:
            self._stop = stop
            self._health = current_health()
            for key, worker in self._workers.items():
                self._start(key, worker)
        while not stop.wait(REFRESH_SECONDS):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - S3 briefly away: keep serving the versions we have
                log.warning("reading the index versions failed", exc_info=True)
        with self._lock:
            for version_stop in self._stops.values():
                version_stop.set()
        for thread in list(self._threads):
            thread.join()
        if self._crashed:
            raise self._crashed[0]
