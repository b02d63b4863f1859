"""Embedder gRPC API: image and text vectors from the embedder's models on Triton."""

from __future__ import annotations

import logging

import numpy as np

from taxonstream.core.errors import Failed, FailedPrecondition, InvalidArgument
from taxonstream.embedder.worker import Encoders, ModelKey, pixel_values
from taxonstream.v1 import embedder_pb2, embedder_pb2_grpc

log = logging.getLogger(__name__)


class EmbedderServicer(embedder_pb2_grpc.EmbedderServicer):
    def __init__(self, encoders: Encoders) -> None:
        self.encoders = encoders

    def EmbedTexts(self, request, context) -> embedder_pb2.EmbedResponse:
        if not request.texts:
            raise InvalidArgument("no texts given")
        key = self.encoders.key(request.model, request.model_version)
        try:
            answer = self._response(key, self.encoders.embed_texts(key, list(request.texts)))
            answer.logit_scale = self.encoders.logit_scale(key)  # Classify's temperature (pybioclip's)
            return answer
        except Failed as failure:
            raise FailedPrecondition(failure.message) from failure

    def EmbedImages(self, request, context) -> embedder_pb2.EmbedResponse:
        if not request.images:
            raise InvalidArgument("no images given")
        key = self.encoders.key(request.model, request.model_version)
        try:
            pixels = [pixel_values(data) for data in request.images]
        except Failed as failure:
            raise InvalidArgument(failure.message) from failure
        try:
            return self._response(key, self.encoders.embed(key, pixels))
        except Failed as failure:
            raise FailedPrecondition(failure.message) from failure

    @staticmethod
    def _response(key: ModelKey, vectors: np.ndarray) -> embedder_pb2.EmbedResponse:
        return embedder_pb2.EmbedResponse(
            vectors=[embedder_pb2.Vector(values=v.tolist()) for v in vectors], model=key[0], model_version=key[1]
        )
