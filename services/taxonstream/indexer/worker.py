"""The indexer's settings, snapshots and the replica worker embedded → index (+ outcome), one per version."""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time

import numpy as np
from kafka import TopicPartition

from taxonstream.core.bus import Bus, Emit
from taxonstream.core.outcomes import outcome
from taxonstream.core.settings import SERVICE_PORTS
from taxonstream.core.store import ObjectStore, derivative_keys
from taxonstream.core.worker import StreamWorker, each
from taxonstream.index.backend import IndexBackend, open_index, restore_index
from taxonstream.index.config import IndexSettings
from taxonstream.index.versions import VersionKey
from taxonstream.v1.messages_pb2 import Embedding, Outcome, ReembedImage

log = logging.getLogger(__name__)
STAGE = "indexer"


class IndexerSettings(IndexSettings):
    grpc_port: int = SERVICE_PORTS["indexer"].grpc
    metrics_port: int = SERVICE_PORTS["indexer"].metrics
    index_model: str = "clip_standin_image"
    index_model_version: str = "1"
    # A snapshot at most this often while embeddings arrive, and always at shutdown.
    snapshot_seconds: float = 10.0


def lineage(embedding: Embedding) -> dict[str, str]:
    """What a search hit tells about the image: its first record's columns plus where it came from."""
    crop = embedding.crop
    fetched = crop.image.fetched
    record = fetched.record
    box = crop.box
    return {
        **dict(record.metadata),
        "url": record.url,
        "record_id": record.record_id,
        "job_id": record.job_id,
        "sha256": fetched.sha256,
        "original_key": fetched.object_key,
        "crop_key": crop.crop_key,
        "detected": str(crop.detected).lower(),
        "box": f"{box.left},{box.top},{box.right},{box.bottom}",
        "size": f"{fetched.width}x{fetched.height}",
        "model": f"{embedding.model}/{embedding.model_version}",
        "thumbnail_key": derivative_keys(embedding.image_id, crop.model, crop.model_version)["crop_small"],
    }


class Snapshots:
    """One version's index, the offsets it includes and its tombstones, in S3: restore + replay rebuilds it."""

    def __init__(self, store: ObjectStore, settings: IndexerSettings, key: VersionKey) -> None:
        self.store = store
        config = settings.index_config()
        if key != VersionKey(settings.index_model, settings.index_model_version):
            # Each version is its own Milvus collection; the configured name stays the default version's.
            suffix = re.sub(r"[^0-9A-Za-z_]", "_", f"{key.model}_v{key.version}")
            config = dataclasses.replace(
                config, milvus=dataclasses.replace(config.milvus, collection=f"{config.milvus.collection}_{suffix}")
            )
        self.config = config
        self.prefix = f"index/{key.model}/{key.version}/{config.backend}/"

    def load(self, topic: str) -> tuple[IndexBackend, dict[TopicPartition, int], set[str]]:
        latest = self.store.get_json(self.prefix + "latest.json")
        if latest is None or not latest.get("index_key"):
            return open_index(self.config), {}, set()  # nothing durable yet: replay from the start offsets
        index = restore_index(self.config, self.store.get(latest["index_key"]))
        offsets = {TopicPartition(topic, int(p)): int(o) for p, o in latest["offsets"].items()}
        tombstones = set(self.store.get_json(latest["tombstones_key"]) or []) if latest.get("tombstones_key") else set()
        log.info("restored snapshot", extra={"prefix": self.prefix, "images": len(index), "offsets": latest["offsets"]})
        return index, offsets, tombstones

    def forget(self) -> None:
        """A retired version: adding it again starts it empty (old snapshot objects stay until cleaned)."""
        self.store.put_json(self.prefix + "latest.json", {})

    def save(self, index: IndexBackend, offsets: dict[TopicPartition, int], tombstones: set[str]) -> None:
        data = index.dump()
        if not data:
            return
        generation = time.strftime("%Y%m%dT%H%M%S") + f"-{time.time_ns() % 1_000_000:06d}"
        key = self.prefix + f"snapshots/{generation}.bin"
        self.store.put(key, data)
        latest = {
            "generation": generation,
            "index_key": key,
            "offsets": {str(tp.partition): o for tp, o in offsets.items()},
        }
        if tombstones:
            latest["tombstones_key"] = self.prefix + f"snapshots/{generation}.tombstones.json"
            self.store.put_json(latest["tombstones_key"], sorted(tombstones))
        # latest.json last: a crash between the writes leaves the previous snapshot in force.
        self.store.put_json(self.prefix + "latest.json", latest)


class IndexWorker:
    """One index version fed from the `embedded` topic in replica mode.

    Its own model's embeddings are upserted; a fresh embedding of another model whose image this version
    lacks is sent to `reembed` for this version's model, so a version added by `reembed` also takes every
    image ingested after it was added. Deletions are remembered (tombstones) so a backfill asked for
    before a delete cannot bring the image back.
    """

    def __init__(
        self,
        settings: IndexerSettings,
        bus: Bus,
        store: ObjectStore,
        key: VersionKey,
        start_offsets: dict[TopicPartition, int] | None = None,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.key = key
        self.snapshots = Snapshots(store, settings, key)
        self.index, self.offsets, self.tombstones = self.snapshots.load(bus.topics.embedded)
        if not self.offsets and start_offsets:
            self.offsets = dict(start_offsets)  # a version added by reembed: from when it was added
        self._dirty = False
        self._last_snapshot = time.monotonic()
        self._lock = threading.Lock()
        self.retired = False

    def handle(self, embedding: Embedding) -> list[Emit]:
        image_id = embedding.image_id
        if embedding.deleted:
            self.index.delete(image_id)
            self.tombstones.add(image_id)
            self._dirty = True
            return []
        if (embedding.model, embedding.model_version) != (self.key.model, self.key.version):
            return self._follow(embedding)
        if embedding.backfill:
            if image_id not in self.tombstones:
                self.index.upsert(image_id, np.asarray(embedding.vector, dtype=np.float32), dict(embedding.lineage))
                self._dirty = True
            return []  # its record finished when the image was first indexed
        self.tombstones.discard(image_id)
        self.index.upsert(image_id, np.asarray(embedding.vector, dtype=np.float32), lineage(embedding))
        self._dirty = True
        record = embedding.crop.image.fetched.record
        return [outcome(self.bus.topics, record, Outcome.INDEXED, stage=STAGE, image_id=image_id)]

    def _follow(self, embedding: Embedding) -> list[Emit]:
        """Another model's fresh embedding: ask for this image with this version's model too."""
        if embedding.backfill or not embedding.crop.crop_key or self.index.vector(embedding.image_id) is not None:
            return []
        return [self.reembed_request(embedding.image_id, embedding.crop.crop_key, lineage(embedding))]

    def reembed_request(self, image_id: str, crop_key: str, metadata: dict[str, str]) -> Emit:
        request = ReembedImage(
            image_id=image_id, crop_key=crop_key, lineage=metadata, model=self.key.model, model_version=self.key.version
        )
        return Emit(self.bus.topics.reembed, image_id, request)

    def durable(self, done: dict[TopicPartition, int]) -> None:
        self.offsets.update(done)
        if time.monotonic() - self._last_snapshot >= self.settings.snapshot_seconds:
            self.snapshot()

    def snapshot(self) -> None:
        with self._lock:
            if not self._dirty or self.retired:
                return
            self.snapshots.save(self.index, dict(self.offsets), set(self.tombstones))
            self._dirty = False
            self._last_snapshot = time.monotonic()

    def retire(self) -> None:
        """No more snapshots, and the stored one forgotten: under the snapshot lock, so none lands after."""
        with self._lock:
            self.retired = True
            self.snapshots.forget()

    def caught_up(self, ends: dict[TopicPartition, int]) -> bool:
        return all(self.offsets.get(tp, 0) >= end for tp, end in ends.items())

    def worker(self) -> StreamWorker[Embedding]:
        return StreamWorker(
            stage=STAGE,
            bus=self.bus,
            source=self.bus.topics.embedded,
            message_type=Embedding,
            process=each(self.handle),
            replica=True,
            start_offsets=self.offsets,
            on_durable=self.durable,
            on_idle=self.snapshot,
            max_batch=max(self.settings.max_batch, 256),
        )
