"""A URL list into a folder on one machine, no cluster: the application behind `taxonstream fetch`.

    summary = fetch_into_folder(Path("media.csv"), FolderOptions(output=Path("images")), settings, progress)

Each row ends once — `stored` (fetched, validated, written), `present` (a verified file from an earlier
run, verified against the log's sha256, so running the same command again resumes), `skipped` (not a
still image, no URL) or `failed` with a reason — and is logged, by the line it starts on, in the logs
folder beside the images (OUTPUT_logs/ unless told; `folder_logs.py`), so sum-buddy and `taxonstream
checksum` of OUTPUT see images only; where files go and how they are verified is `folder_files.py`. Lists
of MANY_ROWS rows or more are fetched by one process per core, each owning a share of the hosts.
The caller hears of progress through one hook, called as rows end; everything else is in the summary.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from taxonstream.core.errors import Failed
from taxonstream.fetching.engine import FetchEngine, HostReport, Result, Task
from taxonstream.fetching.folder_files import Storer, Targets, choose_algorithm, downsize
from taxonstream.fetching.folder_logs import FolderLogs
from taxonstream.fetching.inputs import (
    INPUT_ERROR,
    LINE,
    NO_URL,
    InputError,
    InputStats,
    find_column,
    read_records,
)
from taxonstream.fetching.settings import FetcherSettings
from taxonstream.fetching.shards import ShardedEngine
from taxonstream.fetching.tables import TableError, count_lines

# From this many rows a list is fetched by one process per core (below it, starting them costs more).
MANY_ROWS = 2000

# Called as rows end, one call at a time: (rows just ended, counts by state so far — stored, present,
# failed —, rows expected in all or None when unknown).
Progress = Callable[[int, Counter, int | None], None]


@dataclass(frozen=True)
class FolderOptions:
    output: Path
    url_col: str | None = None
    name_col: str | None = None  # default: the row's line number
    subdir_col: str | None = None
    checksum_col: str | None = None  # the buddy check: files that differ are not kept
    checksum_algo: str = ""  # default: from the first expected value's length, else sha256
    force: bool = False  # download again even when a verified file is present
    processes: int | None = None  # default: one per core for lists of MANY_ROWS+ rows, else 1
    limit: int | None = None  # only the first N input rows
    log_dir: Path | None = None  # default: OUTPUT_logs beside OUTPUT
    delimiter: str | None = None  # default: sniffed (tab for .tsv)
    encoding: str | None = None  # default: UTF-8 / UTF-16 by BOM; others only when named
    resize: int = 0  # also write a downsized copy to OUTPUT_downsized (cautious-robot's -l)
    resize_mode: str = "square"  # "square" (N x N, as cautious-robot) or "shorter" (shorter side N)
    fix_extensions: bool = False  # a name whose suffix disagrees with the bytes: rename, not refuse

    @property
    def logs(self) -> Path:
        return self.log_dir or self.output.parent / f"{self.output.name}_logs"


@dataclass
class FolderSummary:
    counts: Counter  # rows by state: stored, present, skipped, failed
    reasons: Counter  # failed rows by reason
    stats: InputStats
    hosts: list[HostReport]
    seconds: float
    logs: Path
    algo: str
    buddy: tuple[int, int] | None = None  # (verified, missing or mismatched), with a checksum column
    interrupted: bool = False


def expected_rows(listing: Path, limit: int | None = None, encoding: str | None = None) -> int | None:
    """Rows in the list, for a progress bar's ETA (None when it would cost too much to know).

    Text is decoded on the way, so an undecodable byte is refused (InputError) before anything is written.
    """
    if listing.is_dir() or listing.suffix.lower() == ".zip":
        return None
    try:
        if listing.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            total = pq.ParquetFile(listing).metadata.num_rows
        else:
            lines = count_lines(listing, encoding)
            jsonl = any(s.lower() in (".jsonl", ".json") for s in listing.suffixes)
            total = lines if jsonl else max(0, lines - 1)
    except TableError as error:
        raise InputError(str(error)) from None
    except Exception:  # noqa: BLE001 - a broken file is reported by the reader, in its own words
        return None
    return min(total, limit) if limit is not None else total


def fetch_into_folder(
    listing: Path, options: FolderOptions, settings: FetcherSettings, progress: Progress | None = None
) -> FolderSummary:
    """Fetch every row of `listing` into `options.output`. Raises InputError for a list or options it cannot use."""
    if not (listing.is_file() or listing.is_dir()):
        raise InputError(f"{listing}: no such file")
    return _FolderRun(listing, options, settings, progress).run()


class _FolderRun:
    def __init__(self, listing: Path, options: FolderOptions, settings: FetcherSettings, progress: Progress | None):
        self.listing, self.options, self.settings = listing, options, settings
        self.progress = progress
        self.stats = InputStats()
        self.total = expected_rows(listing, options.limit, options.encoding)  # first: refuses bad encodings
        self._early_skips: list[tuple[int, str, dict[str, str]]] = []  # skips seen before the logs open
        self._logs_open = False
        self.records = read_records(
            listing,
            options.url_col,
            self.stats,
            delimiter=options.delimiter,
            encoding=options.encoding,
            limit=options.limit,
            on_skip=self._skip,
            skip_empty_urls=True,
        )
        # The first record before anything is written: an empty list or a mistyped column is one line.
        self.first = next(self.records, None)
        columns = self.stats.columns
        name_col, subdir_col, checksum_col = (
            find_column(columns, wanted, option) if wanted else None
            for wanted, option in (
                (options.name_col, "--name-col"),
                (options.subdir_col, "--subdir-col"),
                (options.checksum_col, "--checksum-col"),
            )
        )
        self.checksum_col = checksum_col
        algo = choose_algorithm(self.first, options.checksum_algo, checksum_col)
        self.targets = Targets(
            options.output,
            algo,
            name_col,
            subdir_col,
            checksum_col,
            options.force,
            settings.fetch_max_pixels,
            settings.fetch_fast_decode,
            options.logs,
            options.fix_extensions,
        )
        self.logs = FolderLogs(options.logs, algo, columns, self.stats.url_column, bool(checksum_col))
        self._progress_lock = threading.Lock()

    def _skip(self, line: int, reason: str, row: dict[str, str]) -> None:
        if not self._logs_open:
            self._early_skips.append((line, reason, row))
            return
        self._tell(1, self.logs.skip(line, reason, row))

    def run(self) -> FolderSummary:
        options, logs = self.options, self.logs
        total = self.total
        processes = options.processes or ((os.cpu_count() or 1) if total is None or total >= MANY_ROWS else 1)
        storer = Storer(
            logs.tmp, logs.algo, options.fix_extensions, options.resize, options.resize_mode, options.output
        )
        if processes > 1:
            engine = ShardedEngine(self.settings, processes, store=storer, on_result=self._on_result)
        else:
            engine = FetchEngine(self.settings, store=storer, on_result=self._on_result)
        logs.open()
        self._logs_open = True
        for skipped in self._early_skips:
            self._skip(*skipped)
        started = time.monotonic()
        interrupted = False
        try:
            try:
                summary = engine.run(self._tasks())
            except KeyboardInterrupt:
                interrupted = True
                engine.stop()
                summary = engine.summary
        finally:
            engine.close()
            logs.close()
        logs.write_parquet()
        logs.write_checksums(options.output)
        seconds = time.monotonic() - started
        buddy = logs.buddy_check() if self.checksum_col else None
        return FolderSummary(
            logs.counts, logs.reasons, self.stats, summary.hosts, seconds, logs.logs, logs.algo, buddy, interrupted
        )

    def _record(self, row: int, url: str, state: str, metadata: dict[str, str], **fields: object) -> None:
        counts = self.logs.record(row, url, state, metadata, **fields)
        self._tell(1, counts)

    def _tell(self, ended: int, counts: Counter) -> None:
        if self.progress is not None:
            with self._progress_lock:
                self.progress(ended, counts, self.total)

    def _on_result(self, result: Result) -> None:
        target = result.task.payload
        if result.ok:
            stored = result.stored or {}
            self._record(
                target.row,
                target.url,
                "stored",
                target.metadata,
                path=stored.get("path", ""),
                sha256=result.sha256,
                checksum=stored.get("checksum", ""),
                bytes=result.size,
                mime=result.mime,
                width=result.width,
                height=result.height,
                attempts=result.attempts,
                final_url=result.final_url,
            )
        else:
            self._record(
                target.row,
                target.url,
                "failed",
                target.metadata,
                reason=result.reason,
                message=result.message,
                attempts=result.attempts,
            )

    def _tasks(self) -> Iterator[Task]:
        records = self.records if self.first is None else itertools.chain([self.first], self.records)
        for record in records:
            metadata = dict(record.metadata)
            row = int(metadata.get(LINE, "0"))
            if INPUT_ERROR in metadata:
                self._record(row, "", "failed", metadata, reason="bad_row", message=metadata[INPUT_ERROR])
                continue
            if not record.url:  # skipped by the reader (skip_empty_urls); kept here for safety
                self._tell(1, self.logs.skip(row, NO_URL, metadata))
                continue
            try:
                target = self.targets.target(row, record.url, metadata)
                found = self.targets.present(target)
            except Failed as failure:
                self._record(row, record.url, "failed", metadata, reason=failure.reason, message=failure.message)
                continue
            except OSError as error:
                self._record(row, record.url, "failed", metadata, reason="store_error", message=str(error))
                continue
            if found is not None:
                if self.options.resize:
                    downsize(Path(found["path"]), self.options.output, self.options.resize, self.options.resize_mode)
                self._record(row, record.url, "present", metadata, **found)
                continue
            yield Task(str(row), record.url, target)
