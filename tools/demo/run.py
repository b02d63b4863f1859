"""`make demo`: serve a generated sample on loopback, ingest its URL list, then search it.

Expects the stack to be up with loopback allowed (`taxonstream stack up --allow-network 127.0.0.0/8`,
which `make demo` runs first). Exits 1 unless the query image comes back as its own top hit.
"""

from __future__ import annotations

import hashlib
import sys

import grpc

from taxonstream.cli.main import main as taxonstream
from taxonstream.v1 import indexer_pb2, indexer_pb2_grpc
from tools.demo.sample import make_images, serve, write_url_list
from tools.stack import local_stack as stack


def run(count: int = 24) -> int:
    work = stack.stack_dir() / "demo"
    images = make_images(work / "images", count)
    with serve(work / "images") as base_url:
        url_list = write_url_list(work / "urls.csv", base_url, images)
        print(f"\n== ingesting {count} sample images served at {base_url} ({url_list})", flush=True)
        if taxonstream(["ingest", str(url_list), "--report", str(work / "report.csv")]) != 0:
            return 1
    query = images[0]
    print(f"\n== searching with {query}", flush=True)
    if taxonstream(["search", "--image", str(query), "-k", "5"]) != 0:
        return 1
    expected = hashlib.sha256(query.read_bytes()).hexdigest()
    indexer = next(s for s in stack.SERVICES if s.name == "indexer")
    with grpc.insecure_channel(f"127.0.0.1:{indexer.grpc_port}") as channel:
        request = indexer_pb2.SearchRequest(image=query.read_bytes(), k=1)
        top = indexer_pb2_grpc.IndexerStub(channel).Search(request, timeout=120).hits[0].image_id
    if top != expected:
        print(f"\nFAIL: the top hit is {top[:12]}, not the query image {expected[:12]}")
        return 1
    print(f"\nthe top hit is the query image itself ({expected[:12]}): demo OK")
    print(
        f"\nthe explorer (search, classify, dashboard, embedding map, jobs): http://127.0.0.1:{stack.PORTAL.grpc_port}/"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run())
