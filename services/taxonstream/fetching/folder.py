"""A URL list into a folder on one machine, no cluster: the application behind `taxonstream fetch`.

    summary = fetch_into_folder(Path("media.csv"), FolderOptions(output=Path("images")), settings, progress)

Each row ends once — `stored` (fetched, validated, written), `present` (a verified file from an earlier
run, so running the same command again resumes) or `failed` with a reason — and is logged in
OUTPUT/_fetch/ (`folder_logs.py`); where files go and how they are verified is `folder_files.py`. Lists
of MANY_ROWS rows or more are fetched by one process per core, each owning a share of the hosts.
The caller hears of progress through one hook, called as rows end; everything else is in the summary.
"""

from __future__ import annotations

import gzip
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from taxonstream.core.errors import Failed
from taxonstream.fetching.engine import FetchEngine, HostReport, Result, Task
from taxonstream.fetching.folder_files import LOG_DIR, Storer, Targets, choose_algorithm
from taxonstream.fetching.folder_logs import FolderLogs
from taxonstream.fetching.inputs import INPUT_ERROR, InputError, InputStats, read_records
from taxonstream.fetching.settings import FetcherSettings
from taxonstream.fetching.shards import ShardedEngine

# From this many rows a list is fetched by one process per core (below it, starting them costs more).
MANY_ROWS = 2000

# Called as rows end, one call at a time: (rows just ended, counts by state so far — stored, present,
# failed —, rows expected in all or None when unknown).
Progress = Callable[[int, Counter, int | None], None]


@dataclass(frozen=True)
class FolderOptions:
    output: Path
    url_col: str | None = None
    name_col: str | None = None  # default: the row number
    subdir_col: str | None = None
    checksum_col: str | None = None  # the buddy check: files that differ are not kept
    checksum_algo: str = ""  # default: from the first expected value's length, else sha256
    force: bool = False  # download again even when a verified file is present
    processes: int | None = None  # default: one per core for lists of MANY_ROWS+ rows, else 1
    limit: int | None = None  # only the first N rows


@dataclass
class FolderSummary:
    counts: Counter  # rows by state: stored, present, failed
    reasons: Counter  # failed rows by reason
    stats: InputStats
    hosts: list[HostReport]
    seconds: float
    logs: Path
    algo: str
    buddy: tuple[int, int] | None = None  # (verified, missing or mismatched), with a checksum column
    interrupted: bool = False


def expected_rows(listing: Path, limit: int | None = None) -> int | None:
    """Rows in the list, for a progress bar's ETA (None when it would cost too much to know)."""
    try:
        if listing.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            total = pq.ParquetFile(listing).metadata.num_rows
        else:
            opener = gzip.open if listing.suffix.lower() == ".gz" else open
            with opener(listing, "rb") as handle:
                lines = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
            jsonl = any(s.lower() in (".jsonl", ".json") for s in listing.suffixes)
            total = lines if jsonl else max(0, lines - 1)
    except OSError:
        return None
    return min(total, limit) if limit is not None else total


def fetch_into_folder(
    listing: Path, options: FolderOptions, settings: FetcherSettings, progress: Progress | None = None
) -> FolderSummary:
    """Fetch every row of `listing` into `options.output`. Raises InputError for a list or options it cannot use."""
    if not listing.is_file():
        raise InputError(f"{listing}: no such file")
    return _FolderRun(listing, options, settings, progress).run()


class _FolderRun:
    def __init__(self, listing: Path, options: FolderOptions, settings: FetcherSettings, progress: Progress | None):
        self.listing, self.options, self.settings = listing, options, settings
        self.progress = progress
        algo = choose_algorithm(listing, options.checksum_algo, options.checksum_col, options.url_col)
        self.targets = Targets(
            options.output,
            algo,
            options.name_col,
            options.subdir_col,
            options.checksum_col,
            options.force,
            settings.fetch_max_pixels,
            settings.fetch_fast_decode,
        )
        self.logs = FolderLogs(options.output / LOG_DIR, algo)
        self.stats = InputStats()
        self.total: int | None = None
        self._progress_lock = threading.Lock()

    def run(self) -> FolderSummary:
        options, logs = self.options, self.logs
        self.total = total = expected_rows(self.listing, options.limit)
        processes = options.processes or ((os.cpu_count() or 1) if total is None or total >= MANY_ROWS else 1)
        storer = Storer(logs.tmp, logs.algo)
        if processes > 1:
            engine = ShardedEngine(self.settings, processes, store=storer, on_result=self._on_result)
        else:
            engine = FetchEngine(self.settings, store=storer, on_result=self._on_result)
        logs.open()
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
        seconds = time.monotonic() - started
        buddy = logs.buddy_check() if options.checksum_col else None
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
        options, stats = self.options, self.stats
        filtered = 0
        for row, record in enumerate(read_records(self.listing, options.url_col, stats)):
            if options.limit is not None and row >= options.limit:
                return
            skipped = stats.not_images + stats.no_url  # rows the reader left out still move the progress on
            if skipped > filtered:
                self._tell(skipped - filtered, Counter(self.logs.counts))
                filtered = skipped
            metadata = dict(record.metadata)
            if INPUT_ERROR in metadata:
                self._record(row, "", "failed", metadata, reason="bad_row", message=metadata[INPUT_ERROR])
                continue
            if not record.url:
                self._record(row, "", "failed", metadata, reason="bad_url", message="the row has no URL")
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
                self._record(row, record.url, "present", metadata, **found)
                continue
            yield Task(str(row), record.url, target)
