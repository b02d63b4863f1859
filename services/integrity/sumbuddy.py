"""sum-buddy's behaviour, reimplemented on every core: which files, in which order, and the exact CSV.

What sum-buddy (Imageomics) does, learned from its source and matched here byte for byte:

- A directory is walked with `os.walk` (top-down, the file system's listing order, no sorting). Paths are
  `os.path.normpath(os.path.join(root, name))`, so relative input gives relative paths.
- Filtering: by default the gitignore pattern `.*` (hidden files and everything in hidden folders);
  `-H` no patterns at all; `-i FILE` that file's lines as gitignore patterns *instead* (hidden files are then
  only skipped if the file says so). Patterns match the path relative to the input directory.
- ZIP files (name ends in .zip and the bytes are a ZIP) are, by default, hashed as a file and then each
  non-directory member in central-directory order, as `<zip path>/<member name>`; ignore rules do not apply
  inside an archive. Regular files come first, then each archive followed by its members.
- A single file as input is hashed as itself (no archive dive, no filtering).
- The output file, when inside the walked tree, is left out.
- CSV: `csv.writer` defaults (comma, minimal quoting, CRLF line ends); header `filepath,filename,<algorithm>`.
"""

from __future__ import annotations

import csv
import os
import sys
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TextIO

import pathspec
from pathspec.patterns.gitignore.spec import GitIgnoreSpecPattern

from taxonstream.integrity.checksums import Algorithm, ChecksumError, Item, WorkerPool, digest_items


class TreeError(ChecksumError):
    """The input has nothing to hash (sum-buddy's messages, so scripts that grep them keep working)."""


def ignore_spec(ignore_file: str | None = None, include_hidden: bool = False) -> pathspec.PathSpec | None:
    """The patterns that exclude files, or None to keep everything (sum-buddy's precedence)."""
    if ignore_file:
        with open(ignore_file) as handle:
            patterns = handle.read().splitlines()
    elif include_hidden:
        patterns = []
    else:
        patterns = [".*"]
    # The same pattern class sum-buddy's "gitwildmatch" name resolves to, without its deprecation warning.
    return pathspec.PathSpec.from_lines(GitIgnoreSpecPattern, patterns) if patterns else None


def is_zip(path: str) -> bool:
    return path.lower().endswith(".zip") and zipfile.is_zipfile(path)


def gather(
    directory: str, ignore_file: str | None = None, include_hidden: bool = False, archive_dive: bool = True
) -> tuple[list[str], list[str]]:
    """(regular files, archives to descend into) under `directory`, in sum-buddy's order."""
    if not os.path.isdir(directory):
        raise TreeError(f"The input path '{directory}' is not a directory. \nPlease provide a directory with files.")
    spec = ignore_spec(ignore_file, include_hidden)
    root = os.path.abspath(directory)
    regular: list[str] = []
    archives: list[str] = []
    any_files = False
    for folder, _dirs, files in os.walk(directory):
        any_files = any_files or bool(files)
        for name in files:
            path = os.path.normpath(os.path.join(folder, name))
            if spec is not None and spec.match_file(os.path.relpath(path, start=root)):
                continue
            (archives if archive_dive and is_zip(path) else regular).append(path)
    if not any_files:
        raise TreeError(
            f"The directory {directory} and subdirectories (if any) contain no files. \n"
            "Please provide a directory with files."
        )
    if not (regular or archives):
        raise TreeError(
            f"The directory {directory} contains files, but all are filtered out. \n"
            f"Check patterns in your {ignore_file} file and/or hidden files settings."
        )
    return regular, archives


@dataclass(frozen=True)
class Entry:
    """One output row before hashing: what sum-buddy prints as filepath and filename, and what to read."""

    filepath: str
    filename: str
    item: Item
    size: int


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0  # the worker reports why it cannot be read


def plan(
    input_path: str,
    output_path: str | None = None,
    ignore_file: str | None = None,
    include_hidden: bool = False,
    archive_dive: bool = True,
) -> list[Entry]:
    """Every row sum-buddy would print for these options, in its order, without hashing anything yet."""
    if os.path.isfile(input_path):
        regular, archives = [os.path.normpath(input_path)], []
    else:
        regular, archives = gather(input_path, ignore_file, include_hidden, archive_dive)
    if output_path:
        skip = os.path.abspath(output_path)
        regular = [p for p in regular if os.path.abspath(p) != skip]
        archives = [p for p in archives if os.path.abspath(p) != skip]
    entries = [Entry(p, os.path.basename(p), Item(p), _size(p)) for p in regular]
    for archive in archives:
        entries.append(Entry(archive, os.path.basename(archive), Item(archive), _size(archive)))
        try:
            with zipfile.ZipFile(archive) as handle:
                members = [(m.filename, m.file_size) for m in handle.infolist() if not m.filename.endswith("/")]
        except (OSError, zipfile.BadZipFile) as error:
            raise ChecksumError(f"{archive}: {error}") from error
        for name, size in members:
            entries.append(Entry(f"{archive}/{name}", os.path.basename(name), Item(archive, name), size))
    return entries


def checksum_entries(
    entries: Sequence[Entry], algorithm: Algorithm, pool: WorkerPool | None = None
) -> Iterator[tuple[Entry, str]]:
    """(entry, hex digest) for each entry in order; raises ChecksumError at the first unreadable one."""
    sizes = [e.size for e in entries]
    digests = digest_items([e.item for e in entries], [algorithm], sizes, pool)
    for entry, result in zip(entries, digests, strict=True):
        if result.error:
            raise ChecksumError(f"cannot read {result.error}")
        yield entry, result.digests[algorithm.name]


def write_csv(rows: Iterator[tuple[Entry, str]], stream: TextIO, algorithm_name: str) -> int:
    """sum-buddy's CSV. `stream` must be opened with newline='' (or be sys.stdout) for its CRLF rows."""
    writer = csv.writer(stream)
    writer.writerow(["filepath", "filename", algorithm_name])
    count = 0
    for entry, digest in rows:
        writer.writerow([entry.filepath, entry.filename, digest])
        count += 1
    return count


def write_output(rows: Iterator[tuple[Entry, str]], output_path: str | None, algorithm_name: str) -> int:
    """sum-buddy's CSV to `output_path` (stdout when None), or the same three columns as Parquet for .parquet.

    A file is written beside its final name and renamed at the end, so a failure leaves no half manifest.
    """
    if output_path is None:
        return write_csv(rows, sys.stdout, algorithm_name)
    partial = f"{output_path}.partial-{os.getpid()}"
    try:
        if output_path.lower().endswith(".parquet"):
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = [{"filepath": e.filepath, "filename": e.filename, algorithm_name: d} for e, d in rows]
            schema = pa.schema([("filepath", pa.string()), ("filename", pa.string()), (algorithm_name, pa.string())])
            pq.write_table(pa.Table.from_pylist(table, schema=schema), partial)
            count = len(table)
        else:
            with open(partial, "w", newline="") as handle:
                count = write_csv(rows, handle, algorithm_name)
        os.replace(partial, output_path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return count


def checksum_to_csv(
    input_path: str,
    output_path: str | None = None,
    ignore_file: str | None = None,
    include_hidden: bool = False,
    algorithm: str = "md5",
    length: int | None = None,
    archive_dive: bool = True,
    workers: int | None = None,
) -> int:
    """Library form of `taxonstream checksum`: the CSV to `output_path` (else stdout); returns rows written."""
    chosen = Algorithm.parse(algorithm, length)
    entries = plan(input_path, output_path, ignore_file, include_hidden, archive_dive)
    with WorkerPool(workers) as pool:
        return write_output(checksum_entries(entries, chosen, pool), output_path, algorithm)
