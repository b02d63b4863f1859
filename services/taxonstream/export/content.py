"""Which stored object an export takes for an image, and the file extension its bytes call for."""

from __future__ import annotations

from collections.abc import Mapping

from taxonstream.core.keys import derivative_keys, parse_derivative_key

# original: the fetched bytes as stored; crop: the detector's padded specimen crop;
# small: the 256-px crop (the search thumbnail); small-original: the whole image at 256 px.
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
            # The thumbnail lives under derivatives/<image_id>/<detector model>/<version>/: the same
            # detector run stored the 256-px original beside it.
            parsed = parse_derivative_key(key)
            if parsed is None:
                raise MissingContent(f"unexpected thumbnail key {key!r}")
            key = derivative_keys(image_id, parsed[1], parsed[2])["original_small"]
    else:
        raise ValueError(f"content must be one of {', '.join(CONTENTS)}, not {content!r}")
    if not key:
        raise MissingContent(f"no {content} object recorded for this image")
    return key


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
