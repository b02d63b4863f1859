"""The logs of `fetch_into_folder`, in their own folder beside the images: one line per input row, written
under one lock.

success.jsonl and errors.jsonl (with each row's metadata), report.csv and report.parquet (every row, by the
line it starts on), skipped.csv (rows left out, with their reason and columns), checksums.csv (the images
folder as sum-buddy writes it: the same writer as `taxonstream checksum`, byte for byte) and, for the buddy
check, missing.csv (the source row's columns, then why it is missing).
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import threading
from collections import Counter
from pathlib import Path
from typing import IO

from taxonstream.integrity.checksums import ChecksumError
from taxonstream.integrity.sumbuddy import checksum_to_csv

REPORT_FIELDS = [
    "row",
    "url",
    "state",
    "reason",
    "message",
    "path",
    "sha256",
    "checksum",
    "bytes",
    "mime",
    "width",
    "height",
    "attempts",
    "final_url",
]


class FolderLogs:
    """Open for the whole run; `record` is called from the engine's threads and the input reader alike."""

    def __init__(
        self, logs: Path, algo: str, columns: list[str] | None = None, url_column: str = "url", buddy: bool = False
    ) -> None:
        self.logs = logs
        self.columns = [c for c in columns or [] if c != url_column]
        self.url_column = url_column
        self.buddy = buddy
        self.tmp = logs / "tmp"
        self.algo = algo
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.reasons: Counter = Counter()
        self.files = contextlib.ExitStack()

    def open(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)  # partial files of an interrupted run
        self.tmp.mkdir()
        self.success = self._log("success.jsonl")
        self.errors = self._log("errors.jsonl")
        self.report = csv.DictWriter(self._log("report.csv"), fieldnames=REPORT_FIELDS)
        self.report.writeheader()
        self.skipped = csv.DictWriter(
            self._log("skipped.csv"),
            fieldnames=["line", "reason", self.url_column, *self.columns],
            extrasaction="ignore",
        )
        self.skipped.writeheader()
        if self.buddy:
            fields = [self.url_column, *self.columns, "line", "state", "reason", "message"]
            self.missing = csv.DictWriter(self._log("missing.csv"), fieldnames=fields, extrasaction="ignore")
            self.missing.writeheader()

    def _log(self, name: str) -> IO[str]:
        # Open for the whole run, closed by close() (hence no `with` here).
        return self.files.enter_context(open(self.logs / name, "w", newline=""))  # noqa: SIM115

    def close(self) -> None:
        self.files.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def record(self, row: int, url: str, state: str, metadata: dict[str, str], **fields: object) -> Counter:
        """Log one row's end; returns a copy of the counts by state so far (for progress)."""
        entry = {"row": row, "url": url, "state": state, **fields}
        with self.lock:
            self.counts[state] += 1
            if state == "failed":
                self.reasons[str(fields.get("reason", ""))] += 1
                self.errors.write(json.dumps({**entry, "metadata": metadata}) + "\n")
                self._missing(row, url, state, metadata, fields)
            else:
                self.success.write(json.dumps({**entry, "metadata": metadata}) + "\n")
            self.report.writerow({k: entry.get(k, "") for k in REPORT_FIELDS})
            return Counter(self.counts)

    def skip(self, line: int, reason: str, row: dict[str, str]) -> Counter:
        """Log a row the reader left out (not a still image, no URL); returns the counts so far."""
        with self.lock:
            self.counts["skipped"] += 1
            self.skipped.writerow({**row, "line": line, "reason": reason})
            self.report.writerow({"row": line, "url": "", "state": "skipped", "reason": reason})
            self._missing(line, "", "skipped", row, {"reason": reason})
            return Counter(self.counts)

    def _missing(self, line: int, url: str, state: str, row: dict[str, str], fields: dict[str, object]) -> None:
        if self.buddy:
            extra = {"line": line, "state": state, "reason": fields.get("reason", ""), "message": fields.get("message")}
            self.missing.writerow({**row, self.url_column: url or row.get(self.url_column, ""), **extra})

    def buddy_check(self) -> tuple[int, int]:
        """(verified, missing or mismatched) rows of a list with expected checksums (missing.csv lists the latter)."""
        verified = self.counts["stored"] + self.counts["present"]
        return verified, self.counts["failed"] + self.counts["skipped"]

    def write_checksums(self, images: Path) -> None:
        """checksums.csv: the images folder exactly as `sum-buddy IMAGES -a ALGO` (hidden files skipped) writes it."""
        target = self.logs / "checksums.csv"
        try:
            checksum_to_csv(str(images), str(target), algorithm=self.algo, backend="thread")
        except ChecksumError:  # nothing stored (sum-buddy refuses an empty folder): the header alone
            with open(target, "w", newline="") as handle:
                csv.writer(handle).writerow(["filepath", "filename", self.algo])

    def write_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        numbers = {"row", "bytes", "width", "height", "attempts"}
        types = {name: pa.int64() if name in numbers else pa.string() for name in REPORT_FIELDS}
        table = pacsv.read_csv(
            self.logs / "report.csv",
            convert_options=pacsv.ConvertOptions(
                column_types=types, strings_can_be_null=False, quoted_strings_can_be_null=False
            ),
        )
        pq.write_table(table, self.logs / "report.parquet")
