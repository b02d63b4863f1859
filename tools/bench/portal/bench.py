"""Search-page latency of the explorer under concurrent clients, and the portal's memory.

    .venv/bin/python -m tools.bench.portal.bench [--clients 10] [--requests 40] [--url http://127.0.0.1:24080]

Each client is a thread with its own HTTP connection, asking full search pages (text queries, rotating
through a few descriptions, k=24) one after another; latency is request to last byte of the HTML. RSS is
read from /proc for the pid in the stack's pid file (the portal `taxonstream stack up` started).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

import httpx

from taxonstream.core.settings import PORTAL_HTTP_PORT
from tools.stack import local_stack as stack

QUERIES = ("a photo of Danaus plexippus", "a photo of a bumble bee", "a ladybird beetle", "a white butterfly",
           "a ground beetle", "a swallowtail butterfly")  # fmt: skip


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run(url: str, clients: int, requests: int) -> dict[str, float]:
    latencies: list[float] = []
    failures: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client(index: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            http.get("/healthz")  # connect before the clock starts
            start.wait()
            for n in range(requests):
                text = QUERIES[(index + n) % len(QUERIES)]
                began = time.perf_counter()
                answer = http.get("/search", params={"text": text, "k": 24})
                took = time.perf_counter() - began
                with lock:
                    if answer.status_code == 200:
                        latencies.append(took)
                    else:
                        failures.append(answer.status_code)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "failed": len(failures),
        "p50_ms": 1000 * statistics.median(ordered),
        "p95_ms": 1000 * ordered[int(0.95 * (len(ordered) - 1))],
        "max_ms": 1000 * ordered[-1],
        "pages_per_s": len(latencies) / wall,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=f"http://127.0.0.1:{PORTAL_HTTP_PORT}")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--requests", type=int, default=40, help="search pages per client")
    args = p.parse_args(argv)
    pid = stack.service_pid(stack.PORTAL.name)
    before = rss_mib(pid) if pid else float("nan")
    images = httpx.get(f"{args.url}/api/facets", timeout=60)  # also warms the indexer's text path
    if images.status_code != 200:
        print(f"portal at {args.url} answers {images.status_code}: {images.text[:200]}", file=sys.stderr)
        return 1
    result = run(args.url, args.clients, args.requests)
    after = rss_mib(pid) if pid else float("nan")
    print(
        f"{args.clients} clients x {args.requests} search pages: "
        f"p50 {result['p50_ms']:.0f} ms, p95 {result['p95_ms']:.0f} ms, "
        f"max {result['max_ms']:.0f} ms, {result['pages_per_s']:.1f} pages/s, {result['failed']} failed; "
        f"portal RSS {before:.0f} MiB before, {after:.0f} MiB after"
    )
    return 0 if not result["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
