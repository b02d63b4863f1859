"""The detector's settings, its Triton model wrapper and the worker verified → cropped."""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
from PIL import Image, UnidentifiedImageError

from taxonstream.core import metrics
from taxonstream.core.bus import Bus, Emit
from taxonstream.core.errors import Failed
from taxonstream.core.keys import small_copies_stored, thumbnail_key
from taxonstream.core.settings import SERVICE_PORTS, CoreSettings
from taxonstream.core.store import ObjectStore, carrying, derivative_keys
from taxonstream.core.triton import TritonModel
from taxonstream.models.derivatives import (
    CROP_MAX_SIDE,
    SMALL_REDUCING_GAP,
    Decoded,
    as_decoded,
    crop_at_stored_size,
    crop_worth_storing,
    decode_upright,
    encode_derivative,
    finer_side_for_crop,
    shorter_side,
)
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
    box: tuple[int, int, int, int]  # in the upright original's full-resolution pixels
    score: float
    size: tuple[int, int]  # the upright original's full-resolution size
    crop: Image.Image  # the box's pixels at the scale the original was decoded at

    @cached_property
    def crop_at_stored_size(self) -> Image.Image:
        """The crop's pixels as crop.jpg holds them, computed once: its 256-px copy is made from these, not
        from the box's decoded pixels (from a photo's 1050x700 box 0.5 ms instead of 4.6; mean pixel
        difference 1/255)."""
        return crop_at_stored_size(self.crop)

    @cached_property
    def crop_jpeg(self) -> bytes:
        """The crop's stored encoding, made only when asked: most originals store no crop (a 1600x1200
        one would spend ~10 ms encoding a crop nobody keeps)."""
        return encode_derivative(self.crop_at_stored_size, "crop")

    def crop_as_the_pipeline_reads_it(self) -> bytes:
        """The stored JPEG where the pipeline stores a crop; else the box's pixels losslessly (PNG), as
        the pipeline cuts them from the original — so a file embeds to the same vector as its stored copy."""
        if crop_worth_storing(self.size, self.box):
            return self.crop_jpeg
        out = io.BytesIO()
        self.crop.save(out, format="PNG")
        return out.getvalue()


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


class Detector:
    def __init__(self, settings: DetectorSettings) -> None:
        self.settings = settings
        self.model = TritonModel(settings.triton_url, settings.detector_model, settings.detector_model_version)

    @cached_property
    def input_size(self) -> int:
        return self.model.input_shape()[-1]

    def infer(self, images: list[Image.Image] | list[Decoded]) -> list[tuple[np.ndarray, float]]:
        """Best (cx, cy, w, h) box and score per image (normalised: the same at any decode scale)."""
        with metrics.timed("decode"):
            size = self.input_size
            decoded = [as_decoded(image).image for image in images]
            pixels = np.stack([detector_pixels(reduced_for(image, size), size)[0] for image in decoded])
        out = self.model.infer({"images": pixels}, ["boxes", "scores"])
        best = out["scores"].argmax(axis=1)
        return [(out["boxes"][i, b], float(out["scores"][i, b])) for i, b in enumerate(best)]

    def finish(self, image: Image.Image | Decoded, box_score: tuple[np.ndarray, float]) -> Detection:
        """The box in the original's pixels (normalised box times the full size, not a scaled-up decoded
        box) and its crop cut from the decoded pixels."""
        decoded = as_decoded(image)
        box, score = box_score
        detected = score >= self.settings.detector_threshold
        size = decoded.original_size
        if detected:
            pixels = crop_box(box, size, self.settings.detector_crop_pad)
            crop = decoded.image.crop(decoded.scaled_box(pixels))
        else:  # nothing confident: keep the whole image, and say so in the lineage
            pixels, crop = (0, 0, *size), decoded.image
        return Detection(detected, pixels, score, size, crop)

    def detect(self, image: Image.Image) -> Detection:
        return self.finish(image, self.infer([image])[0])


class DetectWorker:
    def __init__(self, settings: DetectorSettings, bus: Bus, store: ObjectStore, detector: Detector) -> None:
        self.settings = settings
        self.bus = bus
        self.store = store
        self.detector = detector

    @property
    def decode_side(self) -> int:
        """The least side an original is decoded at: what the detector's input (reduced_for: 2x), the 256-px
        copy and a crop of most of the photo (CROP_MAX_SIDE) are made from. A 3000x2000 JPEG decodes at 1/2."""
        return max(2 * self.detector.input_size, self.settings.detector_derivative_side, CROP_MAX_SIDE)

    def prepare(self, verified: VerifiedImage) -> Decoded:
        try:
            data = carrying(self.store.get, verified.fetched)(verified.fetched.object_key)
        except KeyError:
            raise Failed("missing_object", f"original {verified.fetched.object_key} is not in the store") from None
        with metrics.timed("decode"):
            decoded = decode_upright(data, self.decode_side)
        if min(decoded.original_size) < self.settings.detector_min_side:
            width, height = decoded.original_size
            raise Failed("image_too_small", f"{width}x{height} is under {self.settings.detector_min_side} px on a side")
        return decoded

    @staticmethod
    def pixels(verified: VerifiedImage) -> int:
        """The decoded size of a message's original, from what the fetcher measured (for the pixel budget)."""
        return verified.fetched.width * verified.fetched.height

    def store_derivatives(self, verified: VerifiedImage, image: Image.Image | Decoded, detection: Detection) -> str:
        """The derivatives that earn their bytes (models/derivatives.py, core/keys.py) and the lineage record;
        returns the key consumers read the crop from: the stored crop, or the original (cut by the box).

        Stored bytes per original byte (original + derivatives + lineage; budget 1.5x), stand-in detector's
        ~70 % box, max: 3000x2000 1.2-1.9 MB photos 1.12x (crop + both 256-px copies; 1.29x with the
        1024-px crop); 400x300 e2e JPEGs 1.24x and 320x240 demo JPEGs 1.35x (lineage only; storing
        everything made them 3.15x and 3.31x). Full table: models/derivatives.py.
        """
        s = self.settings
        keys = derivative_keys(verified.image_id, s.detector_model, s.detector_model_version)
        original_key = verified.fetched.object_key
        side = s.detector_derivative_side
        size = detection.size
        stored: list[str] = []
        if small_copies_stored(size):
            small = encode_derivative(shorter_side(as_decoded(image).image, side, SMALL_REDUCING_GAP), "small")
            self.store.put(keys["original_small"], small, "image/jpeg")
            stored.append("original_small")
        with_crop = crop_worth_storing(size, detection.box)
        if with_crop:
            self.store.put(
                keys["crop_small"],
                encode_derivative(shorter_side(detection.crop_at_stored_size, side, SMALL_REDUCING_GAP), "small"),
                "image/jpeg",
            )
            stored.append("crop_small")
        crop_key = keys["crop"] if with_crop else original_key
        thumbnail = thumbnail_key(
            verified.image_id, s.detector_model, s.detector_model_version, crop_key, original_key, size
        )
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
                "stored": [*stored, "crop"] if with_crop else stored,
                # What serves each kind (core/keys.py derivative_to_read): the original where nothing was
                # stored; for "crop" that means the box cut out of it.
                "keys": {
                    "crop": crop_key,
                    "crop_small": thumbnail,
                    "original_small": keys["original_small"] if "original_small" in stored else original_key,
                    "lineage": keys["lineage"],
                },
            },
        )
        # The crop last: the message that names it goes out only after every derivative is stored.
        if with_crop:
            self.store.put(keys["crop"], detection.crop_jpeg, "image/jpeg")
        return crop_key

    def run(self, images: list[Decoded]) -> list[tuple[Decoded, tuple[np.ndarray, float]]]:
        return list(zip(images, self.detector.infer(images), strict=True))

    def finish(
        self, verified: VerifiedImage, inferred: tuple[Image.Image | Decoded, tuple[np.ndarray, float]]
    ) -> list[Emit]:
        decoded = as_decoded(inferred[0])
        detection = self.detector.finish(decoded, inferred[1])
        if crop_worth_storing(detection.size, detection.box) and (side := finer_side_for_crop(decoded, detection.box)):
            # A box too small for the scale decoded at (rare: most boxes cover ~70 % of a photo): decode
            # again at the scale its stored crop needs, so the crop keeps the resolution it had before.
            with metrics.timed("decode"):
                finer = decode_upright(decoded.data, side)
            detection = replace(detection, crop=finer.image.crop(finer.scaled_box(detection.box)))
        s = self.settings
        key = self.store_derivatives(verified, decoded, detection)
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
