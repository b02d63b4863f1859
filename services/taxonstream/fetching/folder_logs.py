"""The logs of `fetch_into_folder`, in OUTPUT/_fetch/: one line per row, written under one lock.

success.jsonl and errors.jsonl (with each row's metadata), report.csv and report.parquet (every row),
checksums.csv in sum-buddy's layout (filepath,filename,<algorithm>) and, for the buddy check, missing.csv.
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

    def __init__(self, logs: Path, algo: str) -> None:
        self.logs = logs
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
        self.checksums = csv.writer(self._log("checksums.csv"))
        self.checksums.writerow(["filepath", "filename", self.algo])  # sum-buddy's layout

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
            else:
                self.success.write(json.dumps({**entry, "metadata": metadata}) + "\n")
                path = Path(str(fields["path"]))
                self.checksums.writerow([str(path), path.name, fields.get("checksum", "")])
            self.report.writerow({k: entry.get(k, "") for k in REPORT_FIELDS})
            return Counter(self.counts)

    def buddy_check(self) -> tuple[int, int]:
        """Rows with an expected checksum and no verified file, to missing.csv. Returns (verified, missing)."""
        verified = missing = 0
        with (
            open(self.logs / "report.csv", newline="") as handle,
            open(self.logs / "missing.csv", "w", newline="") as out,
        ):
            writer = csv.writer(out)
            writer.writerow(["row", "url", "state", "reason", "message"])
            for entry in csv.DictReader(handle):
                if entry["state"] in ("stored", "present"):
                    verified += 1
                else:
                    missing += 1
                    writer.writerow([entry["row"], entry["url"], entry["state"], entry["reason"], entry["message"]])
        return verified, missing

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
