"""The detector's settings, its Triton model wrapper and the worker verified → cropped."""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from taxonstream.core import metrics
from taxonstream.core.bus import Bus, Emit
from taxonstream.core.errors import Failed
from taxonstream.core.settings import SERVICE_PORTS, CoreSettings
from taxonstream.core.store import ObjectStore, derivative_keys
from taxonstream.core.triton import TritonModel
from taxonstream.models.preprocess import crop_box, detector_pixels, upright_rgb
from taxonstream.v1.messages_pb2 import Box, Crop, VerifiedImage

STAGE = "detector"


class DetectorSettings(CoreSettings):
    grpc_port: int = SERVICE_PORTS["detector"].grpc
    metrics_port: int = SERVICE_PORTS["detector"].metrics
    detector_model: str = "detector_standin"
    detector_model_version: str = "1"
    detector_threshold: float = 0.5
    # Crop = best box enlarged this much about its centre (the BIOSCAN crop tool uses 1.4).
    detector_crop_pad: float = 1.4
    detector_min_side: int = 8
    # Derivatives of the original and the crop, this many pixels on the shorter side (never enlarged).
    detector_derivative_side: int = 256


@dataclass(frozen=True)
class Detection:
    detected: bool
    box: tuple[int, int, int, int]
    score: float
    size: tuple[int, int]
    crop_jpeg: bytes
    crop: Image.Image | None = None


def shorter_side(image: Image.Image, side: int) -> Image.Image:
    """`image` scaled so its shorter side is `side` px (aspect kept); a smaller image is left as it is."""
    width, height = image.size
    scale = side / min(width, height)
    if scale >= 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # reducing_gap: a box-filter `reduce` first, Lanczos over the last factor of 3 (Pillow's documented
    # "indistinguishable from fair resampling"): a 3000x2000 photo to 256 px is several times cheaper.
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def reduced_for(image: Image.Image, size: int) -> Image.Image:
    """`image` box-reduced by whole factors while it stays at least 2x `size` on each side: the detector's
    squash to `size` then filters a small image, not a full-size photo widened to float per channel."""
    factors = (max(1, image.width // (2 * size)), max(1, image.height // (2 * size)))
    return image if factors == (1, 1) else image.reduce(factors)


def open_image(data: bytes, min_side: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise Failed("undecodable_image", f"the stored image does not decode: {error}") from error
    if min(image.size) < min_side:
        raise Failed("image_too_small", f"{image.size[0]}x{image.size[1]} is under {min_side} px on a side")
    return upright_rgb(image)


# The stored crop is what the embedder (224 x 224 input), reembed and `export --content crop` read: at most
# this many pixels on its shorter side, 4.5x the encoder's input.
CROP_MAX_SIDE = 1024


def encode_derivative(image: Image.Image, kind: Literal["crop", "small"]) -> bytes:
    """The JPEG bytes stored for a derivative; fixed settings, so the same pixels always give the same bytes
    (search-by-image and the stored crop embed identically).

    Measured with the stand-in encoder and detector (boxes padded 1.4x: about 75 % of the image), bytes
    stored for crop + both 256-px copies per original byte, and the cosine to the old q95 4:4:4 crop:
      old (everything q95 4:4:4, full-size crop):   3000x2000 1.8 MB photos 1.56x; 320x240 5 kB demo 3.78x
      crop <=1024 px q85 4:4:4, 256-px q80 4:2:0:   photos 0.25x (cos >= 0.99994); demo 2.00x (cos >= 0.99881)
      the same with the crop at 4:2:0:              photos 0.17x but cos 0.99927, demo cos down to 0.969
    so the crop keeps full chroma (saturated colours move the embedding) and the 256-px copies, which no
    model reads, halve chroma. A demo-sized original is smaller than any re-encoded copy of most of its
    pixels: meeting 0.5x there needs consumers that read the original plus the box instead of a crop.
    """
    out = io.BytesIO()
    if kind == "crop":
        shorter_side(image, CROP_MAX_SIDE).save(out, format="JPEG", quality=85, subsampling=0, optimize=True)
    else:
        image.save(out, format="JPEG", quality=80, subsampling=2, optimize=True)
    return out.getvalue()


class Detector:
    def __init__(self, settings: DetectorSettings) -> None:
        self.settings = settings
        self.model = TritonModel(settings.triton_url, settings.detector_model, settings.detector_model_version)

    @cached_property
    def input_size(self) -> int:
        return self.model.input_shape()[-1]

    def infer(self, images: list[Image.Image]) -> list[tuple[np.ndarray, float]]:
        """Best (cx, cy, w, h) box and score per image."""
        with metrics.timed("decode"):
            size = self.input_size
            pixels = np.stack([detector_pixels(reduced_for(image, size), size)[0] for image in images])
        out = self.model.infer({"images": pixels}, ["boxes", "scores"])
        best = out["scores"].argmax(axis=1)
        return [(out["boxes"][i, b], float(out["scores"][i, b])) for i, b in enumerate(best)]

    def finish(self, image: Image.Image, box_score: tuple[np.ndarray, float]) -> Detection:
        box, score = box_score
        detected = score >= self.settings.detector_threshold
        if detected:
            pixels = crop_box(box, image.size, self.settings.detector_crop_pad)
            crop = image.crop(pixels)
        else:  # nothing confident: keep the whole image, and say so in the lineage
            pixels, crop = (0, 0, *image.size), image
        return Detection(detected, pixels, score, image.size, encode_derivative(crop, "crop"), crop)

    def detect(self, image: Image.Image) -> Detection:
        return self.finish(image, self.infer([image])[0])


class DetectWorker:
    def __init__(self, settings: DetectorSettings, bus: Bus, store: ObjectStore, detector: Detector) -> None:
        self.settings = settings
        self.bus = bus
        self.store = store
        self.detector = detector

    def prepare(self, verified: VerifiedImage) -> Image.Image:
        try:
            data = self.store.get(verified.fetched.object_key)
        except KeyError:
            raise Failed("missing_object", f"original {verified.fetched.object_key} is not in the store") from None
        with metrics.timed("decode"):
            return open_image(data, self.settings.detector_min_side)

    @staticmethod
    def pixels(verified: VerifiedImage) -> int:
        """The decoded size of a message's original, from what the fetcher measured (for the pixel budget)."""
        return verified.fetched.width * verified.fetched.height

    def store_derivatives(self, verified: VerifiedImage, image: Image.Image, detection: Detection) -> str:
        """Crop, 256-px derivatives of original and crop, and the lineage record; returns the crop's key."""
        s = self.settings
        keys = derivative_keys(verified.image_id, s.detector_model, s.detector_model_version)
        side = s.detector_derivative_side
        self.store.put(keys["original_small"], encode_derivative(shorter_side(image, side), "small"), "image/jpeg")
        small_crop = encode_derivative(shorter_side(detection.crop or image, side), "small")
        self.store.put(keys["crop_small"], small_crop, "image/jpeg")
        self.store.put_json(
            keys["lineage"],
            {
                "image_id": verified.image_id,
                "detected": detection.detected,  # false: nothing above the threshold, the whole image was kept
                "box": list(detection.box),  # left, top, right, bottom in the upright original's pixels
                "score": detection.score,
                "original_size": list(detection.size),
                "pad": s.detector_crop_pad,
                "threshold": s.detector_threshold,
                "model": s.detector_model,
                "model_version": s.detector_model_version,
                "derivative_side": side,
                "crop_max_side": CROP_MAX_SIDE,  # crop.jpg is the box's pixels scaled down to this, if larger
                "keys": keys,
            },
        )
        # The crop last: the message that names it goes out only after every derivative is stored.
        self.store.put(keys["crop"], detection.crop_jpeg, "image/jpeg")
        return keys["crop"]

    def run(self, images: list[Image.Image]) -> list[tuple[Image.Image, tuple[np.ndarray, float]]]:
        return list(zip(images, self.detector.infer(images), strict=True))

    def finish(self, verified: VerifiedImage, inferred: tuple[Image.Image, tuple[np.ndarray, float]]) -> list[Emit]:
        detection = self.detector.finish(*inferred)
        s = self.settings
        key = self.store_derivatives(verified, inferred[0], detection)
        left, top, right, bottom = detection.box
        crop = Crop(
            image_id=verified.image_id,
            image=verified,
            crop_key=key,
            detected=detection.detected,
            box=Box(left=left, top=top, right=right, bottom=bottom),
            score=detection.score,
            model=s.detector_model,
            model_version=s.detector_model_version,
        )
        return [Emit(self.bus.topics.cropped, verified.image_id, crop)]
