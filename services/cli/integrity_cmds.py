"""`taxonstream checksum` (sum-buddy's command, on every core) and `taxonstream dupes` (exact and near duplicates).

Both work on files here and need no running stack.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Iterator

from taxonstream.integrity.checksums import BLAKE_MAX, Algorithm, ChecksumError, WorkerPool, available_cpus
from taxonstream.integrity.sumbuddy import Entry, checksum_entries, iter_plan, plan, write_output

CHECKSUM_HELP = """\
Write a CSV of filepath, filename and checksum for every file under PATH (or for PATH itself), exactly as
sum-buddy does (same files, order, columns and bytes), hashing on every core.

Hidden files and folders are skipped unless -H; -i FILE replaces that rule with FILE's gitignore patterns.
ZIP files are hashed and then each member, as PATH/archive.zip/member (--no-archive-dive: as one file).
"""

DUPES_HELP = """\
Report exact duplicates (same sha256) and near duplicates (perceptual hashes within --max-distance bits:
re-encoded, resized or slightly cropped copies) among the files under PATH.

The JOB form (duplicates within an ingested job) needs the running stack and is not available yet.
"""


def _filters(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("-i", "--ignore-file", metavar="IGNORE_FILE", help="gitignore-style patterns of files to skip")
    group.add_argument("-H", "--include-hidden", action="store_true", help="include hidden files and folders")
    p.add_argument(
        "--archive-dive",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="descend into ZIP files and hash their members (default); --no-archive-dive hashes them as files",
    )
    cores = available_cpus()
    p.add_argument("-j", "--jobs", type=int, metavar="N", help=f"worker processes (default: all {cores} cores)")


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register `checksum` and `dupes` on the top-level parser's subcommands."""
    p = commands.add_parser(
        "checksum",
        help="sum-buddy compatible checksums of a folder, on every core",
        description=CHECKSUM_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input_path", metavar="PATH", help="file or directory to traverse for files")
    p.add_argument(
        "-o", "--output-file", metavar="FILE", help="the CSV (.csv), or the same columns as .parquet; default: stdout"
    )
    p.add_argument("-f", "--force", action="store_true", help="overwrite the output file if it exists")
    p.add_argument(
        "-a",
        "--algorithm",
        default="md5",
        help=f"hashlib algorithm (default: md5; available: {', '.join(sorted(hashlib.algorithms_available))})",
    )
    p.add_argument("-l", "--length", type=int, help="digest length in bytes (shake_*: required; blake2*: optional)")
    _filters(p)
    p.set_defaults(run=cmd_checksum)

    p = commands.add_parser(
        "dupes",
        help="exact and near-duplicate images in a folder",
        description=DUPES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", metavar="PATH", help="a directory (or a ZIP file) of images")
    p.add_argument(
        "-d",
        "--max-distance",
        type=int,
        default=8,
        metavar="BITS",
        help="near duplicates differ in at most this many of the 64 pHash bits (default 8)",
    )
    p.add_argument("-o", "--output-file", metavar="FILE", help="also write every group member to FILE (.csv/.parquet)")
    _filters(p)
    p.set_defaults(run=cmd_dupes)


def checksum_main(argv: list[str]) -> int:
    """`taxonstream checksum …` with a parser of the integrity commands only (the CLI's fast path)."""
    top = argparse.ArgumentParser(prog="taxonstream")
    add_commands(top.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = top.parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130


def _fail(message: str) -> int:
    print(f"taxonstream: {message}", file=sys.stderr)
    return 1


def cmd_checksum(args: argparse.Namespace) -> int:
    output = args.output_file
    if output and not output.lower().endswith((".csv", ".parquet")):
        return _fail(f"output file {output!r}: the extension must be .csv (or .parquet)")
    if output and os.path.exists(output) and not args.force:
        return _fail(f"The output file '{output}' already exists.\nUse the -f/--force flag to overwrite it.")
    try:
        algorithm = Algorithm.parse(args.algorithm, args.length)
        if os.path.isfile(args.input_path) and (args.ignore_file or args.include_hidden):
            print("Warning: -i and -H are ignored when the input is a single file.", file=sys.stderr)
        if algorithm.name in BLAKE_MAX and not algorithm.length:
            print(f"Using default length of {BLAKE_MAX[algorithm.name]} bytes for {algorithm.name}", file=sys.stderr)
        # Walked while hashing, so the progress bar counts files without knowing the total.
        entries = iter_plan(args.input_path, output, args.ignore_file, args.include_hidden, args.archive_dive)
        with WorkerPool(args.jobs) as pool:
            rows: Iterator[tuple[Entry, str]] = checksum_entries(entries, algorithm, pool)
            if output:  # a progress bar only when stdout is not the CSV (as sum-buddy)
                from tqdm import tqdm  # here: importing it is a tenth of the command's start-up

                description = f"Calculating {args.algorithm} checksums on {args.input_path}"
                rows = tqdm(rows, unit=" files", desc=description, file=sys.stderr)
            write_output(rows, output, args.algorithm)
    except ChecksumError as error:
        return _fail(str(error))
    except BrokenPipeError:  # stdout closed early (`| head`): stop quietly, like other Unix tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    if output:
        print(f"{args.algorithm} checksums for {args.input_path} written to {output}")
    return 0


def cmd_dupes(args: argparse.Namespace) -> int:
    from taxonstream.integrity.dupes import find_duplicates
    from taxonstream.integrity.phash import hamming, to_hex

    if not os.path.exists(args.path):
        return _fail(
            f"{args.path}: no such file or directory (the JOB form needs the running stack; not available yet)"
        )
    if not 0 <= args.max_distance < 64:
        return _fail("--max-distance must be 0..63")
    started = time.monotonic()
    try:
        entries = plan(args.path, None, args.ignore_file, args.include_hidden, args.archive_dive)
        report = find_duplicates(entries, args.max_distance, args.jobs)
    except ChecksumError as error:
        return _fail(str(error))
    images = [i for i in report.images.values() if i.phash is not None]
    print(
        f"{report.files} files, {len(report.images)} distinct contents, {len(images)} images "
        f"({len(report.not_images)} files are not images), {time.monotonic() - started:.1f} s"
    )
    copies = sum(len(i.paths) for i in report.exact)
    print(f"\nexact duplicates: {len(report.exact)} groups, {copies} files")
    for image in report.exact:
        print(f"  sha256 {image.sha256[:16]}…  {len(image.paths)} copies")
        for path in image.paths:
            print(f"    {path}")
    print(f"\nnear duplicates (pHash within {args.max_distance} bits): {len(report.near)} groups")
    for n, group in enumerate(report.near, start=1):
        print(f"  group {n}: {len(group.images)} images")
        for image in group.images:
            extra = f"  (+{len(image.paths) - 1} exact copies)" if len(image.paths) > 1 else ""
            print(f"    {to_hex(image.phash or 0)}  {image.paths[0]}{extra}")
        first = {i.sha256: i.paths[0] for i in group.images}
        for a, b, distance in group.pairs:
            print(f"      {distance:>2} bits  {first[a]}  ~  {first[b]}")
    for error in report.errors:
        print(f"taxonstream: cannot read {error}", file=sys.stderr)
    if args.output_file:
        rows = []
        for n, image in enumerate(report.exact, start=1):
            rows += [
                {
                    "kind": "exact",
                    "group": n,
                    "sha256": image.sha256,
                    "phash": to_hex(image.phash) if image.phash is not None else "",
                    "distance": 0,
                    "filepath": p,
                }
                for p in image.paths
            ]
        for n, group in enumerate(report.near, start=1):
            head = group.images[0]
            for image in group.images:
                rows += [
                    {
                        "kind": "near",
                        "group": n,
                        "sha256": image.sha256,
                        "phash": to_hex(image.phash or 0),
                        "distance": hamming(head.phash or 0, image.phash or 0),
                        "filepath": p,
                    }
                    for p in image.paths
                ]
        _write_rows(rows, args.output_file)
        print(f"\nwrote {len(rows)} rows to {args.output_file}")
    return 0


def _write_rows(rows: list[dict[str, object]], path: str) -> None:
    fields = ["kind", "group", "sha256", "phash", "distance", "filepath"]
    if path.lower().endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows) if rows else pa.table({f: [] for f in fields}), path)
        return
    import csv

    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
