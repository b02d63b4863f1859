"""Where `fetch_into_folder` puts each row's image, how it writes it, and whether an earlier run already did.

Names come from a column (or the row number), folders from another; anything that could leave the output
folder, hidden names and duplicates fail instead of overwriting. Files are written to a temporary name and
renamed into place, so they appear whole or not at all. A name whose suffix disagrees with the bytes (a PNG
served for x.jpg) is refused as `extension_mismatch`, or renamed with fix_extensions (cautious-robot's
choices). A file found from an earlier run is kept only if it is the one the log recorded (same sha256),
so a file swapped since is fetched again; with `resize`, a downsized copy goes to OUTPUT_downsized/.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from taxonstream.core.errors import Failed
from taxonstream.fetching.engine import Result
from taxonstream.fetching.validate import inspect_image
from taxonstream.integrity.checksums import Algorithm, ChecksumError
from taxonstream.v1.messages_pb2 import SourceRecord

EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "image/tiff": ".tif",
    "image/bmp": ".bmp",
    "image/jp2": ".jp2",
}
# Suffixes that agree with each type (the first is the one fix_extensions renames to).
SUFFIXES_BY_MIME = {
    "image/jpeg": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "image/png": (".png",),
    "image/gif": (".gif",),
    "image/webp": (".webp",),
    "image/tiff": (".tif", ".tiff"),
    "image/bmp": (".bmp",),
    "image/jp2": (".jp2", ".j2k", ".jpf"),
}
KNOWN_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".tif", ".tiff", ".bmp", ".jp2", ".j2k"}
DIGEST_BY_LENGTH = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}


@dataclass(frozen=True)
class Target:
    """Where one row's image goes, and what it must hash to."""

    row: int
    url: str
    folder: Path
    name: str  # without a suffix when the file's type decides it
    decided_suffix: bool
    expected: str
    metadata: dict[str, str] = field(default_factory=dict)

    def path(self, mime: str = "") -> Path:
        return self.folder / (self.name if self.decided_suffix else self.name + EXTENSIONS.get(mime, ".img"))


def safe_parts(value: str, what: str, nested: bool) -> list[str]:
    """Path components from an input column, refusing anything that could leave the output folder."""
    parts = [p for p in value.replace("\\", "/").split("/")] if nested else [value]
    if not value or any(
        p in ("", ".", "..") or p.startswith(".") or "\x00" in p or len(p.encode()) > 255 for p in parts
    ):
        raise Failed("bad_name", f"{what} {value!r} is not a safe file name")
    if not nested and "/" in value.replace("\\", "/"):
        raise Failed("bad_name", f"{what} {value!r} contains a path separator")
    return parts


def choose_algorithm(first: SourceRecord | None, algo: str, checksum_col: str | None) -> str:
    """`algo`, else what the first expected checksum's length says, else sha256.

    sha256 rather than sum-buddy's md5 by default: every image's sha256 is computed anyway (it is the
    content address). `--checksum-algo md5` gives sum-buddy's default. Raises ValueError (an InputError
    for the CLI) for an algorithm sum-buddy would not accept.
    """
    algo = algo.lower()
    if not algo and checksum_col and first is not None:
        value = first.metadata.get(checksum_col, "").strip()
        algo = DIGEST_BY_LENGTH.get(len(value), "md5") if value else ""
    algo = algo or "sha256"
    try:
        Algorithm.parse(algo)
    except ChecksumError as error:
        from taxonstream.fetching.inputs import InputError

        raise InputError(f"--checksum-algo: {error}") from None
    return algo


def downsized_path(path: Path, output: Path) -> Path:
    return output.parent / f"{output.name}_downsized" / path.relative_to(output)


def downsize(path: Path, output: Path, size: int, mode: str) -> None:
    """A copy of `path` at `size` px (square: N x N as cautious-robot; shorter: the shorter side N, never up)."""
    from PIL import Image

    target = downsized_path(path, output)
    if target.is_file():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(path) as image:
        if mode == "square":
            small = image.resize((size, size))
        else:
            scale = size / min(image.size)
            small = (
                image.copy() if scale >= 1 else image.resize((round(image.width * scale), round(image.height * scale)))
            )
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
        small.save(temp, format=image.format)
    os.replace(temp, target)


@dataclass(frozen=True)
class Storer:
    """The engine's store callback: verify the expected checksum, then write the file atomically.

    Picklable, so that each worker process of a multi-process run writes its own files.
    """

    tmp: Path
    algo: str
    fix_extensions: bool = False
    resize: int = 0
    resize_mode: str = "square"
    output: Path | None = None

    def __call__(self, result: Result) -> dict:
        target: Target = result.task.payload
        data = result.data or b""
        checksum = result.sha256 if self.algo == "sha256" else hashlib.new(self.algo, data).hexdigest()
        if target.expected and checksum != target.expected:
            raise Failed("checksum_mismatch", f"{self.algo} {checksum} differs from the expected {target.expected}")
        path = checked_suffix(target.path(result.mime), result.mime, self.fix_extensions)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.tmp / f"{uuid.uuid4().hex}.part"
        try:
            with open(temp, "wb") as handle:
                handle.write(data)
            try:
                os.replace(temp, path)  # same file system: the file appears whole or not at all
            except OSError as error:
                if error.errno != errno.EXDEV:
                    raise
                beside = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")  # logs on another disk
                shutil.move(temp, beside)
                os.replace(beside, path)
        except OSError:
            temp.unlink(missing_ok=True)
            raise
        if self.resize and self.output is not None:
            downsize(path, self.output, self.resize, self.resize_mode)
        return {"path": str(path), "checksum": checksum}


def checked_suffix(path: Path, mime: str, fix: bool) -> Path:
    """`path`, or with the suffix the bytes call for (fix), or Failed("extension_mismatch")."""
    agreeing = SUFFIXES_BY_MIME.get(mime)
    suffix = path.suffix.lower()
    if not agreeing or suffix in agreeing or suffix not in KNOWN_SUFFIXES:
        return path
    if fix:
        return path.with_suffix(agreeing[0])
    raise Failed("extension_mismatch", f"the name says {suffix} but the bytes are {mime} (--fix-extensions renames)")


class Targets:
    """Each row's target (refusing unsafe and duplicate names) and the verified file an earlier run left."""

    def __init__(
        self,
        output: Path,
        algo: str,
        name_col: str | None,
        subdir_col: str | None,
        checksum_col: str | None,
        force: bool,
        max_pixels: int,
        fast_decode: bool,
        logs: Path,
        fix_extensions: bool = False,
    ) -> None:
        self.output = output
        self.algo = algo
        self.name_col, self.subdir_col, self.checksum_col = name_col, subdir_col, checksum_col
        self.force = force
        self.max_pixels, self.fast_decode = max_pixels, fast_decode
        self.lock = threading.Lock()
        self.claimed: dict[str, int] = {}
        self.fix_extensions = fix_extensions
        self.previous = previous_successes(logs / "success.jsonl")

    def target(self, row: int, url: str, metadata: dict[str, str]) -> Target:
        folder = self.output
        if self.subdir_col:
            folder = folder.joinpath(*safe_parts(metadata.get(self.subdir_col, ""), "sub-folder", nested=True))
        if self.name_col:
            name = safe_parts(metadata.get(self.name_col, ""), "file name", nested=False)[0]
            decided = Path(name).suffix.lower() in KNOWN_SUFFIXES
        else:
            name, decided = f"{row:08d}", False
        expected = metadata.get(self.checksum_col, "").strip().lower() if self.checksum_col else ""
        key = str(folder / name)
        with self.lock:
            first = self.claimed.setdefault(key, row)
        if first != row:
            raise Failed("duplicate_name", f"row {first} is already saved as {key}")
        return Target(row, url, folder, name, decided, expected, metadata)

    def present(self, target: Target) -> dict | None:
        """A verified file from an earlier run, or None (absent, or not the right one)."""
        if self.force:
            return None
        suffixes = sorted(set(EXTENSIONS.values()) | {".img"})
        if not target.decided_suffix:
            candidates = [target.folder / (target.name + suffix) for suffix in suffixes]
        elif self.fix_extensions:  # an earlier run may have renamed it
            candidates = [target.path()] + [target.path().with_suffix(s) for s in suffixes]
        else:
            candidates = [target.path()]
        before = self.previous.get(target.url)
        for path in candidates:
            if not path.is_file():
                continue
            data = path.read_bytes()
            sha256 = hashlib.sha256(data).hexdigest()
            if target.expected:
                if self.digest(data) != target.expected:
                    continue
            elif before is not None and before.get("path") == str(path):
                if before.get("sha256") != sha256:
                    continue  # not the file the log recorded (swapped or damaged since): fetch it again
            else:
                try:  # no record of this file: accept it only if it is a complete image
                    inspect_image(data, self.max_pixels, fast=self.fast_decode)
                except Failed:
                    continue
            return {"path": str(path), "sha256": sha256, "checksum": self.digest(data), "bytes": len(data)}
        return None

    def digest(self, data: bytes) -> str:
        return hashlib.new(self.algo, data).hexdigest()


def previous_successes(log: Path) -> dict[str, dict]:
    """The last run's stored files by URL: lets a resumed run verify them by hash, not by decoding."""
    found: dict[str, dict] = {}
    if log.is_file():
        with open(log) as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                    found[entry["url"]] = entry
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
    return found
