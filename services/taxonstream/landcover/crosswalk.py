"""The crosswalk from Cropland Data Layer codes to LatLonCover's eight coarse classes, and the output columns.

The table is `cdl_classes.csv` beside this module: each named code of the USDA NASS CDL legend with the
coarse class Imageomics' LatLonCover gives it (its CDL_subcategories table). Anything not listed — code 0
(background), codes the legend leaves unnamed, the raster's own nodata — is N, not designated.
"""

from __future__ import annotations

import csv
from functools import cache
from pathlib import Path

import numpy as np

# LatLonCover's classes, in its column order: agriculture, barren, developed, forest, grassland,
# not designated, water, wetland.
CLASSES: tuple[str, ...] = ("A", "B", "D", "F", "G", "N", "W", "WL")
CLASS_NAMES: dict[str, str] = {
    "A": "agriculture",
    "B": "barren",
    "D": "developed",
    "F": "forest",
    "G": "grassland",
    "N": "not designated",
    "W": "water",
    "WL": "wetland",
}
NOT_DESIGNATED = CLASSES.index("N")
BOXES: tuple[str, ...] = ("small", "big")
SHARE_COLUMNS: tuple[str, ...] = tuple(f"{c}_{box}" for box in BOXES for c in CLASSES)
BOX_COLUMNS: tuple[str, ...] = ("bb_small", "bb_big")
# LatLonCover adds bb_small and bb_big first, then the small box's shares, then the big box's.
COLUMNS: tuple[str, ...] = (*BOX_COLUMNS, *SHARE_COLUMNS)
REASON_COLUMN = "landcover_reason"
TABLE = Path(__file__).with_name("cdl_classes.csv")
CODES = 256  # the CDL is an 8-bit raster: codes 0–255


@cache
def code_classes() -> dict[int, tuple[str, str]]:
    """CDL code → (legend name, coarse class) for every named code."""
    with TABLE.open(newline="") as handle:
        rows = csv.DictReader(line for line in handle if not line.startswith("#"))
        table = {int(row["code"]): (row["name"], row["class"]) for row in rows}
    unknown = {c for _, c in table.values()} - set(CLASSES)
    if unknown:
        raise ValueError(f"{TABLE}: classes {sorted(unknown)} are not LatLonCover's {CLASSES}")
    return table


def lookup(nodata: float | None = None) -> np.ndarray:
    """Code → class index (into CLASSES) for codes 0–255; the raster's nodata value, if a code, is N."""
    table = np.full(CODES, NOT_DESIGNATED, dtype=np.uint8)
    for code, (_, klass) in code_classes().items():
        table[code] = CLASSES.index(klass)
    if nodata is not None and float(nodata).is_integer() and 0 <= nodata < CODES:
        table[int(nodata)] = NOT_DESIGNATED
    return table
