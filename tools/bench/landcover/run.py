"""Land-cover throughput: coordinates per second of `taxonstream landcover`'s library on a CDL-sized raster.

    .venv/bin/python tools/bench/landcover/run.py [--size 10000] [--points 100000] [--workers 1,0] [--repeat 2]

Writes (once, reused while its parameters match) a synthetic CDL GeoTIFF under /tmp: `--size` × `--size`
cells of 30 m in EPSG:5070, uint8 CDL codes laid out in irregular patches (fields, forest, water, towns)
so it compresses like the real layer, tiled 512 × 512 and DEFLATE-compressed as the national CDL is
distributed. Then draws `--points` random coordinates over it (uniform in the projected extent, turned into
WGS 84 latitude/longitude like specimen records; 1 % of them off the raster, 1 % empty) and times
`cover_points` (parse, project, one windowed read per point, both boxes) for each `--workers` value
(0: every core). Best of `--repeat`. Prints one JSON line per run and a summary.

LatLonCover's own way costs two CropScape web requests per box, four per point.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "services"))

from taxonstream.landcover.points import cores, cover_points  # noqa: E402

X0, Y0, CELL = 1_000_000.0, 2_000_000.0, 30.0
PATCH_CODES = np.array([1, 5, 24, 36, 61, 111, 121, 122, 141, 142, 152, 176, 190, 195, 131, 0], dtype=np.uint8)


def make_raster(path: Path, size: int, seed: int = 0) -> Path:
    """A synthetic CDL: patches of 16–128 cells per side with a sprinkle of other codes inside each."""
    import rasterio
    from affine import Affine

    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    profile = dict(driver="GTiff", width=size, height=size, count=1, dtype="uint8", crs="EPSG:5070", nodata=0)
    profile |= dict(tiled=True, blockxsize=512, blockysize=512, compress="deflate")
    partial = path.with_name(path.name + f".part-{os.getpid()}")
    band = 512
    with rasterio.open(partial, "w", transform=Affine(CELL, 0, X0, 0, -CELL, Y0), **profile) as out:
        for top in range(0, size, band):
            rows = min(band, size - top)
            patch = int(rng.integers(16, 129))
            coarse = rng.choice(PATCH_CODES, size=(rows // patch + 2, size // patch + 2))
            block = np.repeat(np.repeat(coarse, patch, axis=0), patch, axis=1)[:rows, :size]
            noise = rng.random(block.shape) < 0.05
            block = np.where(noise, rng.choice(PATCH_CODES, size=block.shape), block).astype(np.uint8)
            out.write(block, 1, window=rasterio.windows.Window(0, top, size, rows))
    partial.replace(path)
    return path


def random_points(size: int, n: int, seed: int = 1) -> tuple[list[object], list[object]]:
    from pyproj import Transformer

    rng = np.random.default_rng(seed)
    extent = size * CELL
    x = X0 + rng.uniform(0, extent, n)
    y = Y0 - rng.uniform(0, extent, n)
    off = rng.random(n) < 0.01
    x[off] -= extent  # west of the raster
    lon, lat = Transformer.from_crs("EPSG:5070", "EPSG:4326", always_xy=True).transform(x, y)
    lats: list[object] = [f"{v:.6f}" for v in lat]
    lons: list[object] = [f"{v:.6f}" for v in lon]
    for i in np.flatnonzero(rng.random(n) < 0.01):
        lats[i] = lons[i] = ""
    return lats, lons


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=10_000, help="raster side in cells (default 10000)")
    p.add_argument("--points", type=int, default=100_000, help="random coordinates (default 100000)")
    p.add_argument("--workers", default="1,0", help="comma-separated worker counts; 0: every core (default 1,0)")
    p.add_argument("--repeat", type=int, default=2, help="runs per worker count; the best is reported")
    p.add_argument("--dir", default="/tmp/taxonstream-bench-landcover", help="where the raster is kept")
    args = p.parse_args()

    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    raster = make_raster(folder / f"cdl_{args.size}.tif", args.size)
    made = time.perf_counter() - started
    lats, lons = random_points(args.size, args.points)
    print(json.dumps({"raster": str(raster), "cells": args.size**2, "bytes": raster.stat().st_size,
                      "prepared_s": round(made, 1), "cores": cores()}))  # fmt: skip
    summary = {}
    for text in args.workers.split(","):
        workers = int(text) or cores()
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            covers = cover_points(str(raster), lats, lons, workers=workers)
            best = min(best, time.perf_counter() - t0)
        reasons = {r or "ok": covers.reasons.count(r) for r in sorted(set(covers.reasons))}
        rate = args.points / best
        summary[workers] = rate
        print(json.dumps({"workers": workers, "points": args.points, "best_s": round(best, 2),
                          "points_per_s": round(rate), "reasons": reasons}))  # fmt: skip
    if len(summary) > 1:
        one = summary.get(1)
        most = max(summary)
        if one:
            print(f"speed-up with {most} workers: {summary[most] / one:.1f}x over one")
    return 0


if __name__ == "__main__":
    sys.exit(main())
