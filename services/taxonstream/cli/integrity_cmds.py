"""`taxonstream checksum` (sum-buddy's command, on every core), `taxonstream dupes` (exact and near duplicates)
and `taxonstream manifest` (a job's manifest).

`checksum` and `dupes PATH` work on files here and need no running stack; `dupes JOB` and `manifest JOB` ask
the checksummer service.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Iterator

from taxonstream.cli import flags
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

taxonstream dupes PATH   files here (no stack needed)
taxonstream dupes JOB    an ingested job, from the checksummer's duplicate registry (the stack must run):
                         every group that includes one of the job's records, with members from any job

An argument that is an existing path is read as PATH; anything else is a job id.
"""

MANIFEST_HELP = """\
Write a job's manifest: one row per record whose bytes were stored and verified, with sum-buddy's columns
first (filepath, filename, md5, then the other digests the checksummer computes: sha1, sha256) and then ours:
key, source_url, license, record_id, job_id, image_id, size_bytes, phash, duplicate_of, near_duplicates.

  taxonstream manifest JOB                    CSV to stdout
  taxonstream manifest JOB -o FILE.csv        CSV (sum-buddy's dialect), or -o FILE.parquet: the same columns

filepath is the stored object (s3://bucket/originals/sha256/…), filename the last segment of the source URL.
Exact duplicates have a row each, linked to the image by image_id and duplicate_of; near duplicates list
"image_id:distance" entries. Records that failed have no row: `taxonstream jobs JOB --report FILE` lists
them with their reason, and this command says how many records have no row. The checksummer also keeps the
assembled file in S3 as jobs/JOB/manifest.csv|.parquet. Needs the running stack.
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
    p = flags.add_described(
        commands,
        "checksum",
        help="sum-buddy compatible checksums of a folder, on every core",
        description=CHECKSUM_HELP,
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

    p = flags.add_described(
        commands, "dupes", help="exact and near-duplicate images in a folder", description=DUPES_HELP
    )
    p.add_argument("path", metavar="PATH|JOB", help="a directory (or a ZIP file) of images, or an ingested job's id")
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

    p = flags.add_described(
        commands,
        "manifest",
        help="a job's manifest: sum-buddy's columns, then source URL, licence, image and duplicates",
        description=MANIFEST_HELP,
    )
    p.add_argument("job_id", metavar="JOB", help="the job's id (taxonstream jobs lists them)")
    p.add_argument("-o", "--output-file", metavar="FILE", help="FILE.csv or FILE.parquet; default: CSV to stdout")
    p.add_argument("-f", "--force", action="store_true", help="overwrite the output file if it exists")
    p.set_defaults(run=cmd_manifest)


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
    # Options checked before the walk, so a typo is one line, not a traceback from deep inside the hashing.
    if output and not os.path.isdir(os.path.dirname(output) or "."):
        return _fail(f"output file {output!r}: the folder {os.path.dirname(output)!r} does not exist")
    if args.ignore_file and not os.path.isfile(args.ignore_file):
        return _fail(f"ignore file {args.ignore_file!r}: no such file")
    if args.jobs is not None and args.jobs < 1:
        return _fail(f"-j/--jobs {args.jobs}: must be 1 or more")
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
            # A progress bar when stdout is not the CSV (as sum-buddy), and only on a terminal: in a log it is
            # noise, and importing tqdm is a fifth of the command's start-up.
            if output and sys.stderr.isatty():
                from tqdm import tqdm

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

    if not 0 <= args.max_distance < 64:
        return _fail("--max-distance must be 0..63")
    if not os.path.exists(args.path):
        return _job_dupes(args)
    started = time.monotonic()
    try:
        entries = plan(args.path, None, args.ignore_file, args.include_hidden, args.archive_dive)
        report = find_duplicates(entries, args.max_distance, args.jobs)
    except ChecksumError as error:
        return _fail(str(error))
    images = [i for i in report.images.values() if i.phash is not None]
    print(
        f"{report.files} files, {len(report.images)} distinct contents, {len(images)} images "
        f"({len(report.not_images)} files are not images or are featureless), {time.monotonic() - started:.1f} s"
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


FIELDS = ["kind", "group", "sha256", "phash", "distance", "filepath"]


def _write_rows(rows: list[dict[str, object]], path: str, fields: list[str] = FIELDS) -> None:
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


def _checksummer():
    """A stub for the checksummer (TAXONSTREAM_CHECKSUMMER_ADDR, else the local stack's port)."""
    from taxonstream.cli import clients  # grpc loads here: `checksum` never needs it
    from taxonstream.v1 import checksummer_pb2_grpc

    return checksummer_pb2_grpc.ChecksummerStub(clients.channel("checksummer"))


def _rpc_failure(error, what: str) -> int:
    import grpc

    if error.code() == grpc.StatusCode.NOT_FOUND:
        return _fail(f"{what}: {error.details()}")
    if error.code() == grpc.StatusCode.UNAVAILABLE:
        return _fail(f"{what}: the checksummer is not reachable (is the stack up? `taxonstream stack status`)")
    return _fail(f"{what}: {error.code().name}: {error.details()}")


def _job_dupes(args: argparse.Namespace) -> int:
    import grpc

    from taxonstream.v1 import checksummer_pb2

    job = args.path
    request = checksummer_pb2.JobDuplicatesRequest(job_id=job, max_distance=args.max_distance)
    try:
        found = _checksummer().JobDuplicates(request, timeout=600)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return _fail(f"{job}: neither a file or directory here nor a job the stack knows")
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            return _fail(f"{job}: no such file or directory, and no checksummer reachable to look it up as a job")
        return _rpc_failure(error, f"dupes {job}")
    print(f"job {job}: {found.rows} records with verified bytes, {found.contents} distinct contents")
    copies = sum(len(g.sources) for g in found.exact)
    print(f"\nexact duplicates: {len(found.exact)} groups, {copies} records")
    for group in found.exact:
        print(f"  sha256 {group.image_id[:16]}…  {len(group.sources)} copies")
        for s in group.sources:
            print(f"    {s.record_id}  {s.url}")
    print(f"\nnear duplicates (pHash within {found.max_distance} bits): {len(found.near)} groups")
    rows: list[dict[str, object]] = [
        {
            "kind": "exact",
            "group": n,
            "sha256": g.image_id,
            "phash": "",
            "distance": 0,
            "filepath": s.url,
            "record_id": s.record_id,
            "job_id": s.job_id,
        }
        for n, g in enumerate(found.exact, start=1)
        for s in g.sources
    ]
    for n, group in enumerate(found.near, start=1):
        print(f"  group {n}: {len(group.members)} images")
        for m in group.members:
            where = "" if m.in_job else f"  (job {m.source.job_id})"
            print(f"    {m.phash}  {m.source.record_id}  {m.source.url}{where}")
        label = {m.sha256: m.source.record_id for m in group.members}
        for pair in group.pairs:
            print(f"      {pair.distance:>2} bits  {label[pair.a]}  ~  {label[pair.b]}")
        head = group.members[0]
        distance = {(p.a, p.b): p.distance for p in group.pairs} | {(p.b, p.a): p.distance for p in group.pairs}
        rows += [
            {
                "kind": "near",
                "group": n,
                "sha256": m.sha256,
                "phash": m.phash,
                "distance": distance.get((head.sha256, m.sha256), 0),
                "filepath": m.source.url,
                "record_id": m.source.record_id,
                "job_id": m.source.job_id,
            }
            for m in group.members
        ]
    if args.output_file:
        _write_rows(rows, args.output_file, [*FIELDS, "record_id", "job_id"])
        print(f"\nwrote {len(rows)} rows to {args.output_file}")
    return 0


def cmd_manifest(args: argparse.Namespace) -> int:
    import grpc

    from taxonstream.v1 import checksummer_pb2

    output = args.output_file
    fmt = "csv"
    if output:
        if not output.lower().endswith((".csv", ".parquet")):
            return _fail(f"output file {output!r}: the extension must be .csv or .parquet")
        if os.path.exists(output) and not args.force:
            return _fail(f"{output} already exists (-f to overwrite)")
        fmt = output.lower().rsplit(".", 1)[1]
    request = checksummer_pb2.JobManifestRequest(job_id=args.job_id, format=fmt)
    parts: list[bytes] = []
    summary = None
    try:
        for part in _checksummer().JobManifest(request, timeout=3600):
            parts.append(part.data)
            if part.HasField("summary"):
                summary = part.summary
    except grpc.RpcError as error:
        return _rpc_failure(error, f"manifest {args.job_id}")
    if summary is None:
        return _fail(f"manifest {args.job_id}: the checksummer's answer ended early")
    data = b"".join(parts)
    if output:  # written whole, so an interrupted run leaves no half manifest under the name
        partial = f"{output}.partial"
        with open(partial, "wb") as handle:
            handle.write(data)
        os.replace(partial, output)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    where = output or "stdout"
    print(
        f"job {summary.job_id}: {summary.rows} rows of {summary.records} records "
        f"({summary.exact_duplicates} exact duplicates, {summary.near_duplicates} with near duplicates), "
        f"columns {', '.join(['filepath', 'filename', *summary.algorithms])} … to {where}; stored as {summary.key}",
        file=sys.stderr,
    )
    if summary.without_row:
        shown = ", ".join(summary.without_row_ids[:5]) + (" …" if summary.without_row > 5 else "")
        print(
            f"  {summary.without_row} records have no row (failed, or not verified yet): {shown}\n"
            f"  why: taxonstream jobs {summary.job_id} --report FILE",
            file=sys.stderr,
        )
    return 0
