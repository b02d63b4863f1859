"""Which object an export reads per content kind, and the extension its bytes get."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from taxonstream.core.store import derivative_keys
from taxonstream.export.content import MissingContent, box_to_cut, content_key, cut_crop, extension

META = {
    "original_key": "originals/sha256/ab/cd/abcd",
    "crop_key": "derivatives/abcd/detr_standin/1/crop.jpg",
    "thumbnail_key": derivative_keys("abcd", "detr_standin", "1")["crop_small"],
}


def test_content_keys():
    assert content_key("original", "abcd", META) == META["original_key"]
    assert content_key("crop", "abcd", META) == META["crop_key"]
    assert content_key("small", "abcd", META) == META["thumbnail_key"]
    assert content_key("small-original", "abcd", META) == derivative_keys("abcd", "detr_standin", "1")["original_small"]
    with pytest.raises(MissingContent):
        content_key("crop", "abcd", {"original_key": "x"})
    with pytest.raises(ValueError):
        content_key("thumbnail", "abcd", META)


def test_a_small_image_without_derivatives_is_its_own_thumbnail_and_crop_source():
    # The detector stored no crop and no 256-px copies: crop_key and thumbnail_key are the original's.
    original = META["original_key"]
    meta = {"original_key": original, "crop_key": original, "thumbnail_key": original, "box": "4,5,300,200"}
    assert content_key("small", "abcd", meta) == original
    assert content_key("small-original", "abcd", meta) == original
    assert content_key("crop", "abcd", meta) == original
    assert box_to_cut("crop", meta) == (4, 5, 300, 200)
    assert box_to_cut("original", meta) is None
    assert box_to_cut("crop", META) is None  # a stored crop is exported as it is
    with pytest.raises(MissingContent):
        content_key("small-original", "abcd", {**meta, "thumbnail_key": "elsewhere/x.jpg"})


def test_a_cut_crop_has_the_box_size():
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), "green").save(buffer, format="JPEG")
    assert Image.open(io.BytesIO(cut_crop(buffer.getvalue(), (10, 20, 110, 220)))).size == (100, 200)


@pytest.mark.parametrize(
    "fmt,ext", [("JPEG", "jpg"), ("PNG", "png"), ("GIF", "gif"), ("WEBP", "webp"), ("TIFF", "tif")]
)
def test_extension_from_bytes(fmt, ext):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format=fmt)
    assert extension(buffer.getvalue(), "originals/sha256/ab/cd/abcd") == ext


def test_extension_falls_back_to_the_key():
    assert extension(b"not an image", "derivatives/x/m/1/crop.JPG") == "jpg"
    assert extension(b"not an image", "originals/sha256/ab/cd/abcd") == "bin"
