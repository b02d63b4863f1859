"""taxonstream fetch — the polite, safe fetch engine on one machine, no cluster: a URL list into a folder.

  taxonstream fetch media.csv --output images/ --name-col filename --checksum-col md5

The input: CSV, TSV or TXT (delimiter sniffed, or --delimiter), JSONL, Parquet (optionally .gz), or a
Darwin Core Archive (a GBIF download .zip or its unpacked folder: meta.xml read, the multimedia extension
joined to its occurrences). Column options are checked, case-insensitively, before anything is fetched.
Files are named by --name-col (else by the row's line number), optionally in folders by --subdir-col, and
appear only complete and validated: each is written to a temporary name and renamed into place. Running
the same command again keeps files that are the ones logged (same sha256) or that match the expected
checksum, and fetches again any that differ, so an interrupted or partly failed run is resumed by running
it again. Logs go beside the images, to OUTPUT_logs/ (or --log-dir): success.jsonl, errors.jsonl,
report.csv and report.parquet (every input row, by its line), skipped.csv (not a still image, no URL),
checksums.csv (the image folder as sum-buddy writes it) and, with --checksum-col, missing.csv (the buddy
check: the source rows whose expected file is absent or did not match).
Exit status: 0 when everything fetchable was stored or present (skipped rows do not count against it),
1 when some failed (see the report), 2 on bad input (one line, nothing written).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from pydantic import ValidationError
from tqdm import tqdm

from taxonstream.cli import flags
from taxonstream.fetching.folder import MANY_ROWS, FolderOptions, FolderSummary, fetch_into_folder
from taxonstream.fetching.inputs import URL_COLUMNS, InputError
from taxonstream.fetching.settings import FetcherSettings


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = flags.add_described(
        commands,
        "fetch",
        help="download a URL list into a folder on this machine (no cluster): polite, safe, resumable",
        description=__doc__,
    )
    p.add_argument(
        "input",
        help="CSV, TSV, TXT, JSONL or Parquet (optionally .gz), or a Darwin Core Archive (.zip or folder); "
        "iDigBio, Audubon Core and GBIF columns recognised",
    )
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
    p.add_argument("--limit", type=int, help="only the first N input rows (skipped ones included)")
    p.add_argument("--log-dir", metavar="DIR", help="folder for the logs (default: OUTPUT_logs beside OUTPUT)")
    p.add_argument("--delimiter", help="field delimiter of a text list, e.g. ',' or '\\t' (default: sniffed)")
    p.add_argument("--encoding", help="text encoding (default: UTF-8, or UTF-16 with a BOM), e.g. latin-1")
    p.add_argument(
        "--resize", type=int, metavar="N", help="also write a downsized copy of each image to OUTPUT_downsized/"
    )
    p.add_argument(
        "--resize-mode",
        choices=("square", "shorter"),
        default="square",
        help="square: N x N, as cautious-robot (default); shorter: the shorter side N, aspect kept",
    )
    p.add_argument(
        "--fix-extensions",
        action="store_true",
        help="a name whose suffix disagrees with the image's type is renamed (default: refused)",
    )
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
    except ValidationError as error:  # one line per bad value, not pydantic's dump
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in error.errors())
        raise InputError(f"bad option: {problems}") from None


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    options = FolderOptions(
        output=Path(args.output),
        url_col=args.url_col,
        name_col=args.name_col,
        subdir_col=args.subdir_col,
        checksum_col=args.checksum_col,
        checksum_algo=args.checksum_algo or "",
        force=args.force,
        processes=args.processes,
        limit=args.limit,
        log_dir=Path(args.log_dir) if args.log_dir else None,
        delimiter=args.delimiter,
        encoding=args.encoding,
        resize=args.resize or 0,
        resize_mode=args.resize_mode,
        fix_extensions=args.fix_extensions,
    )
    for value, option in ((args.limit, "--limit"), (args.resize, "--resize"), (args.processes, "--processes")):
        if value is not None and value < 1:
            raise InputError(f"{option} {value}: must be 1 or more")
    listing = Path(args.input)
    bars: list[tqdm] = []  # opened at the first row's end, so bad input prints its one line and no bar

    def progress(ended: int, counts: Counter, total: int | None) -> None:
        if not bars:
            bars.append(
                tqdm(total=total, unit="img", desc="fetch", file=sys.stderr, disable=args.quiet, smoothing=0.05)
            )
        bars[0].update(ended)
        bars[0].set_postfix(stored=counts["stored"], present=counts["present"], failed=counts["failed"], refresh=False)

    try:
        summary = fetch_into_folder(listing, options, settings, progress)
    finally:
        for bar in bars:
            bar.close()
    print_summary(summary)
    if summary.buddy is not None:
        verified, missing = summary.buddy
        print(
            f"buddy check ({summary.algo}): {verified} verified, {missing} missing or mismatched"
            + (f" — {summary.logs / 'missing.csv'}" if missing else "")
        )
    if summary.interrupted:
        return 130
    return 1 if summary.counts["failed"] else 0


def print_summary(summary: FolderSummary) -> None:
    counts, stats, seconds = summary.counts, summary.stats, summary.seconds
    done = counts["stored"] + counts["present"] + counts["failed"] + counts["skipped"]
    rate = counts["stored"] / seconds if seconds > 0 else 0.0
    print(
        f"{done} rows ({stats.kind or 'plain'} list) in {seconds:.1f} s: {counts['stored']} stored, "
        f"{counts['present']} already present, {counts['skipped']} skipped, {counts['failed']} failed — "
        f"{rate:.1f} images/s"
    )
    for reason, count in stats.skipped.most_common():
        print(f"  skipped {count:>6}  {reason} (skipped.csv)")
    for reason, count in summary.reasons.most_common():
        print(f"  failed {count:>7}  {reason}")
    busiest = sorted(summary.hosts, key=lambda h: -h.requests)[:10]
    if busiest:
        print(f"  {'host':<32} {'requests':>9} {'429':>6} {'5xx':>6} {'rate/s':>8}")
        for host in busiest:
            fives = sum(n for code, n in host.codes.items() if code.startswith("5"))
            print(
                f"  {host.host[:32]:<32} {host.requests:>9} {host.codes.get('429', 0):>6} {fives:>6} {host.rate:>8.1f}"
            )
    print(
        f"  logs: {summary.logs}/ (success.jsonl, errors.jsonl, report.csv, report.parquet, skipped.csv, checksums.csv)"
    )
