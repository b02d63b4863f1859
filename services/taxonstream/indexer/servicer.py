"""Indexer gRPC API: search, stats, listing, deletes, classification and index versions."""

from __future__ import annotations

import functools
import io
import itertools
import logging
import time
from datetime import timedelta

import grpc
import numpy as np
from PIL import Image

from taxonstream.core.bus import Bus, Emit, send_all
from taxonstream.core.store import ObjectStore
from taxonstream.index.filters import field_name
from taxonstream.index.versions import VersionKey, Versions
from taxonstream.indexer.worker import IndexerSettings, IndexWorker
from taxonstream.v1 import (
    detector_pb2,
    detector_pb2_grpc,
    embedder_pb2,
    embedder_pb2_grpc,
    indexer_pb2,
    indexer_pb2_grpc,
)
from taxonstream.v1.messages_pb2 import Embedding

log = logging.getLogger(__name__)


def _version_key(request) -> VersionKey:
    """The index version a request's `model`/`model_version` fields name (version "1" when left out)."""
    return VersionKey(request.model, request.model_version or "1")


class IndexerServicer(indexer_pb2_grpc.IndexerServicer):
    def __init__(
        self, settings: IndexerSettings, versions: Versions[IndexWorker], bus: Bus, store: ObjectStore
    ) -> None:
        self.settings = settings
        self.versions = versions
        self.bus = bus
        self.store = store
        self.detector = detector_pb2_grpc.DetectorStub(grpc.insecure_channel(settings.detector_addr))
        self.embedder = embedder_pb2_grpc.EmbedderStub(grpc.insecure_channel(settings.embedder_addr))

    @functools.cached_property
    def producer(self):
        return self.bus.producer()

    def _version(self, request, context) -> IndexWorker:
        """The index version a request names (model, model_version), or the serving one."""
        key = _version_key(request) if request.model else None
        work = self.versions.get(key)
        if work is None:
            known = ", ".join(str(k) for k, _ in self.versions.items())
            context.abort(grpc.StatusCode.NOT_FOUND, f"no index version {key}; this indexer keeps {known}")
        return work

    def _query_vector(self, request, context, work: IndexWorker) -> np.ndarray:
        query = request.WhichOneof("query")  # Search and Classify requests share this oneof
        model = {"model": work.key.model, "model_version": work.key.version}
        if query == "text":
            try:
                answer = self.embedder.EmbedTexts(
                    embedder_pb2.EmbedTextsRequest(texts=[request.text], **model), timeout=60
                )
            except grpc.RpcError as error:
                context.abort(error.code(), f"query text: {error.details()}")
            return np.asarray(answer.vectors[0].values, dtype=np.float32)
        if query == "image_id":
            vector = work.index.vector(request.image_id)
            if vector is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"image {request.image_id!r} is not indexed in {work.key}")
            return vector
        if query == "image":
            # The same path an ingested image takes: detect and crop, then embed the crop.
            try:
                crop = self.detector.Detect(detector_pb2.DetectRequest(image=request.image), timeout=60).crop
                embedded = self.embedder.EmbedImages(
                    embedder_pb2.EmbedImagesRequest(images=[crop], **model), timeout=60
                )
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
        work = self._version(request, context)
        vector = self._query_vector(request, context, work)
        hits = work.index.search(vector, request.k or 10, filters or None)
        return indexer_pb2.SearchResponse(
            hits=[
                indexer_pb2.Hit(
                    image_id=h.image_id,
                    score=h.score,
                    metadata=h.metadata,
                    thumbnail_url=self.store.presigned_url(h.metadata["thumbnail_key"], timedelta(hours=1))
                    if h.metadata.get("thumbnail_key")
                    else "",
                )
                for h in hits
            ],
            model=work.key.model,
            model_version=work.key.version,
        )

    def Stats(self, request, context) -> indexer_pb2.StatsResponse:
        work = self._version(request, context)
        stats = work.index.stats()
        return indexer_pb2.StatsResponse(
            images=stats.images,
            model=work.key.model,
            model_version=work.key.version,
            offsets={str(tp.partition): o for tp, o in work.offsets.items()},
            kind=stats.kind,
            by_field={f: indexer_pb2.FieldCounts(counts=c) for f, c in stats.by_field.items()},
            versions=[
                indexer_pb2.IndexVersion(
                    model=key.model,
                    model_version=key.version,
                    images=len(other.index),
                    serving=key == self.versions.serving,
                )
                for key, other in self.versions.items()
            ],
        )

    def ListImages(self, request, context):
        filters = self._filters(request, context)
        work = self._version(request, context)
        for image_id, metadata in work.index.images(filters or None):
            if not request.job_id or metadata.get("job_id") == request.job_id:
                hit = indexer_pb2.Hit(image_id=image_id, metadata=metadata)
                if request.with_vectors:
                    vector = work.index.vector(image_id)
                    if vector is None:
                        continue  # deleted while listing
                    hit.vector.extend(vector.tolist())
                yield hit

    def Delete(self, request, context) -> indexer_pb2.DeleteResponse:
        topic = self.bus.topics.embedded
        removals = [Emit(topic, i, Embedding(image_id=i, deleted=True)) for i in request.image_ids if i]
        send_all(self.producer, removals)
        return indexer_pb2.DeleteResponse(requested=len(removals))

    def Classify(self, request, context) -> indexer_pb2.ClassifyResponse:
        # The query vector comes the way Search gets it; the scoring lives in taxonstream.classify.
        from taxonstream.classify.service import ClassifyError, classify_response

        work = self._version(request, context)
        vector = self._query_vector(request, context, work)
        try:
            return classify_response(self, request, vector, work.key.model, work.key.version)
        except ClassifyError as error:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        except grpc.RpcError as error:
            context.abort(error.code(), f"text embeddings: {error.details()}")

    def Reembed(self, request, context) -> indexer_pb2.ReembedResponse:
        if not request.model:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name the new embedding model (its image tower on Triton)")
        key = _version_key(request)
        serving = self.versions.get()
        if serving is None or key == serving.key:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{key} is the serving index version already")
        self._check_model(key, context)
        # A new version starts where the topic ends now. Everything before must be in the serving index before
        # it is listed; everything after reaches the new version itself (IndexWorker._follow).
        ends = self.bus.end_offsets(self.bus.topics.embedded)
        work, created = self.versions.add(key, lambda: ends)
        deadline = time.monotonic() + 120
        while not serving.caught_up(ends):
            if time.monotonic() > deadline or not context.is_active():
                context.abort(grpc.StatusCode.UNAVAILABLE, f"the serving index {serving.key} is not catching up")
            time.sleep(0.2)
        requests = (
            work.reembed_request(image_id, metadata.get("crop_key", ""), metadata)
            for image_id, metadata in serving.index.images(None)
        )
        sent = 0
        while batch := list(itertools.islice(requests, 5000)):  # bounded memory for a large index
            send_all(self.producer, batch)
            sent += len(batch)
        log.info("reembed requested", extra={"version": str(key), "images": sent, "new_version": created})
        return indexer_pb2.ReembedResponse(images=sent, created=created)

    def _check_model(self, key: VersionKey, context) -> None:
        """The embedder embeds a probe image with the model (loading it on Triton if need be), or says why not."""
        probe = io.BytesIO()
        Image.new("RGB", (8, 8), (120, 160, 90)).save(probe, format="PNG")
        request = embedder_pb2.EmbedImagesRequest(images=[probe.getvalue()], model=key.model, model_version=key.version)
        try:
            self.embedder.EmbedImages(request, timeout=120)
        except grpc.RpcError as error:
            code = error.code()
            context.abort(
                code if code == grpc.StatusCode.UNAVAILABLE else grpc.StatusCode.FAILED_PRECONDITION,
                f"the embedder cannot run {key}: {error.details()} (install it into Triton's model repository "
                "first: taxonstream models install … --name NAME gives NAME_image)",
            )

    def Serve(self, request, context) -> indexer_pb2.ServeResponse:
        key = _version_key(request)
        try:
            previous = self.versions.serve(key)
        except KeyError:
            known = ", ".join(str(k) for k, _ in self.versions.items())
            context.abort(grpc.StatusCode.NOT_FOUND, f"no index version {key}; this indexer keeps {known}")
        return indexer_pb2.ServeResponse(previous=str(previous))

    def Retire(self, request, context) -> indexer_pb2.ServeResponse:
        key = _version_key(request)
        try:
            work = self.versions.retire(key)
        except KeyError:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no index version {key}")
        except ValueError as error:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        with work._lock:
            work.retired = True
            work.snapshots.forget()
        return indexer_pb2.ServeResponse(previous=str(key))
