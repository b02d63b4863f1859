"""taxonstream landcover — LatLonCover's land-cover mix around every point of a table, from a local CDL GeoTIFF.

  taxonstream landcover specimens.csv covered.csv --raster 2023_30m_cdls.tif --lat-col Lat --lon-col Lon

For each row, the share of a small (½ × ½ mile) and a big (2 × 2 mile) square box around the point that
the USDA Cropland Data Layer designates as agriculture (A), barren (B), developed (D), forest (F),
grassland (G), not designated (N), water (W) or wetland (WL): LatLonCover's columns bb_small, bb_big,
A_small … WL_small, A_big … WL_big, plus landcover_reason (empty, or why a row has no shares:
missing_coordinates, invalid_coordinates, outside_raster; partly_outside_raster when the box crosses the
raster's edge). Offline, every core used; the crosswalk and projection are in docs/landcover.md.
Input CSV, TSV or Parquet; output CSV, or Parquet by its suffix. Exit status 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from taxonstream.cli import flags
from taxonstream.fetching.inputs import InputError


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = flags.add_described(
        commands,
        "landcover",
        help="share of land cover classes around each point of a table (LatLonCover's columns, offline CDL)",
        description=__doc__,
    )
    p.add_argument("input", type=Path, help="CSV, TSV or Parquet with a latitude and a longitude column")
    p.add_argument("output", type=Path, help="the input's rows with the land-cover columns (CSV, or .parquet)")
    p.add_argument("--raster", required=True, help="a Cropland Data Layer GeoTIFF of any year (local path)")
    p.add_argument("--lat-col", help="latitude column, degrees (default: decimalLatitude, latitude or lat)")
    p.add_argument("--lon-col", help="longitude column, degrees (default: decimalLongitude, longitude or lon)")
    p.add_argument("--small-miles", type=float, default=0.5, help="side of the small box in miles (default 0.5)")
    p.add_argument("--big-miles", type=float, default=2.0, help="side of the big box in miles (default 2)")
    p.add_argument("--workers", type=int, help="processes measuring boxes (default: every core)")
    p.set_defaults(run=cmd_landcover)


def cmd_landcover(args: argparse.Namespace) -> int:
    from taxonstream.landcover.cover import BoxSizes, RasterError
    from taxonstream.landcover.tables import TableError, cover_table

    try:
        sizes = BoxSizes(args.small_miles, args.big_miles)
        covers = cover_table(args.input, args.output, args.raster, args.lat_col, args.lon_col, sizes, args.workers)
    except (RasterError, TableError, ValueError) as error:
        raise InputError(str(error)) from None
    reasons = Counter(r for r in covers.reasons if r)
    measured = sum(covers.shares_known(i) for i in range(len(covers)))
    detail = "".join(f", {n} {reason}" for reason, n in sorted(reasons.items()))
    print(f"{len(covers)} rows: {measured} with land cover{detail} -> {args.output}", file=sys.stderr)
    return 0
