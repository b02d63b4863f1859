"""Land cover for many points: coordinates parsed and projected once, boxes measured on every core.

Points are sorted by where they fall (bands of 512 raster rows, west to east within a band) and cut into
chunks, so each worker's reads stay within a few of GDAL's cached blocks; each worker process opens the
raster once (its initializer) and measures the chunks it is handed. Few points (under `PARALLEL_FROM`)
are measured in this process: starting the workers costs about a second.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np

from taxonstream.landcover.cover import OK, BoxSizes, RasterCover, box_text, parse_points
from taxonstream.landcover.crosswalk import BOX_COLUMNS, CLASSES, REASON_COLUMN, SHARE_COLUMNS

PARALLEL_FROM = 4_096
CHUNK = 2_048  # points a worker measures per task: ~50 tasks for 100k points, enough to balance 16 cores
BAND_ROWS = 512  # the spatial sort's band height, in raster rows


@dataclass
class Covers:
    """The projected points, their shares (points × small/big × 8 classes; NaN where none) and reasons."""

    x: np.ndarray
    y: np.ndarray
    shares: np.ndarray
    reasons: list[str]
    sizes: BoxSizes

    def __len__(self) -> int:
        return len(self.reasons)

    def columns(self, i: int) -> dict[str, object]:
        """Point i as LatLonCover's columns (bb_small, bb_big, A_small … WL_big; empty where none) + reason."""
        halves = self.sizes.halves()
        row: dict[str, object] = {
            name: box_text(float(self.x[i]), float(self.y[i]), half) if self.shares_known(i) else ""
            for name, half in zip(BOX_COLUMNS, halves, strict=True)
        }
        flat = self.shares[i].reshape(-1)
        row.update({name: float(v) if math.isfinite(v) else "" for name, v in zip(SHARE_COLUMNS, flat, strict=True)})
        row[REASON_COLUMN] = self.reasons[i]
        return row

    def shares_known(self, i: int) -> bool:
        return bool(np.isfinite(self.shares[i]).all())

    def metadata(self, i: int) -> dict[str, str]:
        """The sixteen shares as index metadata (shortest round-trip decimals), or the reason there are none."""
        if not self.shares_known(i):
            return {REASON_COLUMN: self.reasons[i]}
        values = {name: repr(float(v)) for name, v in zip(SHARE_COLUMNS, self.shares[i].reshape(-1), strict=True)}
        return {**values, REASON_COLUMN: self.reasons[i]} if self.reasons[i] else values


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_worker: RasterCover | None = None


def _open(raster: str, sizes: BoxSizes) -> None:
    global _worker
    _worker = RasterCover(raster, sizes)


def _measure(xy: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    assert _worker is not None, "worker initializer did not run"
    return _worker.measure(*xy)


def cover_points(
    raster: str,
    lats: list[object],
    lons: list[object],
    sizes: BoxSizes | None = None,
    workers: int | None = None,
    reader: RasterCover | None = None,
) -> Covers:
    """Shares around every point; `workers` processes (default: every core) when there are many points.
    `reader`: an already open raster to measure few points with (the indexer keeps one)."""
    sizes = reader.sizes if reader is not None else sizes or BoxSizes()
    lat, lon, reasons = parse_points(lats, lons)
    own = reader is None
    rc = RasterCover(raster, sizes) if reader is None else reader
    try:
        usable = np.array([r == OK for r in reasons], dtype=bool)
        x = np.full(len(lat), np.nan)
        y = np.full(len(lat), np.nan)
        if usable.any():
            x[usable], y[usable] = rc.project(lat[usable], lon[usable])
        workers = cores() if workers is None else max(1, workers)
        if workers == 1 or len(lat) < PARALLEL_FROM:
            shares, measured = rc.measure(x, y)
        else:
            shares, measured = _parallel(rc, raster, sizes, x, y, workers)
    finally:
        if own:
            rc.close()
    merged = [first or later for first, later in zip(reasons, measured, strict=True)]
    return Covers(x, y, shares, merged, sizes)


def _parallel(
    rc: RasterCover, raster: str, sizes: BoxSizes, x: np.ndarray, y: np.ndarray, workers: int
) -> tuple[np.ndarray, list[str]]:
    g = rc.grid
    finite = np.isfinite(x) & np.isfinite(y)
    band = np.where(finite, np.floor((g.y0 - np.where(finite, y, g.y0)) / (BAND_ROWS * g.height_m)), -1)
    order = np.lexsort((np.where(finite, x, 0.0), band))
    chunks = np.array_split(order, math.ceil(len(order) / CHUNK))
    shares = np.full((len(x), 2, len(CLASSES)), np.nan)
    reasons = [OK] * len(x)
    # spawn: a forked child would inherit the parent's open GDAL handles and caches.
    spawn = get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=spawn, initializer=_open, initargs=(raster, sizes)) as pool:
        for idx, (part, why) in zip(chunks, pool.map(_measure, [(x[c], y[c]) for c in chunks]), strict=True):
            shares[idx] = part
            for j, reason in zip(idx, why, strict=True):
                reasons[j] = reason
    return shares, reasons
