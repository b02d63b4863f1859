"""Preprocessing: the pybioclip recipe, input modes, EXIF orientation, detector pixels and crop boxes."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from taxonstream.models.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    clip_pixel_values,
    crop_box,
    detector_pixels,
    upright_rgb,
)

MEAN = np.asarray(CLIP_MEAN, dtype=np.float64)
STD = np.asarray(CLIP_STD, dtype=np.float64)


def _expected_solid(rgb: tuple[int, int, int]) -> np.ndarray:
    return (np.asarray(rgb, dtype=np.float64) / 255.0 - MEAN) / STD


def _with_exif_orientation(image: Image.Image, orientation: int) -> Image.Image:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif)
    buffer.seek(0)
    return Image.open(buffer)


def _left_half_red(width: int, height: int) -> Image.Image:
    """Red left half, blue right half: any rotation or mirroring moves the colours."""
    image = Image.new("RGB", (width, height), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, width // 2, height))
    return image


def test_solid_colour_gives_normalised_constant_per_channel() -> None:
    colour = (200, 30, 117)
    pixels = clip_pixel_values(Image.new("RGB", (300, 500), colour))
    assert pixels.shape == (3, 224, 224)
    assert pixels.dtype == np.float32
    for channel in range(3):
        np.testing.assert_allclose(pixels[channel], _expected_solid(colour)[channel], atol=1e-5)


def test_non_square_image_is_squashed_not_centre_cropped() -> None:
    # 448 x 224: left half red, right half blue. A squash keeps both halves, each 112 columns wide;
    # a centre crop of the 224 x 224 middle would also keep both, so use a 3:1 image where it would not.
    image = Image.new("RGB", (672, 224), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 224, 224))  # the left third is red
    pixels = clip_pixel_values(image)
    red = _expected_solid((255, 0, 0))
    blue = _expected_solid((0, 0, 255))
    # Squashed, the left third (columns 0..74) is red; a centre crop would contain no red at all.
    np.testing.assert_allclose(pixels[:, :, :70], red[:, None, None] * np.ones((3, 224, 70)), atol=1e-5)
    np.testing.assert_allclose(pixels[:, :, 80:], blue[:, None, None] * np.ones((3, 224, 144)), atol=1e-5)


def test_matches_torchvision_resize_as_pybioclip_uses_it() -> None:
    # pybioclip: ToTensor -> Resize((224, 224), antialias=True) (bilinear, on floats) -> Normalize.
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    for height, width in [(300, 500), (100, 150), (1000, 37), (224, 224)]:
        array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0
        resized = torch.nn.functional.interpolate(
            tensor[None], size=(224, 224), mode="bilinear", align_corners=False, antialias=True
        )[0]
        expected = ((resized - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]).numpy()
        actual = clip_pixel_values(Image.fromarray(array))
        assert np.max(np.abs(actual - expected)) < 1e-4, (height, width)


def test_rgba_drops_alpha_like_convert_rgb() -> None:
    # pybioclip does .convert("RGB"): the colour under a transparent pixel is kept, not composited.
    image = Image.new("RGBA", (64, 64), (10, 200, 60, 0))
    pixels = clip_pixel_values(image)
    np.testing.assert_allclose(pixels[:, 5, 5], _expected_solid((10, 200, 60)), atol=1e-5)


def test_greyscale_is_replicated_to_three_channels() -> None:
    pixels = clip_pixel_values(Image.new("L", (50, 80), 128))
    np.testing.assert_allclose(pixels[:, 0, 0], _expected_solid((128, 128, 128)), atol=1e-5)


def test_cmyk_and_palette_images_are_converted() -> None:
    cmyk = Image.new("CMYK", (40, 40), (0, 255, 255, 0))  # pure red in Pillow's naive CMYK->RGB
    np.testing.assert_allclose(clip_pixel_values(cmyk)[:, 3, 3], _expected_solid((255, 0, 0)), atol=1e-5)
    palette = Image.new("RGB", (40, 40), (0, 128, 255)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert palette.mode == "P"
    np.testing.assert_allclose(clip_pixel_values(palette)[:, 3, 3], _expected_solid((0, 128, 255)), atol=1e-5)


def test_exif_orientation_is_applied() -> None:
    upright = _left_half_red(200, 100)
    # Orientation 3 = stored rotated by 180 degrees: the stored image has red on the right.
    stored = upright.rotate(180)
    tagged = _with_exif_orientation(stored, 3)
    np.testing.assert_allclose(clip_pixel_values(tagged), clip_pixel_values(upright), atol=1e-5)
    # Opting out gives the raw stored pixels, as pybioclip sees them.
    np.testing.assert_allclose(
        clip_pixel_values(tagged, apply_exif_orientation=False), clip_pixel_values(stored), atol=1e-5
    )


def test_detector_pixels_are_in_unit_range_with_upright_size() -> None:
    stored = _left_half_red(300, 120).rotate(90, expand=True)  # turned 90 degrees anticlockwise: 120 x 300
    tagged = _with_exif_orientation(stored, 6)  # 6 = "turn 90 degrees clockwise to view": back to 300 x 120
    pixels, original_size = detector_pixels(tagged, 256)
    assert pixels.shape == (3, 256, 256)
    assert pixels.dtype == np.float32
    assert original_size == (300, 120)
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    np.testing.assert_allclose(pixels[:, 128, 10], (1.0, 0.0, 0.0), atol=1e-6)  # red on the left again
    np.testing.assert_allclose(pixels[:, 128, 245], (0.0, 0.0, 1.0), atol=1e-6)


def test_preprocess_does_not_import_torch() -> None:
    code = (
        "import sys, taxonstream.models.preprocess, taxonstream.models.contract; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# crop_box: box (cx, cy, w, h) normalised; enlarged 1.4x about its centre; clamped.


def test_crop_box_centre_box_enlarged() -> None:
    # 1000 x 500 image, box centre (500, 250), 200 x 100 px -> 280 x 140 px.
    assert crop_box((0.5, 0.5, 0.2, 0.2), (1000, 500)) == (360, 180, 640, 320)


def test_crop_box_without_padding_is_the_box() -> None:
    assert crop_box((0.25, 0.5, 0.1, 0.5), (400, 200), pad=1.0) == (80, 50, 120, 150)


def test_crop_box_rounds_outwards() -> None:
    # 101 x 101: centre 50.5, half side 0.1 * 101 * 1.4 / 2 = 7.07 -> 43.43 .. 57.57 -> 43 .. 58.
    assert crop_box((0.5, 0.5, 0.1, 0.1), (101, 101)) == (43, 43, 58, 58)


def test_crop_box_is_clamped_to_the_image() -> None:
    # Box near the top-left corner: 640 x 480, centre (32, 24), 256 x 192 px -> 358.4 x 268.8 px.
    assert crop_box((0.05, 0.05, 0.4, 0.4), (640, 480)) == (0, 0, 212, 159)
    # Whole-image box grows past every edge and is clamped to the full image.
    assert crop_box((0.5, 0.5, 1.0, 1.0), (640, 480)) == (0, 0, 640, 480)


def test_crop_box_degenerate_boxes_still_give_a_pixel() -> None:
    assert crop_box((0.5, 0.5, 0.0, 0.0), (10, 10)) == (5, 5, 6, 6)
    assert crop_box((1.0, 1.0, 0.0, 0.0), (10, 10)) == (9, 9, 10, 10)
    left, top, right, bottom = crop_box((2.0, -1.0, 0.1, 0.1), (10, 10))
    assert 0 <= left < right <= 10 and 0 <= top < bottom <= 10


def test_crop_box_rejects_an_empty_image() -> None:
    with pytest.raises(ValueError):
        crop_box((0.5, 0.5, 0.1, 0.1), (0, 10))


def test_upright_rgb_is_idempotent() -> None:
    # The detector service turns an image upright once, then passes it to detector_pixels (which does
    # it again): the second pass must not turn it a second time.
    tagged = _with_exif_orientation(_left_half_red(200, 100).rotate(90, expand=True), 6)
    once = upright_rgb(tagged)
    assert once.size == (200, 100)
    assert upright_rgb(once).size == (200, 100)
    assert detector_pixels(once, 64)[1] == (200, 100)
