"""Shares of LatLonCover's classes in a small and a big square box around each point, read from a CDL GeoTIFF.

Boxes are squares in the raster's own projection (the CDL's is the USGS version of the contiguous-USA
Albers equal-area conic, EPSG:5070 on NAD83), side `small_miles` / `big_miles` (LatLonCover: ½ and 2
miles), centred on the projected point — equal-area, so a share of cells is a share of land.

Which cells a box holds: those whose centre lies in it, west and south edges inclusive, east and north
exclusive (half-open, so two boxes side by side never share a cell). A box of ½ mile (804.7 m) on the
30 m CDL holds 26–27 × 26–27 cells; of 2 miles, 107–108 × 107–108.

Nodata and the box's cells beyond the raster's edge count as N (not designated): LatLonCover reads
CropScape's counts, where the CDL's background (code 0, its nodata) is N, so shares always sum to 1 over
the box's whole area. A point inside the raster whose box crosses the edge gets its shares and the reason
`partly_outside_raster`; a point off the raster gets no shares and `outside_raster`.

Windowed reads: one per group of nearby points (`groups`), never the whole raster — a 30 m CDL's big box
is 108 × 108 bytes, the national layer 150,000 × 100,000.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import rasterio
from pyproj import Transformer
from rasterio.windows import Window

from taxonstream.landcover.crosswalk import CLASSES, CODES, NOT_DESIGNATED, lookup

MILE_M = 1609.344  # the international mile in metres
OK = ""
PARTLY_OUTSIDE = "partly_outside_raster"
OUTSIDE = "outside_raster"
MISSING = "missing_coordinates"
INVALID = "invalid_coordinates"
BAND_ROWS = 512  # the CDL's block height: points are grouped within bands of blocks
GROUP_CELLS = 1 << 20  # a group's window may always grow to 1 MB (4 blocks of 512 × 512)…
DENSITY = 4  # …or to 4× the cells its points' own windows hold


class RasterError(ValueError):
    """A raster this module cannot measure boxes on (not north-up, not in metres, unreadable)."""


@dataclass(frozen=True)
class BoxSizes:
    small_miles: float = 0.5
    big_miles: float = 2.0

    def __post_init__(self) -> None:
        for name in ("small_miles", "big_miles"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"--{name.replace('_', '-')} must be a positive number of miles, not {value}")

    def halves(self) -> tuple[float, float]:
        """Half the side of the small and the big box, in metres."""
        return self.small_miles * MILE_M / 2, self.big_miles * MILE_M / 2


@dataclass(frozen=True)
class Grid:
    """A north-up raster's cells: top-left corner (x0, y0), cell width and height (positive), size."""

    x0: float
    y0: float
    width_m: float
    height_m: float
    cols: int
    rows: int

    def ranges(self, x: np.ndarray, y: np.ndarray, half: float) -> np.ndarray:
        """(row0, row1, col0, col1) of the cells whose centres lie in each box (half-open, unclipped)."""
        col0 = np.ceil((x - half - self.x0) / self.width_m - 0.5)
        col1 = np.ceil((x + half - self.x0) / self.width_m - 0.5)
        row0 = np.floor((self.y0 - y - half) / self.height_m - 0.5) + 1
        row1 = np.floor((self.y0 - y + half) / self.height_m - 0.5) + 1
        return np.stack([row0, row1, col0, col1], axis=1).astype(np.int64)

    def inside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        col = (x - self.x0) / self.width_m
        row = (self.y0 - y) / self.height_m
        return (col >= 0) & (col < self.cols) & (row >= 0) & (row < self.rows)


def coordinate(value: object) -> float | None:
    """A coordinate cell as a float; None when empty. Non-numbers raise ValueError."""
    if value is None:
        return None
    if isinstance(value, float | int):
        return None if isinstance(value, float) and math.isnan(value) else float(value)
    text = str(value).strip()
    return float(text) if text else None


def parse_points(lats: list[object], lons: list[object]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Latitudes and longitudes as floats (NaN where unusable) and each point's reason so far."""
    lat = np.full(len(lats), np.nan)
    lon = np.full(len(lats), np.nan)
    reasons = [OK] * len(lats)
    for i, (la, lo) in enumerate(zip(lats, lons, strict=True)):
        try:
            a, b = coordinate(la), coordinate(lo)
        except ValueError:
            reasons[i] = INVALID
            continue
        if a is None or b is None:
            reasons[i] = MISSING
        elif not (math.isfinite(a) and math.isfinite(b) and -90 <= a <= 90 and -180 <= b <= 180):
            reasons[i] = INVALID
        else:
            lat[i], lon[i] = a, b
    return lat, lon, reasons


class RasterCover:
    """One open CDL raster (not thread-safe: one per thread or process)."""

    def __init__(self, path: str, sizes: BoxSizes | None = None) -> None:
        self.path = str(path)
        self.sizes = sizes or BoxSizes()
        try:
            self.dataset = rasterio.open(self.path)
        except rasterio.errors.RasterioIOError as error:
            raise RasterError(f"{path}: cannot open as a raster ({error})") from None
        try:
            self.grid = grid_of(self.dataset, self.path)
        except RasterError:
            self.dataset.close()
            raise
        self.lut = lookup(self.dataset.nodata)
        self._to_raster = Transformer.from_crs("EPSG:4326", self.dataset.crs, always_xy=True)

    def project(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Longitude/latitude (WGS 84) to the raster's x/y; NaN stays NaN, unprojectable becomes inf."""
        if len(lon) == 1:  # pyproj takes its scalar path for one-element arrays (NumPy deprecates the cast)
            x, y = self._to_raster.transform(float(lon[0]), float(lat[0]))
            return np.array([x], dtype=np.float64), np.array([y], dtype=np.float64)
        x, y = self._to_raster.transform(lon, lat)
        return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)

    def classes(self, window: Window) -> np.ndarray:
        """Class index (into CLASSES) of each cell of a window inside the raster."""
        data = self.dataset.read(1, window=window)
        if data.dtype == np.uint8:
            return self.lut[data]
        codes = data.astype(np.int64, copy=False)
        valid = (codes >= 0) & (codes < CODES) & (data == codes)
        return np.where(valid, self.lut[np.clip(codes, 0, CODES - 1)], NOT_DESIGNATED).astype(np.uint8)

    def measure(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Shares (points × 2 boxes × 8 classes; NaN where none) and a reason for each projected point."""
        n = len(x)
        shares = np.full((n, 2, len(CLASSES)), np.nan)
        reasons = [OK] * n
        finite = np.isfinite(x) & np.isfinite(y)
        inside = np.zeros(n, dtype=bool)
        inside[finite] = self.grid.inside(x[finite], y[finite])
        for i in np.flatnonzero(~inside):
            reasons[i] = OUTSIDE if finite[i] else INVALID
        xs, ys = np.where(finite, x, self.grid.x0), np.where(finite, y, self.grid.y0)  # no NaN casts
        boxes = np.stack([self.grid.ranges(xs, ys, half) for half in self.sizes.halves()], axis=1)  # n × 2 × 4
        g = self.grid
        # Each point's window: the union of its boxes, clipped to the raster.
        windows = np.stack(
            [
                np.maximum(boxes[:, :, 0].min(axis=1), 0),
                np.minimum(boxes[:, :, 1].max(axis=1), g.rows),
                np.maximum(boxes[:, :, 2].min(axis=1), 0),
                np.minimum(boxes[:, :, 3].max(axis=1), g.cols),
            ],
            axis=1,
        )
        counts = np.zeros((n, 2, len(CLASSES)), dtype=np.int64)
        spans = boxes.tolist()  # Python ints: numpy scalars in this loop cost ~3x the time (measured)
        rows, cols, k = g.rows, g.cols, len(CLASSES)
        for group, (r0, r1, c0, c1) in groups(np.flatnonzero(inside), windows):
            cells = self.classes(Window(c0, r0, c1 - c0, r1 - r0))
            for i in group:
                for b, (br0, br1, bc0, bc1) in enumerate(spans[i]):
                    sub = cells[max(br0, 0) - r0 : min(br1, rows) - r0, max(bc0, 0) - c0 : min(bc1, cols) - c0]
                    counts[i, b] = np.bincount(sub.ravel(), minlength=k)
        totals = (boxes[:, :, 1] - boxes[:, :, 0]) * (boxes[:, :, 3] - boxes[:, :, 2])
        # The box's cells beyond the raster's edge: not designated, like nodata.
        beyond = totals - counts.sum(axis=2)
        counts[:, :, NOT_DESIGNATED] += np.where(inside[:, None], beyond, 0)
        shares[inside] = counts[inside] / totals[inside][:, :, None]
        for i in np.flatnonzero(inside & (beyond > 0).any(axis=1)):
            reasons[i] = PARTLY_OUTSIDE
        return shares, reasons

    def close(self) -> None:
        self.dataset.close()

    def __enter__(self) -> RasterCover:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def groups(points: np.ndarray, windows: np.ndarray) -> Iterator[tuple[list[int], tuple[int, int, int, int]]]:
    """Nearby points in groups read with one window (row0, row1, col0, col1) each.

    Points are taken in bands of `BAND_ROWS` rows, west to east; a group grows while its window stays
    under `GROUP_CELLS`, or under `DENSITY` × its points' own windows: one read of a 1 MB window (a few
    GDAL blocks) instead of hundreds of reads of 108 × 108, without reading far more than the points need
    when they are sparse. Measured: 11.7k points/s one read per point, see tools/bench/landcover.
    """
    if len(points) == 0:
        return
    order = points[np.lexsort((windows[points, 2], windows[points, 0] // BAND_ROWS))]
    areas = (windows[:, 1] - windows[:, 0]) * (windows[:, 3] - windows[:, 2])
    group: list[int] = []
    own = 0
    r0 = r1 = c0 = c1 = 0
    for i in order:
        w = windows[i]
        if group:
            nr0, nr1, nc0, nc1 = min(r0, w[0]), max(r1, w[1]), min(c0, w[2]), max(c1, w[3])
            if (nr1 - nr0) * (nc1 - nc0) <= max(GROUP_CELLS, DENSITY * (own + areas[i])):
                group.append(int(i))
                own += int(areas[i])
                r0, r1, c0, c1 = nr0, nr1, nc0, nc1
                continue
            yield group, (int(r0), int(r1), int(c0), int(c1))
        group, own = [int(i)], int(areas[i])
        r0, r1, c0, c1 = w
    yield group, (int(r0), int(r1), int(c0), int(c1))


def grid_of(dataset: rasterio.DatasetReader, path: str) -> Grid:
    t = dataset.transform
    if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
        raise RasterError(f"{path}: not a north-up raster (transform {tuple(t)[:6]}); warp it first")
    crs = dataset.crs
    if crs is None or not crs.is_projected:
        raise RasterError(f"{path}: boxes in miles need a projected raster (the CDL's Albers), not {crs}")
    if abs(crs.linear_units_factor[1] - 1.0) > 1e-12:
        raise RasterError(f"{path}: raster units are {crs.linear_units_factor[0]}, not metres")
    return Grid(t.c, t.f, t.a, -t.e, dataset.width, dataset.height)


def box_text(x: float, y: float, half: float) -> str:
    """LatLonCover's bb_small/bb_big: `xmin,ymin,xmax,ymax` in the raster's projection (metres)."""
    if not (math.isfinite(x) and math.isfinite(y)):
        return ""
    return ",".join(f"{v:.3f}" for v in (x - half, y - half, x + half, y + half))  # millimetres
