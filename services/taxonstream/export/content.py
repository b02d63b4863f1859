"""Which stored object an export takes for an image, and the file extension its bytes call for."""

from __future__ import annotations

from collections.abc import Mapping

from taxonstream.core.keys import small_original_key
from taxonstream.models.derivatives import PixelBox, crop_from_original, decode, encode_derivative, parse_box

# original: the fetched bytes as stored; crop: the detector's padded specimen crop (cut from the original
# and encoded as the detector encodes a stored crop, where it stored none); small: the 256-px crop (the
# search thumbnail); small-original: the whole image at 256 px. For an original of at most 512 px on its
# shorter side the detector stores no 256-px copies: the original serves as both (core/keys.py).
CONTENTS = ("original", "crop", "small", "small-original")


class MissingContent(LookupError):
    """The image's metadata names no object of the kind asked for."""


def content_key(content: str, image_id: str, metadata: Mapping[str, str]) -> str:
    if content == "original":
        key = metadata.get("original_key", "")
    elif content == "crop":
        key = metadata.get("crop_key", "")
    elif content in {"small", "small-original"}:
        key = metadata.get("thumbnail_key", "")
        if key and content == "small-original":
            thumbnail, key = key, small_original_key(image_id, key, metadata.get("original_key", ""))
            if key is None:
                raise MissingContent(f"unexpected thumbnail key {thumbnail!r}")
    else:
        raise ValueError(f"content must be one of {', '.join(CONTENTS)}, not {content!r}")
    if not key:
        raise MissingContent(f"no {content} object recorded for this image")
    return key


def box_to_cut(content: str, metadata: Mapping[str, str]) -> PixelBox | None:
    """The box to cut from the object `content_key` names: set for a crop the detector did not store
    (its `crop_key` is the original's key), None where the object is the content as it is."""
    crop_key = metadata.get("crop_key", "")
    if content != "crop" or not crop_key or crop_key != metadata.get("original_key"):
        return None
    return parse_box(metadata.get("box", ""))


def cut_crop(original: bytes, box: PixelBox) -> bytes:
    """The crop's JPEG bytes from the original's: the same bytes the detector would have stored."""
    return encode_derivative(crop_from_original(decode(original, "original"), box), "crop")


_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "jpg"),
    (b"\x89PNG\r\n\x1a\n", 0, "png"),
    (b"GIF8", 0, "gif"),
    (b"WEBP", 8, "webp"),
    (b"II*\x00", 0, "tif"),
    (b"MM\x00*", 0, "tif"),
    (b"BM", 0, "bmp"),
)


def extension(data: bytes, key: str = "") -> str:
    """From the bytes (originals are stored without a name), else the key's suffix, else `bin`."""
    for magic, offset, ext in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return ext
    if data[4:12] in {b"ftypavif", b"ftypheic", b"ftypheix", b"ftypmif1"}:
        return "avif" if data[8:12] == b"avif" else "heic"
    tail = key.rsplit("/", 1)[-1]
    return tail.rsplit(".", 1)[-1].lower() if "." in tail else "bin"
