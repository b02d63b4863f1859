"""The embedder's settings, encoders on Triton and the workers cropped → embedded, reembed → embedded."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError
from tritonclient.utils import InferenceServerException

from taxonstream.core import metrics
from taxonstream.core.bus import Bus, Emit
from taxonstream.core.errors import Failed
from taxonstream.core.settings import SERVICE_PORTS, CoreSettings
from taxonstream.core.store import ObjectStore, carrying
from taxonstream.core.triton import TritonModel
from taxonstream.models.derivatives import PixelBox, parse_box, read_crop
from taxonstream.models.preprocess import clip_pixel_values
from taxonstream.v1.messages_pb2 import Crop, Embedding, ReembedImage

T = TypeVar("T")

log = logging.getLogger(__name__)
STAGE = "embedder"
REEMBED_STAGE = "reembed"  # its own consumer group and metrics label


class EmbedderSettings(CoreSettings):
    grpc_port: int = SERVICE_PORTS["embedder"].grpc
    metrics_port: int = SERVICE_PORTS["embedder"].metrics
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
    """Preprocessed pixels -> L2-normalised vectors from one image tower on Triton."""

    def __init__(self, triton_url: str, model: str, version: str) -> None:
        self.model = TritonModel(triton_url, model, version)

    def embed(self, pixels: list[np.ndarray]) -> np.ndarray:
        out = self.model.infer({"pixel_values": np.stack(pixels)}, ["embeddings"])["embeddings"]
        return l2_normalise(out.astype(np.float32))


class TextEncoder:
    """Texts -> L2-normalised CLIP text vectors, tokenized here (CLIP BPE, 77 tokens), embedded on Triton."""

    def __init__(self, triton_url: str, model: str, version: str, batch: int) -> None:
        self.batch = batch
        self.model = TritonModel(triton_url, model, version)
        self._tokenizer = None
        self._logit_scale: float | None = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:  # loaded on first use: it may fetch the vocabulary once per machine
            from taxonstream.models.tokenizer import ClipTokenizer

            self._tokenizer = ClipTokenizer()
        return self._tokenizer

    def logit_scale(self) -> float:
        """The checkpoint's exp(logit_scale) from the text tower's Triton config (`models install` writes it);
        0.0 when none is recorded (the stand-ins)."""
        if self._logit_scale is None:
            config = self.model.client.get_model_config(self.model.model, self.model.version, as_json=True)
            value = config.get("config", {}).get("parameters", {}).get("logit_scale", {}).get("string_value", "")
            self._logit_scale = float(value) if value else 0.0
        return self._logit_scale

    def embed(self, texts: list[str]) -> np.ndarray:
        ids = self.tokenizer(texts)
        parts = [
            self.model.infer({"input_ids": ids[i : i + self.batch]}, ["embeddings"])["embeddings"]
            for i in range(0, len(ids), self.batch)
        ]
        return l2_normalise(np.concatenate(parts).astype(np.float32))


ModelKey = tuple[str, str]  # (image tower name, version)


class Encoders:
    """The embedder's own model plus any other a request or a reembed asks for, one client each."""

    def __init__(self, settings: EmbedderSettings) -> None:
        self.settings = settings
        self.default: ModelKey = (settings.embed_model, settings.embed_model_version)
        self._images: dict[ModelKey, Encoder] = {}
        self._texts: dict[ModelKey, TextEncoder] = {}
        self._lock = threading.Lock()

    def key(self, model: str = "", version: str = "") -> ModelKey:
        return (model, version or "1") if model else self.default

    def image(self, key: ModelKey | None = None) -> Encoder:
        key = key or self.default
        with self._lock:
            if key not in self._images:
                encoder = Encoder(self.settings.triton_url, *key)
                if key != self.default:  # a model installed after Triton started (reembed, search --model)
                    try:
                        encoder.model.load()
                    except InferenceServerException as error:
                        log.warning(
                            "loading a model failed", extra={"model": f"{key[0]}/{key[1]}", "error": error.message()}
                        )
                self._images[key] = encoder
            return self._images[key]

    def text(self, key: ModelKey | None = None) -> TextEncoder:
        """The text tower of image tower `key`: configured for the default, `<name>_text` otherwise."""
        key = key or self.default
        if key == self.default:
            text_key = (self.settings.embed_text_model, self.settings.embed_text_model_version)
        elif key[0].endswith("_image"):
            text_key = (key[0].removesuffix("_image") + "_text", key[1])
        else:
            raise Failed("no_text_model", f"{key[0]} is not named <name>_image, so it has no known text tower")
        with self._lock:
            if text_key not in self._texts:
                self._texts[text_key] = TextEncoder(self.settings.triton_url, *text_key, self.settings.embed_text_batch)
            return self._texts[text_key]

    def embed(self, key: ModelKey, pixels: list[np.ndarray]) -> np.ndarray:
        return _runnable(f"{key[0]}/{key[1]}", lambda: self.image(key).embed(pixels))

    def embed_texts(self, key: ModelKey, texts: list[str]) -> np.ndarray:
        return _runnable(f"the text tower of {key[0]}/{key[1]}", lambda: self.text(key).embed(texts))

    def logit_scale(self, key: ModelKey) -> float:
        """The model's CLIP temperature for classification (0.0: none recorded)."""
        return _runnable(f"the text tower of {key[0]}/{key[1]}", lambda: self.text(key).logit_scale())


def _runnable(model: str, run: Callable[[], T]) -> T:
    """Triton's refusal of a model (unknown, failed to load) as a Failed; unavailability is Transient already."""
    try:
        return run()
    except InferenceServerException as error:
        raise Failed("model_unavailable", f"Triton cannot run {model}: {error.message()}") from error


class EmbedWorker:
    """cropped -> embedded with the embedder's own model."""

    def __init__(self, settings: EmbedderSettings, bus: Bus, store: ObjectStore, encoders: Encoders) -> None:
        self.settings = settings
        self.bus = bus
        self.store = store
        self.encoders = encoders

    def pixels(
        self, crop_key: str, original_key: str, box: PixelBox | None, get: Callable[[str], bytes] | None = None
    ) -> np.ndarray:
        """The encoder input of a crop: the stored one, or the box cut from the original where no crop was
        stored (`crop_key` is the original's key; models/derivatives.py)."""
        # Full decode on purpose: BioCLIP parity needs pybioclip's resize of the crop's own pixels, which a
        # reduced-scale JPEG decode would change; a stored crop is at most 1024 px on its shorter side, an
        # original read instead at most about a megapixel (or its crop would have been stored).
        with metrics.timed("decode"):
            try:
                return clip_pixel_values(read_crop(get or self.store.get, crop_key, original_key, box))
            except KeyError:
                raise Failed("missing_object", f"crop {crop_key} is not in the store") from None

    @staticmethod
    def crop_pixels(crop: Crop) -> int:
        """The decoded size at most: the original's where it is read in place of a crop, else the box's."""
        if crop.crop_key == crop.image.fetched.object_key:
            return crop.image.fetched.width * crop.image.fetched.height
        return max(0, crop.box.right - crop.box.left) * max(0, crop.box.bottom - crop.box.top)

    def prepare(self, crop: Crop) -> np.ndarray:
        box, fetched = crop.box, crop.image.fetched
        pixel_box = (box.left, box.top, box.right, box.bottom)
        return self.pixels(crop.crop_key, fetched.object_key, pixel_box, carrying(self.store.get, fetched))

    def run(self, pixels: list[np.ndarray]) -> np.ndarray:
        return self.encoders.embed(self.encoders.default, pixels)

    def finish(self, crop: Crop, vector: np.ndarray) -> list[Emit]:
        model, version = self.encoders.default
        embedding = Embedding(  # holds a copy of `crop`: clearing its bytes leaves the input message as it was
            image_id=crop.image_id, vector=vector.tolist(), model=model, model_version=version, crop=crop
        )
        embedding.crop.image.fetched.ClearField("data")  # the original's bytes go no further than here
        return [Emit(self.bus.topics.embedded, crop.image_id, embedding)]

    # reembed -> embedded (backfill) with the model each request names: a new index version filling up.

    def prepare_backfill(self, request: ReembedImage) -> tuple[ModelKey, np.ndarray]:
        if not request.model:
            raise Failed("no_model", "the reembed request names no model")
        original_key = request.lineage.get("original_key", "")
        box = parse_box(request.lineage.get("box", "")) if request.crop_key == original_key else None
        return (request.model, request.model_version or "1"), self.pixels(request.crop_key, original_key, box)

    def run_backfill(self, prepared: list[tuple[ModelKey, np.ndarray]]) -> list[np.ndarray | Failed]:
        """One Triton call per model in the batch; a model Triton cannot run fails only its own messages."""
        results: list[np.ndarray | Failed] = [Failed("internal_error", "not embedded")] * len(prepared)
        by_model: dict[ModelKey, list[int]] = {}
        for i, (key, _) in enumerate(prepared):
            by_model.setdefault(key, []).append(i)
        for key, positions in by_model.items():
            try:
                vectors = self.encoders.embed(key, [prepared[i][1] for i in positions])
            except Failed as failure:
                vectors = [failure] * len(positions)
            for i, vector in zip(positions, vectors, strict=True):
                results[i] = vector
        return results

    def finish_backfill(self, request: ReembedImage, vector: np.ndarray | Failed) -> list[Emit]:
        if isinstance(vector, Failed):
            raise vector
        embedding = Embedding(
            image_id=request.image_id,
            vector=vector.tolist(),
            model=request.model,
            model_version=request.model_version or "1",
            lineage=request.lineage,
            backfill=True,
        )
        return [Emit(self.bus.topics.embedded, request.image_id, embedding)]
