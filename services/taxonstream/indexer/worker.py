"""The indexer's settings, snapshots and the replica worker embedded → index (+ outcome), one per version."""

from __future__ import annotations

import logging
import threading

import numpy as np
from kafka import TopicPartition
from pydantic import Field

from taxonstream.core.bus import Bus, Emit
from taxonstream.core.keys import thumbnail_key
from taxonstream.core.outcomes import outcome
from taxonstream.core.settings import SERVICE_PORTS
from taxonstream.core.store import ObjectStore
from taxonstream.core.worker import StreamWorker, each
from taxonstream.index.config import IndexSettings
from taxonstream.index.snapshots import Snapshots, SnapshotTrigger, version_config
from taxonstream.index.versions import VersionKey
from taxonstream.landcover.source import LandCover
from taxonstream.v1.messages_pb2 import Embedding, Outcome, ReembedImage

log = logging.getLogger(__name__)
STAGE = "indexer"


class IndexerSettings(IndexSettings):
    grpc_port: int = SERVICE_PORTS["indexer"].grpc
    metrics_port: int = SERVICE_PORTS["indexer"].metrics
    index_model: str = "clip_standin_image"
    index_model_version: str = "1"
    # A snapshot once this many upserts/deletes arrived, or this often while any arrive (times images /
    # snapshot_changes once the index is larger: 100 s at 100,000), and at shutdown; the newest
    # `snapshot_keep` generations stay in S3 (index/snapshots.py SnapshotTrigger).
    snapshot_seconds: float = 10.0
    snapshot_changes: int = Field(default=10_000, ge=1)
    snapshot_keep: int = Field(default=2, ge=1, le=100)
    # A CDL GeoTIFF (local path or s3://bucket/key): records with coordinates get LatLonCover's sixteen
    # shares (A_small … WL_big) in their metadata before they are indexed (docs/landcover.md). Empty: none.
    landcover_raster: str = ""
    landcover_cache_dir: str = "/tmp/taxonstream-landcover"


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
        # The 256-px crop, or what stands in for it where the detector stored none (core/keys.py).
        "thumbnail_key": thumbnail_key(
            embedding.image_id,
            crop.model,
            crop.model_version,
            crop.crop_key,
            fetched.object_key,
            (fetched.width, fetched.height),
        ),
    }


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
        default = (settings.index_model, settings.index_model_version)
        config = version_config(settings.index_config(), key.model, key.version, default)
        self.snapshots = Snapshots(store, config, key.model, key.version, settings.snapshot_keep)
        self.index, self.offsets, self.tombstones = self.snapshots.load(bus.topics.embedded)
        if not self.offsets and start_offsets:
            self.offsets = dict(start_offsets)  # a version added by reembed: from when it was added
        every = settings.snapshot_changes, settings.snapshot_seconds
        self.changes = SnapshotTrigger(*every, size=lambda: len(self.index))
        self._lock = threading.Lock()
        self.retired = False
        raster = settings.landcover_raster
        self.landcover = LandCover.shared(raster, store, settings.landcover_cache_dir) if raster else None

    def handle(self, embedding: Embedding) -> list[Emit]:
        image_id = embedding.image_id
        if embedding.deleted:
            self.index.delete(image_id)
            self.tombstones.add(image_id)
            self.changes.note()
            return []
        if (embedding.model, embedding.model_version) != (self.key.model, self.key.version):
            return self._follow(embedding)
        if embedding.backfill:
            if image_id not in self.tombstones:
                metadata = self._covered(dict(embedding.lineage))
                self.index.upsert(image_id, np.asarray(embedding.vector, dtype=np.float32), metadata)
                self.changes.note()
            return []  # its record finished when the image was first indexed
        self.tombstones.discard(image_id)
        self.index.upsert(image_id, np.asarray(embedding.vector, dtype=np.float32), self._covered(lineage(embedding)))
        self.changes.note()
        record = embedding.crop.image.fetched.record
        return [outcome(self.bus.topics, record, Outcome.INDEXED, stage=STAGE, image_id=image_id)]

    def _covered(self, metadata: dict[str, str]) -> dict[str, str]:
        """The one place records get their land cover (TAXONSTREAM_LANDCOVER_RASTER), just before the index."""
        return metadata if self.landcover is None else self.landcover.add(metadata)

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
        self.snapshot_if_due()

    def snapshot_if_due(self) -> None:
        if self.changes.due():
            self.snapshot()

    def snapshot(self) -> None:
        with self._lock:
            if not self.changes.changes or self.retired:
                return
            self.snapshots.save(self.index, dict(self.offsets), set(self.tombstones))
            self.changes.saved()

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
            on_gap="refuse",  # the index must not silently miss embeddings retention deleted
            on_durable=self.durable,
            on_idle=self.snapshot_if_due,
            max_batch=max(self.settings.max_batch, 256),
        )
