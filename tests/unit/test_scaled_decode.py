"""Each piece of work at the size it needs: the detector decodes a photo-sized JPEG at a libjpeg DCT scale
yet keeps its box in the original's pixels, and the fetcher validates and pHashes from one reduced decode."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from taxonstream.core.errors import Failed
from taxonstream.core.keys import derivative_keys
from taxonstream.detector.worker import CROP_MAX_SIDE, Detector, DetectorSettings, DetectWorker
from taxonstream.fetching.validate import inspect_decoded
from taxonstream.integrity.phash import DRAFT_SIZE, phash_bytes, phash_image
from taxonstream.models.preprocess import crop_box
from taxonstream.models.synthetic import shapes_image
from taxonstream.v1.messages_pb2 import FetchedImage, Record, VerifiedImage

IMAGE_ID = "e" * 64
ORIGINAL_KEY = f"originals/sha256/ee/ee/{IMAGE_ID}"
KEYS = derivative_keys(IMAGE_ID, "detector_standin", "1")
# The stand-in detector's kind of box: sides 0.6, padded 1.4x to ~70 % of the image.
BIG_BOX = (np.array([0.5, 0.5, 0.6, 0.6], dtype=np.float32), 0.9)
# A box of 0.2 of the image's sides: 840x560 padded on 3000x2000, 420x280 at the half scale decoded at.
SMALL_BOX = (np.array([0.3, 0.6, 0.2, 0.2], dtype=np.float32), 0.9)


def photo(size: tuple[int, int] = (3000, 2000), exif: Image.Exif | None = None) -> bytes:
    out = io.BytesIO()
    image = shapes_image(5, size=(600, 400)).resize(size, Image.Resampling.BICUBIC)
    image.save(out, format="JPEG", quality=90, **({"exif": exif} if exif is not None else {}))
    return out.getvalue()


class Store(dict):
    def put(self, key: str, data: bytes, content_type: str = "") -> None:
        self[key] = data

    def put_json(self, key: str, value: object) -> None:
        self[key] = json.dumps(value).encode()


def worker_for(original: bytes) -> tuple[DetectWorker, VerifiedImage, Store]:
    store = Store({ORIGINAL_KEY: original})
    detector = Detector(DetectorSettings())
    detector.input_size = 256  # the stand-in's input side, without asking Triton
    bus = SimpleNamespace(topics=SimpleNamespace(cropped="cropped"))
    worker = DetectWorker(DetectorSettings(), bus=bus, store=store, detector=detector)
    fetched = FetchedImage(record=Record(record_id="j:0", job_id="j"), object_key=ORIGINAL_KEY)
    return worker, VerifiedImage(image_id=IMAGE_ID, fetched=fetched), store


def test_a_photo_decodes_at_half_scale_and_its_box_stays_in_original_pixels():
    original = photo()
    worker, verified, store = worker_for(original)
    decoded = worker.prepare(verified)
    assert decoded.image.size == (1500, 1000), "a 3000x2000 JPEG decodes at 1/2: >= 512 px on each side"
    assert decoded.original_size == (3000, 2000)
    worker.finish(verified, (decoded, BIG_BOX))
    lineage = json.loads(store[KEYS["lineage"]])
    expected_box = crop_box(BIG_BOX[0], (3000, 2000), 1.4)
    assert lineage["box"] == list(expected_box) and lineage["original_size"] == [3000, 2000]
    assert sorted(lineage["stored"]) == ["crop", "crop_small", "original_small"]
    # The stored crop shows the same region as the full-resolution box, scaled to the cap.
    full = Image.open(io.BytesIO(original)).convert("RGB").crop(expected_box)
    stored = Image.open(io.BytesIO(store[KEYS["crop"]])).convert("RGB")
    assert min(stored.size) == CROP_MAX_SIDE
    reference = full.resize(stored.size, Image.Resampling.LANCZOS)
    difference = np.abs(np.asarray(stored, np.float32) - np.asarray(reference, np.float32))
    assert float(difference.mean()) < 3.0, "the crop was cut from another region than the box"
    assert min(Image.open(io.BytesIO(store[KEYS["original_small"]])).size) == 256


def test_a_rotated_photo_keeps_upright_full_size_coordinates():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the upright photo is 2000x3000
    worker, verified, store = worker_for(photo(exif=exif))
    decoded = worker.prepare(verified)
    assert decoded.original_size == (2000, 3000) and decoded.image.size == (1000, 1500)
    worker.finish(verified, (decoded, BIG_BOX))
    lineage = json.loads(store[KEYS["lineage"]])
    assert lineage["box"] == list(crop_box(BIG_BOX[0], (2000, 3000), 1.4))
    assert lineage["original_size"] == [2000, 3000]


def test_a_small_box_is_cut_from_a_finer_decode_at_full_crop_resolution():
    worker, verified, store = worker_for(photo())
    decoded = worker.prepare(verified)
    worker.finish(verified, (decoded, SMALL_BOX))
    lineage = json.loads(store[KEYS["lineage"]])
    left, top, right, bottom = lineage["box"]
    assert min(right - left, bottom - top) > CROP_MAX_SIDE  # the half-scale decode would hold only ~280 px
    assert "crop" in lineage["stored"]
    assert min(Image.open(io.BytesIO(store[KEYS["crop"]])).size) == CROP_MAX_SIDE


@pytest.mark.parametrize("size", [(400, 300), (1000, 1000)])
def test_an_original_of_at_most_a_megapixel_decodes_in_full_as_before(size):
    original = photo(size)
    worker, verified, _ = worker_for(original)
    decoded = worker.prepare(verified)
    assert decoded.image.size == decoded.original_size == size
    assert np.array_equal(np.asarray(decoded.image), np.asarray(Image.open(io.BytesIO(original)).convert("RGB")))


def test_one_reduced_decode_validates_and_gives_the_phash_of_phash_bytes():
    original = photo()
    info, picture = inspect_decoded(original, max_pixels=50_000_000, draft_side=DRAFT_SIZE)
    assert (info.width, info.height) == (3000, 2000)
    assert picture is not None and picture.size == (750, 500), "1/4 scale: >= 256 px on each side"
    assert phash_image(picture) == phash_bytes(original)
    png = io.BytesIO()
    shapes_image(2, size=(300, 200)).save(png, format="PNG")
    info, picture = inspect_decoded(png.getvalue(), max_pixels=10**6, draft_side=DRAFT_SIZE)
    assert picture is not None and picture.size == (300, 200)
    assert phash_image(picture) == phash_bytes(png.getvalue())


def test_a_truncated_photo_still_fails_at_draft_scale():
    original = photo()
    with pytest.raises(Failed) as caught:
        inspect_decoded(original[: len(original) * 3 // 4], max_pixels=50_000_000, draft_side=DRAFT_SIZE)
    assert caught.value.reason == "truncated"
