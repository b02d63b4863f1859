"""Derivatives: stored bytes per original byte for small and photo-sized images, consumers that read the
crop get the box's pixels whether or not a crop was stored, and lineage written before still resolves."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from taxonstream.core.errors import Failed
from taxonstream.core.keys import derivative_keys, derivative_to_read, small_original_key, thumbnail_key
from taxonstream.detector.worker import CROP_MAX_SIDE, Detector, DetectorSettings, DetectWorker, encode_derivative
from taxonstream.embedder.worker import EmbedderSettings, EmbedWorker
from taxonstream.export.content import box_to_cut, content_key, cut_crop
from taxonstream.export.run import _fetch
from taxonstream.export.select import Item
from taxonstream.indexer.worker import lineage as index_metadata
from taxonstream.models.clip_standin import build_clip_standin
from taxonstream.models.derivatives import SMALL_REDUCING_GAP, read_crop, shorter_side
from taxonstream.models.preprocess import clip_pixel_values
from taxonstream.models.synthetic import shapes_image
from taxonstream.v1.messages_pb2 import Crop, Embedding, FetchedImage, Record, ReembedImage, VerifiedImage
from tools.demo.sample import make_images

# A specimen box like the stand-in detector's (sides ~0.6, padded 1.4x to ~0.84: ~70 % of the image).
BOX = (np.array([0.5, 0.5, 0.6, 0.6], dtype=np.float32), 0.9)
# Least cosine between the stored crop's embedding and the lossless crop's (stand-in encoder); measured
# with this box on photos: >= 0.99994. Small images store no crop: theirs is the lossless crop itself.
PHOTO_COSINE = 0.9995
# Everything stored per image (original + derivatives + lineage) over the original's bytes.
BUDGET = 1.5
IMAGE_ID = "f" * 64  # an image id is a sha256: the lineage's keys are as long as real ones
ORIGINAL_KEY = f"originals/sha256/ff/ff/{IMAGE_ID}"
KEYS = derivative_keys(IMAGE_ID, "detector_standin", "1")


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def photo_jpeg(seed: int, size: tuple[int, int] = (3000, 2000)) -> bytes:
    """A camera-sized JPEG that compresses like a photo (texture and grain): 1-2 MB at quality 90."""
    rng = np.random.default_rng(seed)
    base = (
        shapes_image(seed, size=(600, 400)).resize(size, Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(3))
    )
    texture = rng.normal(0, 20, (size[1] // 8, size[0] // 8, 3))
    texture = Image.fromarray(np.uint8(np.clip(128 + texture, 0, 255))).resize(size, Image.Resampling.BICUBIC)
    pixels = np.asarray(base, np.float32) + np.asarray(texture, np.float32) - 128 + rng.normal(0, 7, (*size[::-1], 3))
    return jpeg(Image.fromarray(np.uint8(np.clip(pixels, 0, 255))))


class Store:
    def __init__(self, objects: dict[str, bytes] | None = None) -> None:
        self.objects: dict[str, bytes] = dict(objects or {})

    def put(self, key: str, data: bytes, content_type: str = "") -> None:
        self.objects[key] = data

    def put_json(self, key: str, value: object) -> None:
        self.objects[key] = json.dumps(value, sort_keys=True).encode()

    def get(self, key: str) -> bytes:
        return self.objects[key]


def detected(original: bytes) -> tuple[Store, Crop, Image.Image]:
    """What the detector worker stores for one original (the original included, as the fetcher stored
    it), the message it sends on, and the lossless crop."""
    store = Store({ORIGINAL_KEY: original})
    bus = SimpleNamespace(topics=SimpleNamespace(cropped="cropped"))
    worker = DetectWorker(DetectorSettings(), bus=bus, store=store, detector=Detector(DetectorSettings()))
    image = Image.open(io.BytesIO(original)).convert("RGB")
    fetched = FetchedImage(
        record=Record(record_id="j:0", job_id="j"), object_key=ORIGINAL_KEY, width=image.width, height=image.height
    )
    verified = VerifiedImage(image_id=IMAGE_ID, fetched=fetched)
    emitted = worker.finish(verified, (image, BOX))
    return store, emitted[0].message, worker.detector.finish(image, BOX).crop


def stored_lineage(store: Store) -> dict:
    return json.loads(store.objects[KEYS["lineage"]])


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [photo_jpeg(seed) for seed in range(2)]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> list[bytes]:
    """The demo site's 320x240 JPEGs and the e2e benchmark's 400x300 ones (q90 shapes, 2-12 kB)."""
    demo = [p.read_bytes() for p in make_images(tmp_path_factory.mktemp("demo"), 8)]
    return demo + [jpeg(shapes_image(seed, size=(400, 300))) for seed in range(8)]


@pytest.fixture(scope="module")
def encoder():
    model = build_clip_standin()

    def embed(image: Image.Image) -> np.ndarray:
        with torch.no_grad():
            vector = model(torch.from_numpy(clip_pixel_values(image)[None])).numpy()[0]
        return vector / np.linalg.norm(vector)

    return embed


def stored_over_original(store: Store, original: bytes) -> float:
    return sum(map(len, store.objects.values())) / len(original)


def test_photos_store_a_crop_and_both_copies_within_budget(photos):
    for original in photos:
        assert 1_000_000 <= len(original) <= 2_000_000  # the sample is photo-sized
        store, crop, _ = detected(original)
        assert crop.crop_key == KEYS["crop"]
        assert set(store.objects) == {ORIGINAL_KEY, *KEYS.values()}
        assert sorted(stored_lineage(store)["stored"]) == ["crop", "crop_small", "original_small"]
        ratio = stored_over_original(store, original)
        assert ratio <= BUDGET, f"{ratio:.2f}x the original stored"


def test_small_images_store_only_their_lineage_within_budget(small):
    for original in small:
        assert 1_000 <= len(original) <= 30_000
        store, crop, _ = detected(original)
        assert crop.crop_key == ORIGINAL_KEY  # no crop stored: consumers cut the box from the original
        assert set(store.objects) == {ORIGINAL_KEY, KEYS["lineage"]}
        lineage = stored_lineage(store)
        assert lineage["stored"] == []
        assert {derivative_to_read(lineage, kind) for kind in ("crop", "crop_small", "original_small")} == {
            ORIGINAL_KEY
        }
        ratio = stored_over_original(store, original)
        assert ratio <= BUDGET, f"{ratio:.2f}x the original stored"


def test_a_mid_sized_image_keeps_a_256_px_original_as_its_thumbnail():
    original = jpeg(shapes_image(3, size=(800, 600)))
    store, crop, _ = detected(original)
    lineage = stored_lineage(store)
    assert crop.crop_key == ORIGINAL_KEY and lineage["stored"] == ["original_small"]
    assert derivative_to_read(lineage, "crop_small") == KEYS["original_small"]
    assert Image.open(io.BytesIO(store.objects[KEYS["original_small"]])).size == (341, 256)
    assert stored_over_original(store, original) <= BUDGET


def test_the_stored_crop_is_capped_and_embeds_like_the_lossless_crop(photos, encoder):
    for original in photos:
        store, _, lossless = detected(original)
        stored = Image.open(io.BytesIO(store.objects[KEYS["crop"]]))
        assert min(stored.size) == min(CROP_MAX_SIDE, *lossless.size)
        cosine = float(encoder(stored) @ encoder(lossless))
        assert cosine >= PHOTO_COSINE, f"crop embedding moved: cosine {cosine:.5f}"


def test_the_crops_256_px_copy_is_made_from_the_stored_crop_not_the_full_box(photos):
    """crop_small from crop.jpg's pixels (CROP_MAX_SIDE): 0.5 ms instead of 4.6 from a photo's box."""
    detector = Detector(DetectorSettings())
    for original in photos:
        store, _, _ = detected(original)  # from the full-size pixels, as below
        detection = detector.finish(Image.open(io.BytesIO(original)).convert("RGB"), BOX)
        assert min(detection.crop.size) > CROP_MAX_SIDE, "the box is larger than the stored crop"
        side = DetectorSettings().detector_derivative_side
        from_stored = encode_derivative(shorter_side(detection.crop_at_stored_size, side, SMALL_REDUCING_GAP), "small")
        from_box = encode_derivative(shorter_side(detection.crop, side, SMALL_REDUCING_GAP), "small")
        assert from_stored != from_box
        assert store.objects[KEYS["crop_small"]] == from_stored


def consumers_pixels(store: Store, crop: Crop) -> list[np.ndarray]:
    """The encoder input the embedder prepares from the cropped message and from a reembed request built
    from the index metadata (as reembed sends it)."""
    embedder = EmbedWorker(EmbedderSettings(), bus=None, store=store, encoders=None)
    metadata = index_metadata(Embedding(image_id=IMAGE_ID, crop=crop, model="m", model_version="1"))
    request = ReembedImage(image_id=IMAGE_ID, crop_key=metadata["crop_key"], lineage=metadata, model="m2")
    return [embedder.prepare(crop), embedder.prepare_backfill(request)[1]]


def test_consumers_of_a_small_image_get_exactly_the_box_of_the_original(small, encoder):
    for original in small[::4]:
        store, crop, lossless = detected(original)
        box = crop.box
        upright = Image.open(io.BytesIO(original)).convert("RGB")
        assert np.array_equal(
            np.asarray(lossless), np.asarray(upright.crop((box.left, box.top, box.right, box.bottom)))
        )
        for pixels in consumers_pixels(store, crop):
            np.testing.assert_array_equal(pixels, clip_pixel_values(lossless))
        exported = read_crop(store.get, crop.crop_key, ORIGINAL_KEY, (box.left, box.top, box.right, box.bottom))
        assert float(encoder(exported) @ encoder(lossless)) == pytest.approx(1.0, abs=1e-6)


class NoOriginals(Store):
    """A store that refuses to be asked for an original: the messages carry it."""

    def get(self, key: str) -> bytes:
        assert key != ORIGINAL_KEY, "the original was read from S3 although its message carries it"
        return super().get(key)


def test_a_small_original_carried_in_its_message_is_read_from_s3_by_no_stage(small):
    original = small[1]
    store, crop, _ = detected(original)
    from_s3 = consumers_pixels(store, crop)[0]
    carrying = Crop()
    carrying.CopyFrom(crop)
    carrying.image.fetched.data = original
    others = NoOriginals({k: v for k, v in store.objects.items() if k != ORIGINAL_KEY})
    # prepare() needs only the model's input side (for its decode scale), not Triton
    detector = DetectWorker(DetectorSettings(), bus=None, store=others, detector=SimpleNamespace(input_size=320))
    assert detector.prepare(carrying.image).original_size == Image.open(io.BytesIO(original)).size
    bus = SimpleNamespace(topics=SimpleNamespace(embedded="embedded"))
    embedder = EmbedWorker(EmbedderSettings(), bus=bus, store=others, encoders=None)
    pixels = embedder.prepare(carrying)
    np.testing.assert_array_equal(pixels, from_s3)
    embedder.encoders = SimpleNamespace(default=("m", "1"))
    (emitted,) = embedder.finish(carrying, np.zeros(4, np.float32))
    assert emitted.message.crop.image.fetched.data == b"", "the bytes went on to the indexer"
    assert carrying.image.fetched.data == original and emitted.message.crop.crop_key == crop.crop_key


def test_consumers_of_a_photo_read_the_stored_crop(photos):
    store, crop, _ = detected(photos[0])
    stored = clip_pixel_values(Image.open(io.BytesIO(store.objects[KEYS["crop"]])))
    for pixels in consumers_pixels(store, crop):
        np.testing.assert_array_equal(pixels, stored)


def test_export_cuts_the_crop_a_small_image_did_not_store(small):
    store, crop, lossless = detected(small[0])
    metadata = index_metadata(Embedding(image_id=IMAGE_ID, crop=crop, model="m", model_version="1"))
    key, data, reason = _fetch(store, Item(IMAGE_ID, metadata), "crop", retries=1)
    assert (key, reason) == (ORIGINAL_KEY, "")
    assert data == encode_derivative(lossless, "crop")  # what the detector stores for a crop
    assert Image.open(io.BytesIO(data)).size == lossless.size
    for content in ("small", "small-original"):
        assert _fetch(store, Item(IMAGE_ID, metadata), content, retries=1)[:2] == (ORIGINAL_KEY, small[0])


def test_the_index_thumbnail_is_what_the_detector_recorded(small, photos):
    for original in (small[0], photos[0], jpeg(shapes_image(3, size=(800, 600)))):
        store, crop, _ = detected(original)
        metadata = index_metadata(Embedding(image_id=IMAGE_ID, crop=crop, model="m", model_version="1"))
        assert metadata["thumbnail_key"] == derivative_to_read(stored_lineage(store), "crop_small")
        assert metadata["thumbnail_key"] in store.objects


def test_lineage_and_metadata_written_before_still_resolve():
    # Before "stored": every derivative was written and "keys" named all four.
    old = {"image_id": IMAGE_ID, "model": "detector_standin", "model_version": "1", "keys": KEYS}
    assert {kind: derivative_to_read(old, kind) for kind in KEYS} == KEYS
    assert derivative_to_read({k: v for k, v in old.items() if k != "keys"}, "original_small") == KEYS["original_small"]
    # Index metadata from then: crop_key and thumbnail are derivatives, whatever the image's size.
    metadata = {"original_key": ORIGINAL_KEY, "crop_key": KEYS["crop"], "thumbnail_key": KEYS["crop_small"]}
    metadata["box"] = "10,10,200,150"
    assert box_to_cut("crop", metadata) is None
    assert content_key("crop", IMAGE_ID, metadata) == KEYS["crop"]
    assert content_key("small-original", IMAGE_ID, metadata) == KEYS["original_small"]
    assert small_original_key(IMAGE_ID, KEYS["crop_small"], ORIGINAL_KEY) == KEYS["original_small"]
    assert (
        thumbnail_key(IMAGE_ID, "detector_standin", "1", KEYS["crop"], ORIGINAL_KEY, (320, 240)) == KEYS["crop_small"]
    )


def test_a_crop_read_from_the_original_needs_a_box_inside_it(small):
    store, crop, _ = detected(small[0])
    with pytest.raises(Failed, match="no_box"):
        read_crop(store.get, ORIGINAL_KEY, ORIGINAL_KEY, None)
    with pytest.raises(Failed, match="bad_box"):
        read_crop(store.get, ORIGINAL_KEY, ORIGINAL_KEY, (0, 0, 5000, 10))
    with pytest.raises(Failed, match="bad_box"):
        box_to_cut("crop", {"crop_key": "k", "original_key": "k", "box": "1,2,3"})
    with pytest.raises(Failed, match="undecodable_image"):
        cut_crop(b"not a jpeg", (0, 0, 1, 1))


def test_the_same_pixels_always_give_the_same_bytes():
    image = shapes_image(7, size=(1500, 1200))
    for kind in ("crop", "small"):
        assert encode_derivative(image, kind) == encode_derivative(image.copy(), kind)
