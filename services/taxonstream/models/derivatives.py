"""The detector's derivatives: how they are encoded, which ones earn their bytes, and how a consumer reads
the crop whether or not one was stored.

A crop is stored only for a large original, where decoding the original again would cost several times
more than decoding the crop; otherwise the message's `crop_key` is the original's own key and consumers
(embedder, reembed, `export --content crop`) cut the box out of the decoded original here. Which 256-px
copies exist, and which key serves as thumbnail or small original, is decided in `core/keys.py`.

Measured with the stand-in detector's box (padded 1.4x: ~70 % of the image; one-off script, the same
images as tests/unit/test_derivatives.py), stored bytes per original byte (original + derivatives + the
~0.8 kB lineage; the budget is 1.5x), max (mean):
                                      before (crop + both copies, always)   now
  320x240 demo JPEGs, 2-8 kB          3.31x (3.03x)                         1.35x (1.17x)  lineage only
  400x300 e2e JPEGs, 3-11 kB          3.15x (2.86x)                         1.24x (1.12x)  lineage only
  800x600 shapes, 10-24 kB            -                                     1.26x (1.23x)  + original_256
  1600x1200 photo-like, 0.6 MB        -                                     1.04x (1.04x)  + original_256
  3000x2000 photos, 1.2-1.9 MB        1.29x (1.26x)                         1.12x (1.11x)  crop + both copies
A crop cut from the original has exactly the lossless crop's pixels (cosine 1.0 to it, stand-in encoder);
to the q85 crop stored before for the same small images, cosine >= 0.99713 (demo) / 0.99880 (400x300), so
small images indexed before this layout embed within that of those indexed after. Photos: the stored crop
(512 px, from the half-scale decode) embeds within cosine 0.99968 of the lossless crop, 0.99967 of the
1024-px crop stored before.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from PIL import ExifTags, Image, UnidentifiedImageError

from taxonstream.core.errors import Failed
from taxonstream.core.keys import small_copies_stored

from .preprocess import upright_rgb

PixelBox = tuple[int, int, int, int]  # left, top, right, bottom in the upright original's pixels

# The stored crop is what the embedder (224 x 224 input) reads: at most this many pixels on its shorter
# side, 2.3x the encoder's input. It was 1024; at 512 a crop of a 3000x2000 photo (cut from its half-scale
# decode) embeds within cosine 0.99968 of the lossless crop (1024: 0.99999; stand-in encoder, 3 photos),
# is 166 kB instead of 485 kB, and lets the detector decode such photos at 1/2 (decode_upright).
CROP_MAX_SIDE = 512
# A crop is stored only for an original over this many pixels (below it a decode costs a few ms) and only
# when the stored crop has at most this share of the original's pixels (3000x2000 photo, 70 % box: 0.26).
CROP_MIN_ORIGINAL_PIXELS = 1_000_000
CROP_MAX_PIXEL_SHARE = 1 / 3


def shorter_side(image: Image.Image, side: int, reducing_gap: float = 3.0) -> Image.Image:
    """`image` scaled so its shorter side is `side` px (aspect kept); a smaller image is left as it is.

    reducing_gap: Pillow box-reduces by the whole factor `scale // reducing_gap` first, then Lanczos over the
    rest; 3.0 (Pillow's "indistinguishable from fair resampling") for what a model reads. A 256-px copy
    that no model reads takes `SMALL_REDUCING_GAP`: from a 1500x1000 decode, 3.2 ms instead of 14 ms here
    (at 3.0 the 3.9x factor is all Lanczos, which was a third of the detector's CPU on photos).
    """
    width, height = image.size
    scale = side / min(width, height)
    if scale >= 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=reducing_gap)


def crop_at_stored_size(crop: Image.Image) -> Image.Image:
    """A crop's pixels as crop.jpg holds them: CROP_MAX_SIDE on the shorter side, never enlarged."""
    return shorter_side(crop, CROP_MAX_SIDE)


# The 256-px copies (original_small, crop_small): a box reduce for all but the last factor, then Lanczos.
SMALL_REDUCING_GAP = 1.0


def encode_derivative(image: Image.Image, kind: Literal["crop", "small"]) -> bytes:
    """The JPEG bytes of a derivative; fixed settings, so the same pixels always give the same bytes.

    The crop keeps full chroma (q85 4:4:4; at 4:2:0 saturated colours moved the embedding to cosine 0.969
    on demo images); the 256-px copies, which no model reads, halve it (q80 4:2:0).
    """
    out = io.BytesIO()
    if kind == "crop":
        crop_at_stored_size(image).save(out, format="JPEG", quality=85, subsampling=0, optimize=True)
    else:
        image.save(out, format="JPEG", quality=80, subsampling=2, optimize=True)
    return out.getvalue()


def crop_worth_storing(original_size: tuple[int, int], box: PixelBox) -> bool:
    """Whether the detector stores a crop: the original is large and the stored crop a small share of it."""
    width, height = original_size
    pixels = width * height
    if pixels <= CROP_MIN_ORIGINAL_PIXELS or not small_copies_stored(original_size):
        return False
    box_width, box_height = box[2] - box[0], box[3] - box[1]
    scale = min(1.0, CROP_MAX_SIDE / max(1, min(box_width, box_height)))
    return box_width * box_height * scale * scale <= CROP_MAX_PIXEL_SHARE * pixels


def parse_box(text: str) -> PixelBox:
    """A box as the index metadata writes it, "left,top,right,bottom"."""
    try:
        left, top, right, bottom = (int(part) for part in text.split(","))
    except ValueError:
        raise Failed("bad_box", f"the box {text!r} is not four integers left,top,right,bottom") from None
    if right <= left or bottom <= top:
        raise Failed("bad_box", f"the box {text!r} holds no pixels")
    return left, top, right, bottom


def decode(data: bytes, what: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise Failed("undecodable_image", f"the {what} does not decode: {error}") from error
    return image


# Orientations whose transpose swaps width and height (as ImageOps.exif_transpose applies them).
SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
# libjpeg's DCT scaling factors, as Pillow's JpegImageFile.draft chooses among them.
JPEG_SCALES = (8, 4, 2, 1)


@dataclass(frozen=True)
class Decoded:
    """An upright RGB original, decoded at full size or (a large JPEG) at a libjpeg DCT scale of it."""

    image: Image.Image
    original_size: tuple[int, int]  # upright, full resolution: what boxes and the lineage refer to
    data: bytes = b""  # the encoded original, kept for a finer decode should the crop need one

    @property
    def scaled(self) -> bool:
        return self.image.size != self.original_size

    def scaled_box(self, box: PixelBox) -> PixelBox:
        """`box` (original pixels) in the decoded image's pixels, rounded outwards; the same box at full size."""
        (width, height), (decoded_width, decoded_height) = self.original_size, self.image.size
        left, top, right, bottom = box
        return (
            left * decoded_width // width,
            top * decoded_height // height,
            -(-right * decoded_width // width),
            -(-bottom * decoded_height // height),
        )


def as_decoded(image: Image.Image | Decoded) -> Decoded:
    """A plain image stands for an upright original decoded at full size."""
    return image if isinstance(image, Decoded) else Decoded(image, image.size)


def decode_upright(data: bytes, least_side: int = 0) -> Decoded:
    """The upright RGB original; a JPEG of over CROP_MIN_ORIGINAL_PIXELS decoded at the smallest DCT scale
    (1/2, 1/4, 1/8) that keeps both sides >= `least_side` (0: full size). Smaller originals decode in full,
    as before: consumers cut their crop from the original, so their box must come from the same pixels.
    libjpeg still entropy-decodes every byte, so a truncated file fails here all the same.
    """
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if least_side and image.format in ("JPEG", "MPO") and width * height > CROP_MIN_ORIGINAL_PIXELS:
            image.draft("RGB", (least_side, least_side))
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise Failed("undecodable_image", f"the stored image does not decode: {error}") from error
    original_size = (height, width) if orientation in SWAPPING_ORIENTATIONS else (width, height)
    return Decoded(upright_rgb(image), original_size, data)


def finer_side_for_crop(decoded: Decoded, box: PixelBox) -> int:
    """0 when `decoded` holds the stored crop at its full size (min(box, CROP_MAX_SIDE) on the shorter
    side); else the `least_side` for decode_upright at the coarsest DCT scale that does."""
    if not decoded.scaled:
        return 0
    left, top, right, bottom = decoded.scaled_box(box)
    box_side = min(box[2] - box[0], box[3] - box[1])
    needed = min(box_side, CROP_MAX_SIDE)
    if min(right - left, bottom - top) >= needed:
        return 0
    factor = next(factor for factor in JPEG_SCALES if box_side >= factor * needed)
    # Pillow decodes at the largest factor with both sides >= the size asked for: ask for side / factor.
    return -(-min(decoded.original_size) // factor)


def read_crop(get: Callable[[str], bytes], crop_key: str, original_key: str, box: PixelBox | None) -> Image.Image:
    """The crop's pixels: the stored crop as it is, or, when `crop_key` is the original's key (no crop was
    stored), the box cut from the upright original at full resolution (the detector's own crop pixels).

    `get` raises KeyError for a missing object; that is the caller's to report.
    """
    if not crop_key or crop_key != original_key:
        return decode(get(crop_key), "crop")
    if box is None:
        raise Failed("no_box", f"{crop_key} is the original and no box says which part is the crop")
    return crop_from_original(decode(get(crop_key), "original"), box)


def crop_from_original(original: Image.Image, box: PixelBox) -> Image.Image:
    image = upright_rgb(original)
    left, top, right, bottom = box
    if right > image.width or bottom > image.height or left < 0 or top < 0:
        raise Failed("bad_box", f"the box {box} lies outside the {image.width}x{image.height} original")
    return image.crop(box)
