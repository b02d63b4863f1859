"""Ceph's own CPU per S3 request, through the project's ObjectStore: N PUTs, then N GETs of one size.

    .venv/bin/python -m tools.bench.s3.run                 # 400 x 7 kB (an e2e small image)
    .venv/bin/python -m tools.bench.s3.run -n 60 --size 1500000   # a photo-sized original

Prints, per request, the CPU the Ceph daemons (ceph-mon, ceph-osd, radosgw) spent — from /proc, split
user/system per daemon — and the wall time per request with 8 requests in flight. A benchmark, not a
test; needs the local stack's S3 up. The objects are deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from taxonstream.core.settings import CoreSettings
from taxonstream.core.store import ObjectStore
from tools.stack import local_stack as stack

DAEMONS = ("ceph-mon", "ceph-osd", "radosgw")
TICKS = os.sysconf("SC_CLK_TCK")


def ceph_cpu() -> dict[str, float]:
    """daemon.u / daemon.s -> CPU seconds so far, summed over its processes."""
    found = {f"{d}.{part}": 0.0 for d in DAEMONS for part in "us"}
    for entry in Path("/proc").iterdir():
        try:
            name = (entry / "comm").read_text().strip() if entry.name.isdigit() else ""
            if name in DAEMONS:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                found[f"{name}.u"] += int(fields[11]) / TICKS
                found[f"{name}.s"] += int(fields[12]) / TICKS
        except OSError:
            continue
    return found


def per_request(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    return {k: round(1000 * (after[k] - before[k]) / n, 2) for k in before}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=400, help="requests of each kind (default 400)")
    parser.add_argument("--size", type=int, default=7000, help="object size in bytes (default 7000)")
    parser.add_argument("--prefix", default="originals/sha256/bench-s3/", help="key prefix (picks the bucket)")
    args = parser.parse_args(argv)
    store = ObjectStore(CoreSettings(**{k.removeprefix("TAXONSTREAM_").lower(): v for k, v in stack.s3_env().items()}))
    data = os.urandom(args.size)
    keys = [f"{args.prefix}{time.time_ns()}/{i}" for i in range(args.n)]
    with ThreadPoolExecutor(8) as pool:
        cpu0, t0 = ceph_cpu(), time.perf_counter()
        list(pool.map(lambda k: store.put(k, data), keys))
        cpu1, t1 = ceph_cpu(), time.perf_counter()
        list(pool.map(store.get, keys))
        cpu2, t2 = ceph_cpu(), time.perf_counter()
    for kind, (a, b, seconds) in {"PUT": (cpu0, cpu1, t1 - t0), "GET": (cpu1, cpu2, t2 - t1)}.items():
        split = per_request(a, b, args.n)
        print(
            f"{kind} {args.size} B: Ceph CPU {sum(split.values()):.2f} ms/request "
            f"({', '.join(f'{k} {v}' for k, v in split.items() if v)}); wall {1000 * seconds / args.n:.2f} ms/request"
        )
    for key in keys:
        store.client.remove_object(store.bucket_for(key), key)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
