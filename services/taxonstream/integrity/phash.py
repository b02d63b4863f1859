"""Perceptual hash (pHash, 64 bits) of an image, and the batch function the `dupes` command runs on every core.

pHash comes from `imagehash`: greyscale, 32×32, 2-D DCT, the 8×8 lowest frequencies against their median.
Why that library rather than our own twenty lines: it is the implementation Python users already run
(curators' dedupe scripts, other image pipelines), so a hash in our manifests can be compared with one they
compute; it is maintained, small, and its dependencies (numpy, scipy, PyWavelets) are common wheels. Copies
that are re-encoded, resized or slightly shifted land within a few bits of each other; unrelated photos
are ~32 bits apart on average.

Before hashing, JPEGs are decoded at a reduced scale (libjpeg's DCT scaling, still ≥ 256 px on each
side, far above the 32×32 pHash looks at): a 20-megapixel specimen photo hashes ~10× faster and the hash moves
by at most a bit or two. EXIF orientation is applied first, so a copy rotated by its metadata and one rotated
in its pixels hash alike.

A featureless picture (one grey level, give or take JPEG noise: a blank placeholder, a black frame, shapes
whose colours differ only in hue) has no pHash worth the name: every such image hashes to
8000000000000000, so all of them would be near duplicates of each other. `FlatImage` is raised instead;
such files take part in exact duplicates only.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Sequence
from typing import NamedTuple

import imagehash
import numpy as np
from PIL import Image, ImageOps

from taxonstream.integrity.checksums import Item

HASH_BITS = 64
# Decode JPEGs at no less than this many pixels per side (see the module docstring).
DRAFT_SIZE = 256
# pHash's own input: greyscale at 32×32. Below this standard deviation (grey levels of 255) it is flat.
PHASH_INPUT = 32
FLAT_STD = 1.0


class ImageUnreadable(ValueError):
    """The bytes are not an image Pillow can decode."""


class FlatImage(ImageUnreadable):
    """The image decodes but is featureless at pHash's scale (see the module docstring)."""


def phash_image(image: Image.Image) -> int:
    """pHash of a decoded image as a 64-bit unsigned int (bit order of imagehash's hex string)."""
    small = ImageOps.exif_transpose(image).convert("L").resize((PHASH_INPUT, PHASH_INPUT), Image.Resampling.LANCZOS)
    if float(np.asarray(small, dtype=np.float64).std()) < FLAT_STD:
        raise FlatImage("featureless image: no perceptual hash")
    return int(str(imagehash.phash(small)), 16)  # imagehash makes this same 32×32 greyscale, so it is unchanged


def phash_bytes(data: bytes) -> int:
    """pHash of encoded image bytes; raises ImageUnreadable when they do not decode."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "JPEG":
                image.draft("RGB", (DRAFT_SIZE, DRAFT_SIZE))
            image.load()
            return phash_image(image)
    except FlatImage:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageUnreadable(str(error) or type(error).__name__) from error


def to_hex(value: int) -> str:
    return f"{value:016x}"


def from_hex(text: str) -> int:
    value = int(text, 16)
    if not 0 <= value < 1 << HASH_BITS:
        raise ValueError(f"not a 64-bit hash: {text!r}")
    return value


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


class Fingerprint(NamedTuple):
    """What `dupes` needs of one file: its sha256, its pHash (None when not an image), or why it failed."""

    sha256: str
    phash: int | None
    error: str | None = None


def _read(item: Item, archives: dict[str, zipfile.ZipFile]) -> bytes:
    if item.member is None:
        with open(item.path, "rb") as handle:
            return handle.read()
    archive = archives.get(item.path)
    if archive is None:
        archive = archives[item.path] = zipfile.ZipFile(item.path)
    return archive.read(item.member)


def fingerprint_batch(batch: Sequence[Item]) -> list[Fingerprint]:
    """Runs in a worker process: sha256 and pHash of each item (a non-image gets phash None, not an error)."""
    archives: dict[str, zipfile.ZipFile] = {}
    out = []
    try:
        for item in batch:
            try:
                data = _read(item, archives)
            except (OSError, RuntimeError, zipfile.BadZipFile, KeyError, EOFError) as error:
                out.append(Fingerprint("", None, str(error)))
                continue
            try:
                value: int | None = phash_bytes(data)
            except ImageUnreadable:
                value = None
            out.append(Fingerprint(hashlib.sha256(data).hexdigest(), value))
    finally:
        for archive in archives.values():
            archive.close()
    return out
