"""Is a body really a complete image? Decided from the bytes, never from Content-Type."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from taxonstream.core.errors import Failed

# MPO is a JPEG with extra pictures appended (some cameras write it); it is stored as the JPEG it is.
ACCEPTED_FORMATS = {"JPEG", "MPO", "PNG", "GIF", "WEBP", "TIFF", "BMP", "JPEG2000"}
MIME = {"MPO": "image/jpeg"}
# Leading bytes of the accepted formats: a body that starts otherwise is rejected before it is all read.
MAGIC = (
    (b"\xff\xd8", "JPEG"),  # SOI; the full decode judges the rest
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),
    (b"\xff\x4f\xff\x51", "JPEG2000"),
)
SNIFF_BYTES = 16
# Images of formats that are not accepted: named in the failure instead of "not an image".
OTHER_IMAGES = (
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (b"\xff\x0a", "JPEG XL"),
    (b"DDS ", "DDS"),
    (b"%PDF", "PDF"),
)
HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"mif1", b"msf1", b"avif", b"avis"}


@dataclass(frozen=True)
class ImageInfo:
    mime: str
    width: int
    height: int


def _describe_junk(head: bytes) -> str | None:
    text = head[:512].lstrip().lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"<")):
        return "HTML/XML"
    if text.startswith((b"{", b"[")):
        return "JSON"
    return None


def sniff(head: bytes) -> str | None:
    """The image format the first bytes announce, or None. Needs SNIFF_BYTES bytes (or the whole body)."""
    for magic, kind in MAGIC:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def check_head(head: bytes) -> None:
    """Reject a body from its first bytes: an error page or anything that is no accepted image format."""
    kind = _describe_junk(head)
    if kind:
        raise Failed("not_an_image", f"the body is {kind}, not an image (often an error or access-denied page)")
    if sniff(head) is None:
        other = next((kind for magic, kind in OTHER_IMAGES if head.startswith(magic)), None)
        if other is None and head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS:
            other = "HEIF/AVIF"
        if other:
            raise Failed("unsupported_format", f"{other} files are not accepted")
        raise Failed("not_an_image", f"the body does not start like an image ({head[:8]!r})")


def inspect_image(
    data: bytes, max_pixels: int, min_width: int = 0, min_height: int = 0, fast: bool = False
) -> ImageInfo:
    """Identify and fully decode `data`; `fast` decodes JPEGs at 1/8 scale (every byte is still decoded)."""
    # A 1-px side asks for libjpeg's smallest scale, 1/8.
    return inspect_decoded(data, max_pixels, min_width, min_height, draft_side=1 if fast else 0)[0]


def inspect_decoded(
    data: bytes,
    max_pixels: int,
    min_width: int = 0,
    min_height: int = 0,
    draft_side: int = 0,
) -> tuple[ImageInfo, Image.Image | None]:
    """`inspect_image`, and the decoded picture of a single-frame image (None for several frames).

    With `draft_side`, a JPEG decodes at the smallest libjpeg DCT scale (1/2, 1/4, 1/8) keeping both sides
    >= it: libjpeg still reads and entropy-decodes every scan (a truncated file fails all the same); only
    the inverse DCT is scaled down. The draft is Pillow's `draft("RGB", ...)`, the
    call integrity/phash.py makes, so the picture is the one phash_bytes would decode at that side.
    """
    if not data:
        raise Failed("empty_body", "the server answered with zero bytes")
    kind = _describe_junk(data)
    if kind:
        raise Failed("not_an_image", f"the body is {kind}, not an image (often an error or access-denied page)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ACCEPTED_FORMATS:
                raise Failed("unsupported_format", f"{image.format} images are not accepted")
            width, height = image.size
            if width * height > max_pixels:
                raise Failed("too_many_pixels", f"{width}x{height} exceeds the {max_pixels}-pixel cap")
            if width < min_width or height < min_height:
                raise Failed("too_small", f"{width}x{height} is below the {min_width}x{min_height} minimum")
            frames = getattr(image, "n_frames", 1)
            if frames * width * height > max_pixels:  # many small frames are a bomb too
                raise Failed("too_many_pixels", f"{frames} frames of {width}x{height} exceed {max_pixels} pixels")
            if draft_side and image.format in ("JPEG", "MPO"):
                image.draft("RGB", (draft_side, draft_side))  # the file's mode is kept (L stays L)
            image.load()  # full decode: a truncated file fails here, not downstream
            for index in range(1, frames):  # animated GIF/WebP, multi-page TIFF: every frame must decode
                image.seek(index)
                image.load()
    except Failed:
        raise
    except UnidentifiedImageError as error:
        raise Failed("not_an_image", "the body is not a recognisable image") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise Failed("too_many_pixels", str(error)) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise Failed("truncated", f"the image does not decode completely: {error}") from error
    mime = MIME.get(image.format) or Image.MIME.get(image.format, "application/octet-stream")
    return ImageInfo(mime, width, height), image if frames == 1 else None
