"""Colouring by a land-cover share (docs/landcover.md): a numeric colour scale instead of a colour per value.

A share is a number in [0, 1] (a decimal string in the index metadata). Points get the scale's colour of
their own value; bars and legends group shares into five bins of 0.2. Records without coordinates (and
those outside the raster) have no share: they are "no data", in grey, never 0 (0 would read as "no forest").
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from taxonstream.landcover.crosswalk import CLASS_NAMES, SHARE_COLUMNS

NO_DATA = "no data"
NO_DATA_COLOUR = "#bdbdbd"
# Viridis at 0, 0.25, 0.5, 0.75, 1: perceptually even, readable with the common colour-vision deficiencies
# and in greyscale; interpolated linearly in sRGB between these five stops.
STOPS: tuple[str, ...] = ("#440154", "#3b528b", "#21918c", "#5ec962", "#fde725")
BINS = 5  # bins of 0.2 for bars and legends: [0, 0.2) … [0.8, 1]


def is_share(column: str) -> bool:
    return column in SHARE_COLUMNS


def describe(column: str) -> str:
    """`F_small` → "F_small (forest, ½-mile box)", for the colour choices."""
    klass, _, box = column.rpartition("_")
    size = "½-mile" if box == "small" else "2-mile"
    return f"{column} ({CLASS_NAMES.get(klass, klass)}, {size} box)"


def share(metadata: Mapping[str, str], column: str) -> float | None:
    """The column's share, or None when it is missing, not a number or outside [0, 1]."""
    try:
        value = float(str(metadata.get(column, "")).strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and 0.0 <= value <= 1.0 else None


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def colour(value: float | None) -> str:
    """The scale's colour of a share (clamped to [0, 1]); grey for None."""
    if value is None:
        return NO_DATA_COLOUR
    position = min(max(value, 0.0), 1.0) * (len(STOPS) - 1)
    low = min(int(position), len(STOPS) - 2)
    t = position - low
    a, b = _rgb(STOPS[low]), _rgb(STOPS[low + 1])
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(a, b, strict=True))


def _bin(value: float) -> int:
    return min(int(value * BINS), BINS - 1)  # 1.0 belongs to the last bin


def bin_labels() -> list[str]:
    return [f"{i / BINS:g}–{(i + 1) / BINS:g}" for i in range(BINS)]


def bin_label(value: float | None) -> str:
    """The bin a share falls in ("0.8–1"), or "no data"."""
    return NO_DATA if value is None else bin_labels()[_bin(value)]


def legend() -> dict[str, str]:
    """Every bin (low to high) with the colour of its middle, then "no data"."""
    middles = [(i + 0.5) / BINS for i in range(BINS)]
    return {**{label: colour(m) for label, m in zip(bin_labels(), middles, strict=True)}, NO_DATA: NO_DATA_COLOUR}


def label(value: float | None) -> str:
    """A share as shown beside a point: three decimals, or "no data"."""
    return NO_DATA if value is None else f"{value:.3f}"


@dataclass
class Summary:
    """How many records have a share, and how the shares spread: for the legend's line."""

    column: str
    with_share: int
    without: int
    low: float | None
    high: float | None
    mean: float | None
    bins: dict[str, int]


def summarise(metadatas: Iterable[Mapping[str, str]], column: str) -> Summary:
    values = [share(m, column) for m in metadatas]
    found = [v for v in values if v is not None]
    bins = Counter(bin_label(v) for v in values)
    return Summary(
        column,
        len(found),
        len(values) - len(found),
        min(found) if found else None,
        max(found) if found else None,
        sum(found) / len(found) if found else None,
        {name: bins.get(name, 0) for name in legend()},
    )


def gradient(steps: int = 11) -> list[tuple[float, str]]:
    """(offset in percent, colour) pairs for an SVG linearGradient of the scale."""
    return [(100.0 * i / (steps - 1), colour(i / (steps - 1))) for i in range(steps)]
