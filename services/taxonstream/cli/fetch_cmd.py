"""taxonstream fetch — the polite, safe fetch engine on one machine, no cluster: a URL list into a folder.

  taxonstream fetch media.csv --output images/ --name-col filename --checksum-col md5

Files are named by --name-col (else by row number), optionally in folders by --subdir-col, and appear only
complete and validated: each is written to a temporary name and renamed into place. Running the same
command again skips files already present and verified (by the expected checksum, the previous run's
sha256, or a full decode), so an interrupted or partly failed run is resumed by running it again.
Logs go to OUTPUT/_fetch/: success.jsonl, errors.jsonl, report.csv and report.parquet (every row),
checksums.csv (sum-buddy's filepath,filename,<algorithm>) and, with --checksum-col, missing.csv (the
buddy check: rows whose expected file is absent or did not match).
Exit status: 0 when every record is stored or present, 1 when some failed (see the report), 2 on bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import hashlib
import json
import os
import shutil
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from taxonstream.core.errors import Failed
from taxonstream.fetching.engine import FetchEngine, Result, Task
from taxonstream.fetching.inputs import INPUT_ERROR, URL_COLUMNS, InputError, InputStats, read_records
from taxonstream.fetching.settings import FetcherSettings
from taxonstream.fetching.shards import ShardedEngine
from taxonstream.fetching.validate import inspect_image

LOG_DIR = "_fetch"
EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "image/tiff": ".tif",
    "image/bmp": ".bmp",
    "image/jp2": ".jp2",
}
KNOWN_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".tif", ".tiff", ".bmp", ".jp2", ".j2k"}
# From this many rows a list is fetched by one process per core (below it, starting them costs more).
MANY_ROWS = 2000
DIGEST_BY_LENGTH = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}
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


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "fetch",
        help="download a URL list into a folder on this machine (no cluster): polite, safe, resumable",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", help="CSV, TSV, JSONL or Parquet (optionally .gz); iDigBio and GBIF columns recognised")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="folder for the images (created)")
    p.add_argument("--url-col", help=f"column holding the URL (default: the first of {', '.join(URL_COLUMNS)})")
    p.add_argument(
        "--name-col",
        help="column naming each file (default: the row number); its type adds a suffix when the name has none",
    )
    p.add_argument("--subdir-col", help="column naming a sub-folder for each file")
    p.add_argument(
        "--checksum-col", help="column with each file's expected checksum: files that differ are not kept (buddy check)"
    )
    p.add_argument(
        "--checksum-algo",
        help="algorithm of --checksum-col and checksums.csv (default: from the "
        "first expected value's length, else sha256 — the digest the store already computes)",
    )
    p.add_argument(
        "--allow-network",
        action="append",
        default=[],
        metavar="CIDR",
        help="also fetch from this private/loopback network (repeatable), e.g. 127.0.0.0/8",
    )
    p.add_argument("--force", action="store_true", help="download again even when a verified file is present")
    p.add_argument("--connections", type=int, help="connections in flight overall (default 64)")
    p.add_argument("--per-host", type=int, help="connections in flight to one host (default 8)")
    p.add_argument(
        "--processes",
        type=int,
        help="worker processes, each owning a share of the hosts (default: "
        f"one per core for lists of {MANY_ROWS}+ rows, else 1)",
    )
    p.add_argument("--initial-rate", type=float, help="requests/s an unknown host starts at (default 4; it adapts)")
    p.add_argument("--max-rate", type=float, help="requests/s no host is ever sent more than (default 500)")
    p.add_argument("--attempts", type=int, help="attempts after timeouts and server errors (default 3)")
    p.add_argument("--timeout", type=float, help="seconds one download may take in all (default 60)")
    p.add_argument("--max-bytes", type=int, help="largest body accepted (default 50 MiB)")
    p.add_argument("--min-size", metavar="WxH", help="smallest image accepted, e.g. 256x256")
    p.add_argument("--robots", action="store_true", help="fetch and obey each host's robots.txt")
    p.add_argument("--user-agent", help="User-Agent to send (default: taxonstream/… with the project's address)")
    p.add_argument("--contact", help="an e-mail or URL added to the User-Agent so providers can reach you")
    p.add_argument("--limit", type=int, help="only the first N rows")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def settings_from(args: argparse.Namespace) -> FetcherSettings:
    overrides: dict[str, object] = {}
    if args.allow_network:
        overrides["fetch_allow_networks"] = ",".join(args.allow_network)
    for option, name in (
        ("connections", "fetch_max_connections"),
        ("per_host", "fetch_max_connections_per_host"),
        ("initial_rate", "fetch_initial_rate"),
        ("max_rate", "fetch_max_rate"),
        ("attempts", "fetch_attempts"),
        ("timeout", "fetch_total_timeout"),
        ("max_bytes", "fetch_max_bytes"),
        ("user_agent", "fetch_user_agent"),
        ("contact", "fetch_contact"),
    ):
        if getattr(args, option) is not None:
            overrides[name] = getattr(args, option)
    if args.robots:
        overrides["fetch_robots_txt"] = True
    if args.min_size:
        try:
            width, height = (int(v) for v in args.min_size.lower().split("x"))
        except ValueError as error:
            raise InputError(f"--min-size {args.min_size!r}: expected WIDTHxHEIGHT, e.g. 256x256") from error
        overrides["fetch_min_width"], overrides["fetch_min_height"] = width, height
    try:
        return FetcherSettings(**overrides)
    except ValueError as error:
        raise InputError(f"bad option: {error}") from error


def count_rows(path: Path) -> int | None:
    """Rows in the list, for the progress bar's ETA (None when it would cost too much to know)."""
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        opener = gzip.open if path.suffix.lower() == ".gz" else open
        with opener(path, "rb") as handle:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
        jsonl = any(s.lower() in (".jsonl", ".json") for s in path.suffixes)
        return lines if jsonl else max(0, lines - 1)
    except OSError:
        return None


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


@dataclass(frozen=True)
class Storer:
    """The engine's store callback: verify the expected checksum, then write the file atomically.

    Picklable, so that each worker process of a multi-process run writes its own files.
    """

    tmp: Path
    algo: str

    def __call__(self, result: Result) -> dict:
        target: Target = result.task.payload
        data = result.data or b""
        checksum = result.sha256 if self.algo == "sha256" else hashlib.new(self.algo, data).hexdigest()
        if target.expected and checksum != target.expected:
            raise Failed("checksum_mismatch", f"{self.algo} {checksum} differs from the expected {target.expected}")
        path = target.path(result.mime)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.tmp / f"{uuid.uuid4().hex}.part"
        try:
            with open(temp, "wb") as handle:
                handle.write(data)
            os.replace(temp, path)  # same file system: the file appears whole or not at all
        except OSError:
            temp.unlink(missing_ok=True)
            raise
        return {"path": str(path), "checksum": checksum}


class Run:
    """One `taxonstream fetch`: targets, the store callback, and the logs (written under one lock)."""

    def __init__(self, args: argparse.Namespace, settings: FetcherSettings) -> None:
        self.args = args
        self.settings = settings
        self.output = Path(args.output)
        self.logs = self.output / LOG_DIR
        self.tmp = self.logs / "tmp"
        self.algo = args.checksum_algo.lower() if args.checksum_algo else ""
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.reasons: Counter = Counter()
        self.claimed: dict[str, int] = {}
        self.previous = self._previous_successes()
        self.bar: tqdm | None = None

    # -- files ------------------------------------------------------------------------------------
    def open(self) -> None:
        self.output.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)  # partial files of an interrupted run
        self.tmp.mkdir()
        self.files = contextlib.ExitStack()
        self.success = self._log("success.jsonl")
        self.errors = self._log("errors.jsonl")
        self.report = csv.DictWriter(self._log("report.csv"), fieldnames=REPORT_FIELDS)
        self.report.writeheader()
        self.checksums = csv.writer(self._log("checksums.csv"))
        self.checksums.writerow(["filepath", "filename", self.algo])  # sum-buddy's layout

    def _log(self, name: str):
        # Open for the whole run, closed by close() (hence no `with` here).
        return self.files.enter_context(open(self.logs / name, "w", newline=""))  # noqa: SIM115

    def close(self) -> None:
        self.files.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _previous_successes(self) -> dict[str, dict]:
        """The last run's stored files by URL: lets a resumed run verify them by hash, not by decoding."""
        log = Path(self.args.output) / LOG_DIR / "success.jsonl"
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

    # -- targets ----------------------------------------------------------------------------------
    def target(self, row: int, url: str, metadata: dict[str, str]) -> Target:
        args = self.args
        folder = self.output
        if args.subdir_col:
            folder = folder.joinpath(*safe_parts(metadata.get(args.subdir_col, ""), "sub-folder", nested=True))
        if args.name_col:
            name = safe_parts(metadata.get(args.name_col, ""), "file name", nested=False)[0]
            decided = Path(name).suffix.lower() in KNOWN_SUFFIXES
        else:
            name, decided = f"{row:08d}", False
        if folder == self.output and name == LOG_DIR:
            raise Failed("bad_name", f"file name {name!r} is reserved for the logs")
        expected = metadata.get(args.checksum_col, "").strip().lower() if args.checksum_col else ""
        key = str(folder / name)
        with self.lock:
            first = self.claimed.setdefault(key, row)
        if first != row:
            raise Failed("duplicate_name", f"row {first} is already saved as {key}")
        return Target(row, url, folder, name, decided, expected, metadata)

    def present(self, target: Target) -> dict | None:
        """A verified file from an earlier run, or None (absent, or not the right one)."""
        if self.args.force:
            return None
        candidates = (
            [target.path()]
            if target.decided_suffix
            else [target.folder / (target.name + suffix) for suffix in sorted(set(EXTENSIONS.values()) | {".img"})]
        )
        before = self.previous.get(target.url)
        for path in candidates:
            if not path.is_file():
                continue
            data = path.read_bytes()
            sha256 = hashlib.sha256(data).hexdigest()
            if target.expected:
                if self.digest(data) != target.expected:
                    continue
            elif before is None or before.get("sha256") != sha256 or before.get("path") != str(path):
                try:  # no record of this file: accept it only if it is a complete image
                    inspect_image(data, self.settings.fetch_max_pixels, fast=self.settings.fetch_fast_decode)
                except Failed:
                    continue
            return {"path": str(path), "sha256": sha256, "checksum": self.digest(data), "bytes": len(data)}
        return None

    def digest(self, data: bytes) -> str:
        return hashlib.new(self.algo, data).hexdigest()

    def choose_algorithm(self, path: Path) -> None:
        """--checksum-algo, else what the first expected checksum's length says, else sha256.

        sha256 rather than sum-buddy's md5 by default: every image's sha256 is computed anyway (it is the
        content address), so checksums.csv costs nothing more. `--checksum-algo md5` matches sum-buddy.
        """
        if not self.algo and self.args.checksum_col:
            for record in read_records(path, self.args.url_col):
                value = record.metadata.get(self.args.checksum_col, "").strip()
                if value:
                    self.algo = DIGEST_BY_LENGTH.get(len(value), "md5")
                    break
        self.algo = self.algo or "sha256"
        try:
            hashlib.new(self.algo)
        except ValueError as error:
            raise InputError(f"unknown checksum algorithm {self.algo!r}") from error

    # -- outcomes ---------------------------------------------------------------------------------
    def record(self, row: int, url: str, state: str, metadata: dict[str, str], **fields: object) -> None:
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
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix(
                    stored=self.counts["stored"],
                    present=self.counts["present"],
                    failed=self.counts["failed"],
                    refresh=False,
                )

    def on_result(self, result: Result) -> None:
        target: Target = result.task.payload
        if result.ok:
            stored = result.stored or {}
            self.record(
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
            self.record(
                target.row,
                target.url,
                "failed",
                target.metadata,
                reason=result.reason,
                message=result.message,
                attempts=result.attempts,
            )

    def tasks(self, path: Path, stats: InputStats) -> Iterator[Task]:
        filtered = 0
        for row, record in enumerate(read_records(path, self.args.url_col, stats)):
            if self.args.limit is not None and row >= self.args.limit:
                return
            if self.bar is not None and stats.not_images + stats.no_url > filtered:
                self.bar.update(stats.not_images + stats.no_url - filtered)
                filtered = stats.not_images + stats.no_url
            metadata = dict(record.metadata)
            if INPUT_ERROR in metadata:
                self.record(row, "", "failed", metadata, reason="bad_row", message=metadata[INPUT_ERROR])
                continue
            if not record.url:
                self.record(row, "", "failed", metadata, reason="bad_url", message="the row has no URL")
                continue
            try:
                target = self.target(row, record.url, metadata)
                found = self.present(target)
            except Failed as failure:
                self.record(row, record.url, "failed", metadata, reason=failure.reason, message=failure.message)
                continue
            except OSError as error:
                self.record(row, record.url, "failed", metadata, reason="store_error", message=str(error))
                continue
            if found is not None:
                self.record(row, record.url, "present", metadata, **found)
                continue
            yield Task(str(row), record.url, target)

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


def write_parquet(csv_path: Path, parquet_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    numbers = {"row", "bytes", "width", "height", "attempts"}
    types = {name: pa.int64() if name in numbers else pa.string() for name in REPORT_FIELDS}
    table = pacsv.read_csv(
        csv_path,
        convert_options=pacsv.ConvertOptions(
            column_types=types, strings_can_be_null=False, quoted_strings_can_be_null=False
        ),
    )
    pq.write_table(table, parquet_path)


def run(args: argparse.Namespace) -> int:
    path = Path(args.input)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    settings = settings_from(args)
    job = Run(args, settings)
    stats = InputStats()
    total = count_rows(path)
    if total is not None and args.limit is not None:
        total = min(total, args.limit)
    job.choose_algorithm(path)
    processes = args.processes or ((os.cpu_count() or 1) if total is None or total >= MANY_ROWS else 1)
    storer = Storer(job.tmp, job.algo)
    if processes > 1:
        engine = ShardedEngine(settings, processes, store=storer, on_result=job.on_result)
    else:
        engine = FetchEngine(settings, store=storer, on_result=job.on_result)
    job.open()
    started = time.monotonic()
    interrupted = False
    try:
        with tqdm(total=total, unit="img", desc="fetch", file=sys.stderr, disable=args.quiet, smoothing=0.05) as bar:
            job.bar = bar
            try:
                summary = engine.run(job.tasks(path, stats))
            except KeyboardInterrupt:
                interrupted = True
                engine.stop()
                summary = engine.summary
            job.bar = None
    finally:
        engine.close()
        job.close()
    write_parquet(job.logs / "report.csv", job.logs / "report.parquet")
    seconds = time.monotonic() - started
    print_summary(job, stats, summary.hosts, seconds)
    if args.checksum_col:
        verified, missing = job.buddy_check()
        print(
            f"buddy check ({job.algo}): {verified} verified, {missing} missing or mismatched"
            + (f" — {job.logs / 'missing.csv'}" if missing else "")
        )
    if interrupted:
        return 130
    return 1 if job.counts["failed"] else 0


def print_summary(job: Run, stats: InputStats, hosts: list, seconds: float) -> None:
    counts = job.counts
    done = counts["stored"] + counts["present"] + counts["failed"]
    rate = counts["stored"] / seconds if seconds > 0 else 0.0
    print(
        f"{done} records ({stats.kind or 'plain'} list) in {seconds:.1f} s: {counts['stored']} stored, "
        f"{counts['present']} already present, {counts['failed']} failed — {rate:.1f} images/s"
    )
    skipped = stats.not_images + stats.no_url
    if skipped:
        print(f"  left out {stats.not_images} rows that are not still images and {stats.no_url} without a URL")
    for reason, count in job.reasons.most_common():
        print(f"  failed {count:>7}  {reason}")
    busiest = sorted(hosts, key=lambda h: -h.requests)[:10]
    if busiest:
        print(f"  {'host':<32} {'requests':>9} {'429':>6} {'5xx':>6} {'rate/s':>8}")
        for host in busiest:
            fives = sum(n for code, n in host.codes.items() if code.startswith("5"))
            print(
                f"  {host.host[:32]:<32} {host.requests:>9} {host.codes.get('429', 0):>6} {fives:>6} {host.rate:>8.1f}"
            )
    print(f"  logs: {job.logs}/ (success.jsonl, errors.jsonl, report.csv, report.parquet, checksums.csv)")
