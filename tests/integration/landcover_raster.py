"""The small synthetic Cropland Data Layer the integration suite's indexer reads (conftest sets
TAXONSTREAM_LANDCOVER_RASTER to it before the stack starts): EPSG:5070, 30 m cells, CDL codes.

600 × 600 cells (18 km square) in Ohio's part of the Albers grid: deciduous forest (141) on the west
half, open water (111) on the east half. A point well inside either half has a small and a big box of
that class only.
"""

from __future__ import annotations

import os
from pathlib import Path

X0, Y0, CELL, SIZE = 1_100_000.0, 1_950_000.0, 30.0, 600
FOREST, WATER = 141, 111


def point(col: float, row: float) -> tuple[str, str]:
    """Latitude and longitude (WGS 84, as Darwin Core writes them) of a cell position."""
    from pyproj import Transformer

    to_wgs84 = Transformer.from_crs("EPSG:5070", "EPSG:4326", always_xy=True)
    lon, lat = to_wgs84.transform(X0 + col * CELL, Y0 - row * CELL)
    return f"{lat:.7f}", f"{lon:.7f}"


FOREST_CELL = (150.0, 300.0)  # 150 cells (4.5 km) from the water: the 2-mile box (3.2 km) stays in forest
WATER_CELL = (450.0, 300.0)


def write(path: Path) -> Path:
    """The raster at `path`, written once (a running indexer may have it open: never rewritten)."""
    if path.is_file():
        return path
    import numpy as np
    import rasterio
    from affine import Affine

    data = np.full((SIZE, SIZE), FOREST, dtype=np.uint8)
    data[:, SIZE // 2 :] = WATER
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.part-{os.getpid()}")
    profile = dict(driver="GTiff", width=SIZE, height=SIZE, count=1, dtype="uint8", crs="EPSG:5070", nodata=0)
    with rasterio.open(partial, "w", transform=Affine(CELL, 0, X0, 0, -CELL, Y0), tiled=True, **profile) as out:
        out.write(data, 1)
    partial.replace(path)
    return path
