"""`taxonstream export`: a job's or a query's images as WebDataset, HDF5 or ZIP shards (docs/export.md)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from taxonstream.cli import clients, flags
from taxonstream.export.content import CONTENTS
from taxonstream.export.writers import FORMATS
from taxonstream.fetching.inputs import InputError

HELP = """\
Export images with their metadata and a train/val/test split into shards.

  taxonstream export JOB --format webdataset --out shards/          a job's images (first seen in that job)
  taxonstream export --text "a photo of a moth" -k 500 --format hdf5 --out moths/ --with-vectors
  taxonstream export --image moth.jpg -k 100 --format zip --out near/
  taxonstream export --filter genus=Danaus --content crop --format webdataset --out danaus/ --shard-by-split

Each sample is one image: its original bytes (`--content original`), the detector's crop (`crop`), the
256-px crop (`small`) or the whole image at 256 px (`small-original`), plus a JSON record with its index
metadata, species and split. The split is drawn per species like `eval classify`'s (default 70/10/20,
seeded). The folder gets the shards, manifest.json (query, model, counts per split, shards with sizes and
sha256) and errors.jsonl (images left out, e.g. an object missing from S3). Exit status 1 when any
image was left out, 2 when the query selects nothing.
"""


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = flags.add_described(
        commands,
        "export",
        help="a job's or a query's images as WebDataset/HDF5/ZIP shards with metadata and a split",
        description=HELP,
    )
    p.add_argument("job", nargs="?", metavar="JOB", help="export the images first ingested by this job")
    query = p.add_mutually_exclusive_group()
    query.add_argument("--text", metavar="TEXT", help='the k images nearest a description ("a photo of Danaus")')
    query.add_argument("--image", metavar="PATH", help="the k images nearest an image file (cropped and embedded)")
    flags.add_filter_flag(p, flags.FILTER_HELP + " (repeatable); alone: every matching image")
    p.add_argument("-k", type=int, default=1000, help="with --text/--image: how many images (default 1000)")
    p.add_argument("--format", choices=FORMATS, default="webdataset", help="shard format (default webdataset)")
    p.add_argument("--out", required=True, metavar="DIR", help="a new or empty folder for the shards")
    p.add_argument("--content", choices=CONTENTS, default="original", help="which image to export (default original)")
    p.add_argument("--chunk-size", type=int, default=10_000, metavar="N", help="images per shard (default 10000)")
    p.add_argument("--split", default="70/10/20", metavar="TRAIN/VAL/TEST", help="shares per species (70/10/20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    p.add_argument(
        "--model",
        metavar="MODEL[/VERSION]",
        help="export from this index version (taxonstream reembed); default: the serving one",
    )
    p.add_argument("--shard-by-split", action="store_true", help="separate shards per split: NAME-train-000000 …")
    p.add_argument("--with-vectors", action="store_true", help="include each image's stored embedding")
    p.add_argument("--name", help="shard file name prefix (default: the job id, or `export`)")
    p.add_argument("--workers", type=int, default=8, help="objects read from S3 at once (default 8)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_export)


def _query(args: argparse.Namespace):
    from taxonstream.export.select import Query
    from taxonstream.index.filters import parse

    if args.job and (args.text or args.image):
        raise InputError("export either a JOB or a query (--text / --image), not both")
    try:
        by_value, comparisons = _comparisons(args.filter)
        filters = {f: tuple(sorted(v)) for f, v in parse(_split_values(by_value)).items()}
    except ValueError as error:
        raise InputError(str(error)) from None
    if not (args.job or args.text or args.image or filters or comparisons):
        raise InputError("say what to export: a JOB, --text TEXT, --image FILE or --filter FIELD=VALUE")
    if args.k < 1:
        raise InputError("-k must be at least 1")
    image = b""
    if args.image:
        path = Path(args.image)
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        image = path.read_bytes()
    return Query(
        job_id=args.job or "",
        text=args.text or "",
        image=image,
        image_name=args.image or "",
        filters=filters,
        comparisons=comparisons,
        k=args.k,
        **clients.index_version(args.model),
    )


def _comparisons(expressions: list[str]) -> tuple[list[str], tuple[tuple[str, str, str], ...]]:
    """The facet filters (left for `parse`) and the numeric ones as (column, op, numbers), checked here."""
    from taxonstream.index.comparisons import Numeric, number, split_expression
    from taxonstream.index.filters import is_facet

    by_value, numeric = [], []
    for expression in expressions:
        try:
            name, op, value = split_expression(expression)
        except ValueError:
            by_value.append(expression)  # parse() says what is wrong with it
            continue
        numbers = value.split(",")
        if op == "=" and (is_facet(name) or number(numbers[0]) is None):
            by_value.append(expression)
            continue
        Numeric.of(op, numbers)
        numeric.append((name, op, value))
    return by_value, tuple(numeric)


def _split_values(expressions: list[str]) -> list[str]:
    """`genus=Apis,Bombus` is two values of one field, as `search --filter` takes it."""
    out = []
    for expression in expressions:
        name, sep, values = expression.partition("=")
        out.extend(f"{name}={v}" for v in values.split(",")) if sep else out.append(expression)
    return out


def cmd_export(args: argparse.Namespace) -> int:
    from taxonstream.export.run import ExportError, Plan, export, prepare
    from taxonstream.export.select import SelectionError, select
    from taxonstream.export.split import parse_fractions
    from taxonstream.v1 import fetcher_pb2_grpc, indexer_pb2_grpc

    query = _query(args)
    if args.chunk_size < 1:
        raise InputError("--chunk-size must be at least 1")
    try:
        fractions = parse_fractions(args.split)
    except ValueError as error:
        raise InputError(str(error)) from None
    name = args.name or (re.sub(r"[^A-Za-z0-9_-]+", "_", args.job) if args.job else "export")
    plan = Plan(
        format=args.format,
        content=args.content,
        chunk_size=args.chunk_size,
        fractions=fractions,
        seed=args.seed,
        by_split=args.shard_by_split,
        with_vectors=args.with_vectors,
        name=name,
        workers=args.workers,
    )
    if args.format == "hdf5":
        try:
            import h5py  # noqa: F401
        except ImportError:
            raise InputError("--format hdf5 needs h5py: install taxonstream with the `export` extra") from None
    out = Path(args.out)
    with clients.channel("indexer") as indexer_channel, clients.channel("fetcher") as fetcher_channel:
        try:
            selection = select(
                query,
                indexer_pb2_grpc.IndexerStub(indexer_channel),
                fetcher_pb2_grpc.FetcherStub(fetcher_channel),
                with_vectors=args.with_vectors,
            )
        except SelectionError as error:
            raise InputError(str(error)) from None
    try:
        prepare(out)
    except ExportError as error:
        raise InputError(str(error)) from None
    print(f"exporting {len(selection.items)} images ({args.content}) to {out}/ as {args.format}", file=sys.stderr)
    manifest = export(selection, plan, clients.object_store(), out, query.describe(), progress=not args.quiet)
    counts = manifest["counts"]
    rate = counts["exported"] / manifest["seconds"] if manifest["seconds"] else 0.0
    by_split = ", ".join(f"{n} {s}" for s, n in counts["by_split"].items())
    print(
        f"exported {counts['exported']} of {counts['selected']} images into {len(manifest['shards'])} shards "
        f"({by_split}) in {manifest['seconds']:.1f} s ({rate:.0f} images/s); manifest: {out / 'manifest.json'}"
    )
    if counts["errors"]:
        reasons = ", ".join(f"{n} {r}" for r, n in counts["errors_by_reason"].items())
        where = out / "errors.jsonl"
        print(f"taxonstream: {counts['errors']} images left out ({reasons}); see {where}", file=sys.stderr)
        return 1
    return 0
