"""`taxonstream reembed` and `taxonstream index`: index versions, one per embedding model.

taxonstream reembed --model bioclip2_image        new version, backfilled from the serving one
taxonstream search --model bioclip2_image --id …  try it while the old version keeps serving
taxonstream index serve bioclip2_image            make it the default for searches
taxonstream index retire clip_standin_image       stop keeping the old one
"""

from __future__ import annotations

import argparse
import sys
import time

from taxonstream.cli import clients, flags
from taxonstream.fetching.inputs import InputError
from taxonstream.index.versions import VersionKey
from taxonstream.v1 import indexer_pb2, indexer_pb2_grpc

# How long the new version may stand still before `reembed` stops following and says why.
STALL_SECONDS = 120.0


def _indexer() -> indexer_pb2_grpc.IndexerStub:
    return indexer_pb2_grpc.IndexerStub(clients.channel("indexer"))


def version_images(stub: indexer_pb2_grpc.IndexerStub, key: VersionKey) -> int:
    stats = stub.Stats(indexer_pb2.StatsRequest(model=key.model, model_version=key.version), timeout=60)
    return stats.images


def follow(stub: indexer_pb2_grpc.IndexerStub, key: VersionKey, expected: int, timeout: float) -> bool:
    """Progress of version `key` towards `expected` images; False when it stalls or time runs out."""
    from tqdm import tqdm

    started = last_change = time.monotonic()
    last = -1
    with tqdm(total=expected, unit="img", desc=f"reembed {key}", disable=not sys.stderr.isatty()) as bar:
        while True:
            count = version_images(stub, key)
            bar.update(max(0, min(count, expected) - bar.n))
            if count >= expected:
                return True
            now = time.monotonic()
            if count != last:
                last, last_change = count, now
            if now - last_change > STALL_SECONDS or now - started > timeout:
                print(
                    f"{key}: {count} of {expected} images after {now - started:.0f} s and no progress for "
                    f"{now - last_change:.0f} s; images deleted meanwhile never arrive, and requests the "
                    "embedder could not do are in the taxonstream.reembed.dlq topic with their reasons",
                    file=sys.stderr,
                )
                return False
            time.sleep(1.0)


def cmd_reembed(args: argparse.Namespace) -> int:
    key = clients.version_key(args.model)
    stub = _indexer()
    answer = stub.Reembed(indexer_pb2.ReembedRequest(model=key.model, model_version=key.version), timeout=600)
    state = "new index version" if answer.created else "existing index version"
    print(f"{state} {key}: {answer.images} images sent to the embedder; searches keep using the serving version")
    if args.no_wait:
        print(f"follow it with: taxonstream stats --model {key}")
        return 0
    if not follow(stub, key, answer.images, args.timeout):
        return 1
    print(f"{key} holds {version_images(stub, key)} images")
    if args.serve:
        previous = stub.Serve(indexer_pb2.ServeRequest(model=key.model, model_version=key.version), timeout=60)
        print(f"{key} now serves searches (was {previous.previous})")
    else:
        print(f"try it: taxonstream search --model {key} …; make it the default: taxonstream index serve {key}")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    stub = _indexer()
    if args.action == "versions":
        stats = stub.Stats(indexer_pb2.StatsRequest(), timeout=60)
        for version in stats.versions:
            mark = "*" if version.serving else " "
            print(f"{mark} {version.model}/{version.model_version:<6} {version.images:>10} images")
        return 0
    if not args.version:
        raise InputError(f"index {args.action} needs MODEL[/VERSION]")
    key = clients.version_key(args.version)
    request = indexer_pb2.ServeRequest(model=key.model, model_version=key.version)
    if args.action == "serve":
        print(f"{key} now serves searches (was {stub.Serve(request, timeout=60).previous})")
    else:
        stub.Retire(request, timeout=60)
        print(f"{key} retired: no longer kept or followed")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = flags.add_described(
        commands,
        "reembed",
        help="embed every indexed image with another model into a new index version",
        description=__doc__
        + "\nThe new model's image tower must be on Triton (taxonstream models install … --name NAME writes\n"
        "NAME_image and NAME_text). Images ingested while and after it fills are embedded with it too.",
    )
    p.add_argument("--model", required=True, metavar="MODEL[/VERSION]", help="the image tower, e.g. bioclip2_image")
    p.add_argument("--no-wait", action="store_true", help="start the backfill and return")
    p.add_argument("--serve", action="store_true", help="when every image is in, make the new version the default")
    p.add_argument("--timeout", type=float, default=24 * 3600, help="stop following after this many seconds")
    p.set_defaults(run=cmd_reembed)

    p = flags.add_described(
        commands,
        "index",
        help="list, serve or retire index versions (one per embedding model)",
        description="taxonstream index versions           every version, * marks the serving one\n"
        "taxonstream index serve MODEL[/V]    searches that name no model use this version\n"
        "taxonstream index retire MODEL[/V]   stop keeping a version (not the serving one)",
    )
    p.add_argument("action", choices=["versions", "serve", "retire"])
    p.add_argument("version", nargs="?", metavar="MODEL[/VERSION]")
    p.set_defaults(run=cmd_index)
