"""Bodies are judged by their bytes: truncated, HTML, empty and oversized images never pass."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from taxonstream.core.errors import Failed
from taxonstream.fetching.validate import inspect_image


def jpeg(size=(64, 48), color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="JPEG")
    return out.getvalue()


def test_a_complete_jpeg_is_accepted_with_its_size_and_mime():
    info = inspect_image(jpeg((64, 48)), max_pixels=10_000)
    assert (info.mime, info.width, info.height) == ("image/jpeg", 64, 48)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty_body"),
        (b"<!DOCTYPE html><html><body>Access denied</body></html>", "not_an_image"),
        (b'{"error": "not found"}', "not_an_image"),
        (b"GIF89a-but-not-really", "not_an_image"),
        (b"just some bytes that are no image at all", "not_an_image"),
    ],
)
def test_junk_bodies_fail_with_a_reason(body, reason):
    with pytest.raises(Failed) as caught:
        inspect_image(body, max_pixels=10_000)
    assert caught.value.reason == reason


def test_a_truncated_jpeg_fails_on_full_decode():
    data = jpeg((256, 256))
    with pytest.raises(Failed) as caught:
        inspect_image(data[: len(data) // 2], max_pixels=10**6)
    assert caught.value.reason == "truncated"


def test_the_pixel_cap_stops_decompression_bombs_before_decoding():
    out = io.BytesIO()
    Image.new("L", (4000, 4000)).save(out, format="PNG")  # tiny file, 16 megapixels
    with pytest.raises(Failed) as caught:
        inspect_image(out.getvalue(), max_pixels=1_000_000)
    assert caught.value.reason == "too_many_pixels"
