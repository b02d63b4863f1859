"""Indexer gRPC API: search, stats, listing, deletes, classification and index versions."""

from __future__ import annotations

import functools
import logging
from datetime import timedelta

import grpc
import numpy as np

from taxonstream.classify.service import Classifier, ClassifyError, classify_response
from taxonstream.core.bus import Bus, Emit, send_all
from taxonstream.core.channels import service_channel
from taxonstream.core.errors import FailedPrecondition, InvalidArgument, NotFound
from taxonstream.core.server import Relayed
from taxonstream.core.store import ObjectStore
from taxonstream.index.filters import Wanted, from_request
from taxonstream.index.versions import VersionKey, Versions
from taxonstream.indexer.reembed import start_reembed
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
        self.detector = detector_pb2_grpc.DetectorStub(service_channel(settings, settings.detector_addr))
        self.embedder = embedder_pb2_grpc.EmbedderStub(service_channel(settings, settings.embedder_addr))
        # One classifier per index version, with its label-embedding caches (taxonstream.classify.service).
        self.classifiers: dict[tuple[str, str], Classifier] = {}

    @functools.cached_property
    def producer(self):
        return self.bus.producer()

    def _version(self, request) -> IndexWorker:
        """The index version a request names (model, model_version), or the serving one."""
        key = _version_key(request) if request.model else None
        work = self.versions.get(key)
        if work is None:
            known = ", ".join(str(k) for k, _ in self.versions.items())
            raise NotFound(f"no index version {key}; this indexer keeps {known}")
        return work

    def _query_vector(self, request, work: IndexWorker) -> np.ndarray:
        query = request.WhichOneof("query")  # Search and Classify requests share this oneof
        model = {"model": work.key.model, "model_version": work.key.version}
        if query == "text":
            try:
                answer = self.embedder.EmbedTexts(
                    embedder_pb2.EmbedTextsRequest(texts=[request.text], **model), timeout=60
                )
            except grpc.RpcError as error:
                raise Relayed.of(error, "query text") from error
            return np.asarray(answer.vectors[0].values, dtype=np.float32)
        if query == "image_id":
            vector = work.index.vector(request.image_id)
            if vector is None:
                raise NotFound(f"image {request.image_id!r} is not indexed in {work.key}")
            return vector
        if query == "image":
            # The same path an ingested image takes: detect and crop, then embed the crop.
            try:
                crop = self.detector.Detect(detector_pb2.DetectRequest(image=request.image), timeout=60).crop
                embedded = self.embedder.EmbedImages(
                    embedder_pb2.EmbedImagesRequest(images=[crop], **model), timeout=60
                )
            except grpc.RpcError as error:
                raise Relayed.of(error, "query image") from error
            return np.asarray(embedded.vectors[0].values, dtype=np.float32)
        raise InvalidArgument("give an image, an image_id or a text to search by")

    @staticmethod
    def _filters(request) -> Wanted:
        try:
            return from_request((f.field, f.op, f.values) for f in request.filters)
        except ValueError as error:
            raise InvalidArgument(str(error)) from error

    def Search(self, request, context) -> indexer_pb2.SearchResponse:
        filters = self._filters(request)
        work = self._version(request)
        vector = self._query_vector(request, work)
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
        filters = self._filters(request)
        work = self._version(request)
        stats = work.index.stats(filters or None)
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
        filters = self._filters(request)
        work = self._version(request)
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
        work = self._version(request)
        vector = self._query_vector(request, work)
        try:
            return classify_response(self, request, vector, work.key.model, work.key.version)
        except ClassifyError as error:
            raise FailedPrecondition(str(error)) from error
        except grpc.RpcError as error:
            raise Relayed.of(error, "text embeddings") from error

    def Reembed(self, request, context) -> indexer_pb2.ReembedResponse:
        if not request.model:
            raise InvalidArgument("name the new embedding model (its image tower on Triton)")
        key = _version_key(request)
        sent, created = start_reembed(self.versions, self.bus, self.producer, self.embedder, key, context.is_active)
        return indexer_pb2.ReembedResponse(images=sent, created=created)

    def Serve(self, request, context) -> indexer_pb2.ServeResponse:
        key = _version_key(request)
        try:
            previous = self.versions.serve(key)
        except KeyError:
            known = ", ".join(str(k) for k, _ in self.versions.items())
            raise NotFound(f"no index version {key}; this indexer keeps {known}") from None
        return indexer_pb2.ServeResponse(previous=str(previous))

    def Retire(self, request, context) -> indexer_pb2.ServeResponse:
        key = _version_key(request)
        try:
            work = self.versions.retire(key)
        except KeyError:
            raise NotFound(f"no index version {key}") from None
        except ValueError as error:
            raise FailedPrecondition(str(error)) from error
        work.retire()
        return indexer_pb2.ServeResponse(previous=str(key))
