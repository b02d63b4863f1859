"""Image preprocessing for the encoder and detector models: numpy and Pillow only, no torch.

The CLIP recipe reproduces pybioclip's `preprocess_img`, which BioCLIP and BioCLIP 2 both use
(read in its source, `src/bioclip/predict.py`):

    transforms.ToTensor()                          # uint8 RGB -> float32 in [0, 1], CHW
    transforms.Resize((224, 224), antialias=True)  # squash, no centre crop; torchvision's default
                                                   # interpolation is BILINEAR, applied to floats
    transforms.Normalize(OpenAI CLIP mean, std)

Note that it is bilinear with antialiasing, not bicubic: open_clip's own transform is bicubic with a centre
crop, but pybioclip swaps in the one above for its Tree-of-Life models. Pillow's antialiased BILINEAR filter
on float ("F") images is the algorithm torch's antialiased bilinear was ported from; resizing floats (not
uint8) also keeps torchvision's lack of intermediate rounding. The two agree to about 1e-5 (checked in
tests/unit/test_models_preprocess.py).

pybioclip opens images with `PIL.Image.open(path).convert("RGB")` and does NOT apply the EXIF orientation
tag. We apply it (`ImageOps.exif_transpose`) by default because a specimen photo taken in portrait should be
embedded the way people see it, and because the detector's crop box must refer to that same upright
image. Pass `apply_exif_orientation=False` for pixel-exact pybioclip parity on such images. Every other
step, including `.convert("RGB")` (which drops an alpha channel rather than compositing it), matches.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageOps

from .contract import CLIP_IMAGE_SIZE

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_CROP_PAD = 1.4  # the BIOSCAN crop tool enlarges its best DETR box 1.4x about the centre

_CLIP_MEAN = np.asarray(CLIP_MEAN, dtype=np.float32).reshape(3, 1, 1)
_CLIP_STD = np.asarray(CLIP_STD, dtype=np.float32).reshape(3, 1, 1)


def upright_rgb(image: Image.Image, apply_exif_orientation: bool = True) -> Image.Image:
    """The image turned the way its EXIF orientation says, as 3-channel RGB (alpha dropped, as pybioclip)."""
    if apply_exif_orientation:
        image = ImageOps.exif_transpose(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def _resize_float_chw(rgb: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Float32 CHW in [0, 1], resized with antialiased bilinear on 32-bit float channels.

    Each channel is widened to float ("F") before resizing, so nothing is rounded to uint8 in between.
    Dividing by 255 after the resize instead of before gives the same values (the filter is linear) and
    avoids a float copy of a full-size image, about 3x faster on a 12-megapixel photo.
    """
    if rgb.size == size:
        return np.ascontiguousarray(np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0))
    channels = [np.asarray(band.convert("F").resize(size, Image.Resampling.BILINEAR)) for band in rgb.split()]
    return np.stack(channels) / np.float32(255.0)


def clip_pixel_values(image: Image.Image, apply_exif_orientation: bool = True) -> np.ndarray:
    """The encoder's `pixel_values` for one image: float32 [3, 224, 224], normalised with CLIP mean/std."""
    rgb = upright_rgb(image, apply_exif_orientation)
    pixels = _resize_float_chw(rgb, (CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE))
    return ((pixels - _CLIP_MEAN) / _CLIP_STD).astype(np.float32, copy=False)


def detector_pixels(image: Image.Image, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The detector's `images` input for one image: float32 [3, size, size] in [0, 1], squashed.

    Returns it with the (width, height) of the upright image, which is what the normalised boxes the
    detector predicts refer to (a squash keeps normalised coordinates valid for the original).
    """
    rgb = upright_rgb(image)
    return _resize_float_chw(rgb, (size, size)), rgb.size


def crop_box(
    box_cxcywh_norm: tuple[float, float, float, float] | np.ndarray,
    image_size: tuple[int, int],
    pad: float = DEFAULT_CROP_PAD,
) -> tuple[int, int, int, int]:
    """Pixel crop (left, top, right, bottom) for a normalised (cx, cy, w, h) box, enlarged `pad`x about
    its centre and clamped to the image.

    Edges are rounded outwards (floor / ceil) so the crop never cuts into the padded box; the result
    always holds at least one pixel, so it can be passed to `Image.crop` as is.
    """
    cx, cy, w, h = (float(v) for v in box_cxcywh_norm)
    width, height = image_size
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {image_size}")
    half_w = abs(w) * width * pad / 2.0
    half_h = abs(h) * height * pad / 2.0
    centre_x, centre_y = cx * width, cy * height
    # Rounding to 3 decimals first keeps float noise from widening a crop by a pixel: models answer in
    # float32 (0.4 arrives as 0.40000001), which puts an edge meant to be 76 at 75.99998.
    left = min(max(math.floor(round(centre_x - half_w, 3)), 0), width - 1)
    top = min(max(math.floor(round(centre_y - half_h, 3)), 0), height - 1)
    right = max(min(math.ceil(round(centre_x + half_w, 3)), width), left + 1)
    bottom = max(min(math.ceil(round(centre_y + half_h, 3)), height), top + 1)
    return left, top, right, bottom
