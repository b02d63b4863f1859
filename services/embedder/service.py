"""Embedder service: EmbedImages and EmbedTexts over gRPC, and the worker cropped → embedded."""

from __future__ import annotations

import io

import grpc
import numpy as np
from PIL import Image, UnidentifiedImageError

from taxonstream.core.bus import Bus, Emit
from taxonstream.core.errors import Failed
from taxonstream.core.server import Service, connect, registrar
from taxonstream.core.settings import CoreSettings
from taxonstream.core.store import ObjectStore
from taxonstream.core.triton import TritonModel
from taxonstream.core.worker import StreamWorker, in_batches
from taxonstream.models.preprocess import clip_pixel_values
from taxonstream.v1 import embedder_pb2, embedder_pb2_grpc
from taxonstream.v1.messages_pb2 import Crop, Embedding

STAGE = "embedder"


class EmbedderSettings(CoreSettings):
    grpc_port: int = 24064
    metrics_port: int = 9164
    embed_model: str = "clip_standin_image"
    embed_model_version: str = "1"
    # The text tower of the same CLIP model (its vectors share the image vectors' space).
    embed_text_model: str = "clip_standin_text"
    embed_text_model_version: str = "1"
    # Texts per Triton request: the text model's max_batch_size.
    embed_text_batch: int = 128


def pixel_values(data: bytes) -> np.ndarray:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise Failed("undecodable_image", f"the crop does not decode: {error}") from error
    return clip_pixel_values(image)


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class Encoder:
    def __init__(self, settings: EmbedderSettings) -> None:
        self.model = TritonModel(settings.triton_url, settings.embed_model, settings.embed_model_version)

    def embed(self, pixels: list[np.ndarray]) -> np.ndarray:
        out = self.model.infer({"pixel_values": np.stack(pixels)}, ["embeddings"])["embeddings"]
        return l2_normalise(out.astype(np.float32))


class TextEncoder:
    """Texts -> L2-normalised CLIP text vectors, tokenized here (CLIP BPE, 77 tokens), embedded on Triton."""

    def __init__(self, settings: EmbedderSettings) -> None:
        self.batch = settings.embed_text_batch
        self.model = TritonModel(settings.triton_url, settings.embed_text_model, settings.embed_text_model_version)
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:  # loaded on first use: it may fetch the vocabulary once per machine
            from taxonstream.models.tokenizer import ClipTokenizer

            self._tokenizer = ClipTokenizer()
        return self._tokenizer

    def embed(self, texts: list[str]) -> np.ndarray:
        ids = self.tokenizer(texts)
        parts = [
            self.model.infer({"input_ids": ids[i : i + self.batch]}, ["embeddings"])["embeddings"]
            for i in range(0, len(ids), self.batch)
        ]
        return l2_normalise(np.concatenate(parts).astype(np.float32))


class EmbedWorker:
    def __init__(self, settings: EmbedderSettings, bus: Bus, store: ObjectStore, encoder: Encoder) -> None:
        self.settings = settings
        self.bus = bus
        self.store = store
        self.encoder = encoder

    def prepare(self, crop: Crop) -> np.ndarray:
        try:
            return pixel_values(self.store.get(crop.crop_key))
        except KeyError:
            raise Failed("missing_object", f"crop {crop.crop_key} is not in the store") from None

    def finish(self, crop: Crop, vector: np.ndarray) -> list[Emit]:
        embedding = Embedding(
            image_id=crop.image_id,
            vector=vector.tolist(),
            model=self.settings.embed_model,
            model_version=self.settings.embed_model_version,
            crop=crop,
        )
        return [Emit(self.bus.topics.embedded, crop.image_id, embedding)]


class EmbedderServicer(embedder_pb2_grpc.EmbedderServicer):
    def __init__(self, settings: EmbedderSettings, encoder: Encoder, text_encoder: TextEncoder | None = None) -> None:
        self.settings = settings
        self.encoder = encoder
        self.text_encoder = text_encoder or TextEncoder(settings)

    def EmbedTexts(self, request, context) -> embedder_pb2.EmbedResponse:
        if not request.texts:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no texts given")
        return self._response(self.text_encoder.embed(list(request.texts)))

    def EmbedImages(self, request, context) -> embedder_pb2.EmbedResponse:
        if not request.images:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no images given")
        try:
            pixels = [pixel_values(data) for data in request.images]
        except Failed as failure:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, failure.message)
        return self._response(self.encoder.embed(pixels))

    def _response(self, vectors: np.ndarray) -> embedder_pb2.EmbedResponse:
        return embedder_pb2.EmbedResponse(
            vectors=[embedder_pb2.Vector(values=v.tolist()) for v in vectors],
            model=self.settings.embed_model,
            model_version=self.settings.embed_model_version,
        )


def build(settings: EmbedderSettings) -> Service:
    bus, store = connect(settings)
    encoder = Encoder(settings)
    work = EmbedWorker(settings, bus, store, encoder)
    worker = StreamWorker(
        stage=STAGE,
        bus=bus,
        source=bus.topics.cropped,
        message_type=Crop,
        process=in_batches(work.prepare, encoder.embed, work.finish),
        max_batch=settings.max_batch,
    )
    servicer = EmbedderServicer(settings, encoder)

    return Service(
        name=STAGE,
        register=registrar(embedder_pb2, "Embedder", embedder_pb2_grpc.add_EmbedderServicer_to_server, servicer),
        loops=[worker.run],
    )
