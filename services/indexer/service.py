"""Indexer service: Search/Stats over gRPC, and the replica worker embedded → index (+ outcome)."""

from __future__ import annotations

import functools
import logging
import threading
import time
from datetime import timedelta
from typing import Literal

import grpc
import numpy as np
from kafka import TopicPartition
from pydantic import Field, model_validator

from taxonstream.core.bus import Bus, Emit, send_all
from taxonstream.core.outcomes import outcome
from taxonstream.core.server import Service, connect, registrar
from taxonstream.core.settings import CoreSettings
from taxonstream.core.store import ObjectStore, derivative_keys
from taxonstream.core.worker import StreamWorker, each
from taxonstream.indexer.backend import FaissConfig, IndexBackend, IndexConfig, MilvusConfig, open_index, restore_index
from taxonstream.indexer.filters import field_name
from taxonstream.v1 import (
    detector_pb2,
    detector_pb2_grpc,
    embedder_pb2,
    embedder_pb2_grpc,
    indexer_pb2,
    indexer_pb2_grpc,
)
from taxonstream.v1.messages_pb2 import Embedding, Outcome

log = logging.getLogger(__name__)
STAGE = "indexer"


class IndexerSettings(CoreSettings):
    grpc_port: int = 24065
    metrics_port: int = 9165
    index_model: str = "clip_standin_image"
    index_model_version: str = "1"
    # A snapshot at most this often while embeddings arrive, and always at shutdown.
    snapshot_seconds: float = 10.0
    # faiss (in-process; exact, then HNSW from `index_hnsw_from`, IVF-PQ from `index_ivfpq_from` vectors)
    # or milvus (a Milvus server at `milvus_uri`; a path ending .db runs Milvus Lite in-process).
    # What each knob trades is in docs/index.md ("Tuning").
    index_backend: Literal["faiss", "milvus"] = "faiss"
    index_kind: Literal["auto", "flat", "hnsw", "ivfpq"] = "auto"  # FAISS: "auto" follows the size
    index_hnsw_from: int = Field(default=100_000, ge=1)
    index_ivfpq_from: int = Field(default=10_000_000, ge=1)
    # FAISS rebuilds (type migration, compaction, IVF-PQ retraining) of this many live vectors or more
    # run in a background thread; smaller ones inside the write that called for them.
    index_background_from: int = Field(default=10_000, ge=0)
    # HNSW, both backends: links per node, build-time and search-time candidate lists.
    index_hnsw_m: int = Field(default=32, ge=4, le=256)
    index_ef_construction: int = Field(default=80, ge=8, le=4096)
    index_ef_search: int = Field(default=256, ge=1, le=32_768)
    # IVF(-PQ): lists (0: ≈4·√n for FAISS, 1024 a segment for Milvus), lists probed a query, PQ
    # sub-quantizers (FAISS takes the largest divisor of the dimension up to this) and bits a code.
    index_ivf_nlist: int = Field(default=0, ge=0, le=1 << 20)
    index_ivf_nprobe: int = Field(default=32, ge=1, le=1 << 20)
    index_pq_m: int = Field(default=64, ge=1, le=4096)
    index_pq_nbits: int = Field(default=8, ge=4, le=16)
    index_ivfpq_rerank: int = Field(default=8, ge=1, le=1024)  # FAISS: candidates re-scored per hit
    # FAISS filtered search: exact when at most `exact_below` items match or under `ann_min_share` of the
    # index, the ANN search with the filter as its selector otherwise.
    index_exact_below: int = Field(default=20_000, ge=0)
    index_ann_min_share: float = Field(default=0.05, ge=0, le=1)
    # FAISS tombstones (deleted and replaced vectors) are compacted past this share and count.
    index_compact_ratio: float = Field(default=0.25, gt=0, le=1)
    index_compact_min: int = Field(default=1024, ge=0)
    milvus_uri: str = ""
    milvus_token: str = ""
    milvus_collection: str = "taxonstream_images"
    # Used when the collection is created; a changed type needs a new collection (search knobs apply at once).
    milvus_index_type: Literal["HNSW", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "FLAT", "DISKANN", "AUTOINDEX"] = "HNSW"
    milvus_exact_below: int = Field(default=2_000, ge=0, le=16_384)  # one Milvus query returns at most 16384

    @model_validator(mode="after")
    def check_index_thresholds(self) -> IndexerSettings:
        if self.index_hnsw_from > self.index_ivfpq_from:
            raise ValueError(
                f"index_hnsw_from ({self.index_hnsw_from}) must not exceed index_ivfpq_from ({self.index_ivfpq_from})"
            )
        return self

    def index_config(self) -> IndexConfig:
        from taxonstream.indexer.backend import milvus_params

        index_params, search_params = milvus_params(
            self.milvus_index_type,
            hnsw_m=self.index_hnsw_m,
            ef_construction=self.index_ef_construction,
            ef_search=self.index_ef_search,
            nlist=self.index_ivf_nlist,
            nprobe=self.index_ivf_nprobe,
            pq_m=self.index_pq_m,
            pq_nbits=self.index_pq_nbits,
        )
        milvus = MilvusConfig(
            uri=self.milvus_uri or MilvusConfig.uri,
            token=self.milvus_token,
            collection=self.milvus_collection,
            index_type=self.milvus_index_type,
            index_params=index_params,
            search_params=search_params,
            exact_below=self.milvus_exact_below,
        )
        faiss = FaissConfig(
            hnsw_from=self.index_hnsw_from,
            ivfpq_from=self.index_ivfpq_from,
            kind=None if self.index_kind == "auto" else self.index_kind,
            hnsw_m=self.index_hnsw_m,
            ef_construction=self.index_ef_construction,
            ef_search=self.index_ef_search,
            nlist=self.index_ivf_nlist,
            pq_m=self.index_pq_m,
            pq_nbits=self.index_pq_nbits,
            nprobe=self.index_ivf_nprobe,
            rerank=self.index_ivfpq_rerank,
            exact_below=self.index_exact_below,
            ann_min_share=self.index_ann_min_share,
            compact_ratio=self.index_compact_ratio,
            compact_min=self.index_compact_min,
            background_from=self.index_background_from,
        )
        return IndexConfig(backend=self.index_backend, faiss=faiss, milvus=milvus)


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
    """The index and the offsets it includes, in S3: restore + replay rebuilds any replica."""

    def __init__(self, store: ObjectStore, settings: IndexerSettings) -> None:
        self.store = store
        self.config = settings.index_config()
        self.prefix = f"index/{settings.index_model}/{settings.index_model_version}/{self.config.backend}/"

    def load(self, topic: str) -> tuple[IndexBackend, dict[TopicPartition, int]]:
        latest = self.store.get_json(self.prefix + "latest.json")
        if latest is None or not latest.get("index_key"):
            return open_index(self.config), {}  # nothing durable yet: replay the topic from its start
        index = restore_index(self.config, self.store.get(latest["index_key"]))
        offsets = {TopicPartition(topic, int(p)): int(o) for p, o in latest["offsets"].items()}
        log.info("restored snapshot", extra={"images": len(index), "offsets": latest["offsets"]})
        return index, offsets

    def save(self, index: IndexBackend, offsets: dict[TopicPartition, int]) -> None:
        data = index.dump()
        if not data:
            return
        generation = time.strftime("%Y%m%dT%H%M%S") + f"-{time.time_ns() % 1_000_000:06d}"
        key = self.prefix + f"snapshots/{generation}.bin"
        self.store.put(key, data)
        # latest.json last: a crash between the two writes leaves the previous snapshot in force.
        self.store.put_json(
            self.prefix + "latest.json",
            {
                "generation": generation,
                "index_key": key,
                "offsets": {str(tp.partition): o for tp, o in offsets.items()},
            },
        )


class IndexWorker:
    def __init__(self, settings: IndexerSettings, bus: Bus, store: ObjectStore) -> None:
        self.settings = settings
        self.bus = bus
        self.snapshots = Snapshots(store, settings)
        self.index, self.offsets = self.snapshots.load(bus.topics.embedded)
        self._dirty = False
        self._last_snapshot = time.monotonic()
        self._lock = threading.Lock()

    def handle(self, embedding: Embedding) -> list[Emit]:
        if embedding.deleted:
            self.index.delete(embedding.image_id)
            self._dirty = True
            return []
        record = embedding.crop.image.fetched.record
        wanted = (self.settings.index_model, self.settings.index_model_version)
        if (embedding.model, embedding.model_version) != wanted:
            log.info("skipped an embedding of another model", extra={"model": embedding.model})
            return []
        self.index.upsert(embedding.image_id, np.asarray(embedding.vector, dtype=np.float32), lineage(embedding))
        self._dirty = True
        return [outcome(self.bus.topics, record, Outcome.INDEXED, stage=STAGE, image_id=embedding.image_id)]

    def durable(self, done: dict[TopicPartition, int]) -> None:
        self.offsets.update(done)
        if time.monotonic() - self._last_snapshot >= self.settings.snapshot_seconds:
            self.snapshot()

    def snapshot(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            self.snapshots.save(self.index, dict(self.offsets))
            self._dirty = False
            self._last_snapshot = time.monotonic()

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


class IndexerServicer(indexer_pb2_grpc.IndexerServicer):
    def __init__(self, settings: IndexerSettings, work: IndexWorker) -> None:
        self.settings = settings
        self.work = work
        self.detector = detector_pb2_grpc.DetectorStub(grpc.insecure_channel(settings.detector_addr))
        self.embedder = embedder_pb2_grpc.EmbedderStub(grpc.insecure_channel(settings.embedder_addr))

    @functools.cached_property
    def producer(self):
        return self.work.bus.producer()

    def _query_vector(self, request, context) -> np.ndarray:
        query = request.WhichOneof("query")  # Search and Classify requests share this oneof
        if query == "text":
            try:
                answer = self.embedder.EmbedTexts(embedder_pb2.EmbedTextsRequest(texts=[request.text]), timeout=60)
            except grpc.RpcError as error:
                context.abort(error.code(), f"query text: {error.details()}")
            return np.asarray(answer.vectors[0].values, dtype=np.float32)
        if query == "image_id":
            vector = self.work.index.vector(request.image_id)
            if vector is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"image {request.image_id!r} is not indexed")
            return vector
        if query == "image":
            # The same path an ingested image takes: detect and crop, then embed the crop.
            try:
                crop = self.detector.Detect(detector_pb2.DetectRequest(image=request.image), timeout=60).crop
                embedded = self.embedder.EmbedImages(embedder_pb2.EmbedImagesRequest(images=[crop]), timeout=60)
            except grpc.RpcError as error:
                context.abort(error.code(), f"query image: {error.details()}")
            return np.asarray(embedded.vectors[0].values, dtype=np.float32)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "give an image, an image_id or a text to search by")

    @staticmethod
    def _filters(request, context) -> dict[str, frozenset[str]]:
        try:
            return {field_name(f.field): frozenset(f.values) for f in request.filters}
        except ValueError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))

    def Search(self, request, context) -> indexer_pb2.SearchResponse:
        filters = self._filters(request, context)
        vector = self._query_vector(request, context)
        hits = self.work.index.search(vector, request.k or 10, filters or None)
        store = self.work.snapshots.store
        return indexer_pb2.SearchResponse(
            hits=[
                indexer_pb2.Hit(
                    image_id=h.image_id,
                    score=h.score,
                    metadata=h.metadata,
                    thumbnail_url=store.presigned_url(h.metadata["thumbnail_key"], timedelta(hours=1))
                    if h.metadata.get("thumbnail_key")
                    else "",
                )
                for h in hits
            ],
            model=self.settings.index_model,
            model_version=self.settings.index_model_version,
        )

    def Stats(self, request, context) -> indexer_pb2.StatsResponse:
        stats = self.work.index.stats()
        return indexer_pb2.StatsResponse(
            images=stats.images,
            model=self.settings.index_model,
            model_version=self.settings.index_model_version,
            offsets={str(tp.partition): o for tp, o in self.work.offsets.items()},
            kind=stats.kind,
            by_field={f: indexer_pb2.FieldCounts(counts=c) for f, c in stats.by_field.items()},
        )

    def ListImages(self, request, context):
        filters = self._filters(request, context)
        for image_id, metadata in self.work.index.images(filters or None):
            if not request.job_id or metadata.get("job_id") == request.job_id:
                hit = indexer_pb2.Hit(image_id=image_id, metadata=metadata)
                if request.with_vectors:
                    vector = self.work.index.vector(image_id)
                    if vector is None:
                        continue  # deleted while listing
                    hit.vector.extend(vector.tolist())
                yield hit

    def Delete(self, request, context) -> indexer_pb2.DeleteResponse:
        topic = self.work.bus.topics.embedded
        removals = [Emit(topic, i, Embedding(image_id=i, deleted=True)) for i in request.image_ids if i]
        send_all(self.producer, removals)
        return indexer_pb2.DeleteResponse(requested=len(removals))

    def Classify(self, request, context) -> indexer_pb2.ClassifyResponse:
        # The query vector comes the way Search gets it; the scoring lives in taxonstream.classify.
        from taxonstream.classify.service import ClassifyError, classify_response

        vector = self._query_vector(request, context)
        try:
            return classify_response(self, request, vector)
        except ClassifyError as error:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        except grpc.RpcError as error:
            context.abort(error.code(), f"text embeddings: {error.details()}")


def build(settings: IndexerSettings) -> Service:
    bus, store = connect(settings)
    work = IndexWorker(settings, bus, store)
    return Service(
        name=STAGE,
        register=registrar(
            indexer_pb2, "Indexer", indexer_pb2_grpc.add_IndexerServicer_to_server, IndexerServicer(settings, work)
        ),
        loops=[work.worker().run],
        on_stop=work.snapshot,
    )
