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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TextIO

import pathspec
from pathspec.patterns.gitignore.spec import GitIgnoreSpecPattern

from taxonstream.integrity.checksums import Algorithm, Backend, ChecksumError, Item, WorkerPool, digest_entries


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


def _walk(
    directory: str, ignore_file: str | None, include_hidden: bool, archive_dive: bool, archives: list[str]
) -> Iterator[str]:
    """Regular files under `directory` in sum-buddy's order, as they are found; archives are collected instead.

    Raises sum-buddy's errors when there was nothing to include (only ever before the first file is yielded).
    """
    if not os.path.isdir(directory):
        raise TreeError(f"The input path '{directory}' is not a directory. \nPlease provide a directory with files.")
    spec = ignore_spec(ignore_file, include_hidden)
    any_files = included = False
    for folder, _dirs, files in os.walk(directory):
        any_files = any_files or bool(files)
        # sum-buddy matches os.path.relpath(path, abspath(directory)) per file; for files found under the
        # directory that is the folder's relative path (computed once per folder) joined with the name.
        relative = os.path.relpath(folder, directory)
        for name in files:
            path = os.path.normpath(os.path.join(folder, name))
            if spec is not None and spec.match_file(name if relative == "." else os.path.join(relative, name)):
                continue
            included = True
            if archive_dive and is_zip(path):
                archives.append(path)
            else:
                yield path
    if not any_files:
        raise TreeError(
            f"The directory {directory} and subdirectories (if any) contain no files. \n"
            "Please provide a directory with files."
        )
    if not included:
        raise TreeError(
            f"The directory {directory} contains files, but all are filtered out. \n"
            f"Check patterns in your {ignore_file} file and/or hidden files settings."
        )


def gather(
    directory: str, ignore_file: str | None = None, include_hidden: bool = False, archive_dive: bool = True
) -> tuple[list[str], list[str]]:
    """(regular files, archives to descend into) under `directory`, in sum-buddy's order."""
    archives: list[str] = []
    regular = list(_walk(directory, ignore_file, include_hidden, archive_dive, archives))
    return regular, archives


def iter_plan(
    input_path: str,
    output_path: str | None = None,
    ignore_file: str | None = None,
    include_hidden: bool = False,
    archive_dive: bool = True,
) -> Iterator[Entry]:
    """Every row sum-buddy would print for these options, in its order, streamed while the folder is walked
    (so hashing can start at once); nothing is hashed here."""
    archives: list[str] = []
    if os.path.isfile(input_path):
        regular: Iterable[str] = [os.path.normpath(input_path)]
    else:
        regular = _walk(input_path, ignore_file, include_hidden, archive_dive, archives)
    # The output file is left out, and so is the file it is written to first (while this walk goes on).
    skip = {os.path.abspath(p) for p in (output_path, partial_path(output_path)) if p}
    skip_names = {os.path.basename(p) for p in skip}

    def kept(path: str) -> bool:
        return os.path.basename(path) not in skip_names or os.path.abspath(path) not in skip

    for path in regular:
        if kept(path):
            yield Entry(path, os.path.basename(path), Item(path), _size(path))
    for archive in archives:
        if not kept(archive):
            continue
        yield Entry(archive, os.path.basename(archive), Item(archive), _size(archive))
        try:
            with zipfile.ZipFile(archive) as handle:
                members = [(m.filename, m.file_size) for m in handle.infolist() if not m.filename.endswith("/")]
        except (OSError, zipfile.BadZipFile) as error:
            raise ChecksumError(f"{archive}: {error}") from error
        for name, size in members:
            yield Entry(f"{archive}/{name}", os.path.basename(name), Item(archive, name), size)


def plan(
    input_path: str,
    output_path: str | None = None,
    ignore_file: str | None = None,
    include_hidden: bool = False,
    archive_dive: bool = True,
) -> list[Entry]:
    """`iter_plan` as a list."""
    return list(iter_plan(input_path, output_path, ignore_file, include_hidden, archive_dive))


def checksum_entries(
    entries: Iterable[Entry], algorithm: Algorithm, pool: WorkerPool | None = None
) -> Iterator[tuple[Entry, str]]:
    """(entry, hex digest) for each entry in order; raises ChecksumError at the first unreadable one."""
    for entry, result in digest_entries(entries, [algorithm], pool):
        if result.error:
            raise ChecksumError(f"cannot read {result.error}")
        yield entry, result.digests[algorithm.name]


def write_csv(rows: Iterable[tuple[Entry, str]], stream: TextIO, algorithm_name: str) -> int:
    """sum-buddy's CSV. `stream` must be opened with newline='' (or be sys.stdout) for its CRLF rows.

    The header goes out with the first row, so an error found before any row (an empty folder) writes nothing,
    as with sum-buddy; no rows at all and no error (only the output file was there) gives the header alone.
    """
    rows = iter(rows)
    first = next(rows, None)
    writer = csv.writer(stream)
    writer.writerow(["filepath", "filename", algorithm_name])
    if first is None:
        return 0
    writer.writerow([first[0].filepath, first[0].filename, first[1]])
    count = 1
    for entry, digest in rows:
        writer.writerow([entry.filepath, entry.filename, digest])
        count += 1
    return count


def partial_path(output_path: str | None) -> str | None:
    """Where `write_output` writes before renaming into place."""
    return f"{output_path}.partial-{os.getpid()}" if output_path else None


def write_output(rows: Iterable[tuple[Entry, str]], output_path: str | None, algorithm_name: str) -> int:
    """sum-buddy's CSV to `output_path` (stdout when None), or the same three columns as Parquet for .parquet.

    A file is written beside its final name and renamed at the end, so a failure leaves no half manifest.
    """
    if output_path is None:
        return write_csv(rows, sys.stdout, algorithm_name)
    partial = partial_path(output_path) or ""
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
    backend: Backend = "process",
) -> int:
    """Library form of `taxonstream checksum`: the CSV to `output_path` (else stdout); returns rows written."""
    chosen = Algorithm.parse(algorithm, length)
    entries = iter_plan(input_path, output_path, ignore_file, include_hidden, archive_dive)
    with WorkerPool(workers, backend) as pool:
        return write_output(checksum_entries(entries, chosen, pool), output_path, algorithm)
