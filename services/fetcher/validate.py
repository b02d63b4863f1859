"""Is a body really a complete image? Decided from the bytes, never from Content-Type."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from taxonstream.core.errors import Failed

ACCEPTED_FORMATS = {"JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP", "JPEG2000"}


@dataclass(frozen=True)
class ImageInfo:
    mime: str
    width: int
    height: int


def inspect_image(data: bytes, max_pixels: int) -> ImageInfo:
    if not data:
        raise Failed("empty_body", "the server answered with zero bytes")
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"{", b"[")):
        kind = "JSON" if head[:1] in (b"{", b"[") else "HTML/XML"
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
            image.load()  # full decode: a truncated file fails here, not downstream
    except Failed:
        raise
    except UnidentifiedImageError as error:
        raise Failed("not_an_image", "the body is not a recognisable image") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise Failed("too_many_pixels", str(error)) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise Failed("truncated", f"the image does not decode completely: {error}") from error
    return ImageInfo(Image.MIME.get(image.format, "application/octet-stream"), width, height)
