"""Uploaded files, judged by their content before any service sees them: query images and URL lists."""

from __future__ import annotations

import io
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from taxonstream.fetching.inputs import InputError, read_records
from taxonstream.v1.messages_pb2 import SourceRecord

# What the detector decodes; anything else is refused here with a clear line.
IMAGE_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP"}
URL_LIST_SUFFIXES = (".csv", ".tsv", ".txt", ".jsonl", ".json", ".parquet", ".csv.gz", ".tsv.gz", ".jsonl.gz")


class UploadError(ValueError):
    """An upload refused: the message says what and why, in one line."""


def check_image(data: bytes, name: str, max_bytes: int, max_pixels: int) -> bytes:
    """The bytes, if they are one image of an accepted format within the byte and pixel caps."""
    label = name or "the upload"
    if not data:
        raise UploadError(f"{label}: empty file")
    if len(data) > max_bytes:
        raise UploadError(f"{label}: {len(data) / 2**20:.1f} MiB is over the {max_bytes / 2**20:.0f} MiB limit")
    try:
        with warnings.catch_warnings():
            # Pillow warns (and past 2x its own limit raises) on huge images; the pixel cap below decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                kind, (width, height) = image.format, image.size
                image.verify()  # structure and checksums, without decoding every pixel
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        reason = "not an image" if isinstance(error, UnidentifiedImageError) else f"a damaged image ({error})"
        raise UploadError(f"{label}: {reason}; upload a JPEG, PNG, WebP, GIF, TIFF or BMP file") from None
    if kind not in IMAGE_FORMATS:
        raise UploadError(f"{label}: {kind} images are not accepted; upload a JPEG, PNG, WebP, GIF, TIFF or BMP")
    if width * height > max_pixels:
        raise UploadError(
            f"{label}: {width}x{height} is {width * height / 1e6:.0f} MP, over the {max_pixels / 1e6:.0f} MP limit"
        )
    return data


def url_list_records(data: bytes, name: str, max_bytes: int) -> tuple[SourceRecord, Iterator[SourceRecord]]:
    """The first record and the rest of an uploaded URL list, read by the CLI's own reader.

    The first row is read before anything is submitted, so a file with no URL column fails here.
    """
    label = name or "the URL list"
    if not data:
        raise UploadError(f"{label}: empty file")
    if len(data) > max_bytes:
        raise UploadError(f"{label}: {len(data) / 2**20:.1f} MiB is over the {max_bytes / 2**20:.0f} MiB limit")
    lowered = label.lower()
    suffix = next((s for s in sorted(URL_LIST_SUFFIXES, key=len, reverse=True) if lowered.endswith(s)), None)
    if suffix is None:
        raise UploadError(f"{label}: unknown format; use .csv, .tsv, .txt, .jsonl or .parquet (optionally .gz)")
    # read_records takes a path (it sniffs gzip and Parquet by name); the file lives only while it is read.
    handle = tempfile.NamedTemporaryFile(suffix=suffix, prefix="portal-urls-")  # noqa: SIM115 - closed by the reader
    handle.write(data)
    handle.flush()
    try:
        records = read_records(Path(handle.name), None)
        first = next(records, None)
    except InputError as error:
        handle.close()
        raise UploadError(str(error).replace(handle.name, label)) from None
    if first is None:
        handle.close()
        raise UploadError(f"{label}: no rows")

    def rest() -> Iterator[SourceRecord]:
        try:
            yield from records
        finally:
            handle.close()

    return first, rest()
