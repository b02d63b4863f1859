"""The dashboard's and the embedding map's numbers, computed from the indexer's Stats and listings."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from taxonstream.index.filters import FIELDS
from taxonstream.v1 import indexer_pb2

from . import landcover_colours as cover
from .views import INTERNAL_COLUMNS, column_value

NO_VALUE = "(no value)"
# Categorical colours (Okabe-Ito, readable with the common colour-vision deficiencies), then grey for the rest.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
OTHER_COLOUR = "#9a9a9a"
LATITUDES = ("decimalLatitude", "dwc:decimalLatitude", "latitude", "lat")
LONGITUDES = ("decimalLongitude", "dwc:decimalLongitude", "longitude", "lon", "lng")


def columns(hits: Sequence[indexer_pb2.Hit]) -> list[str]:
    """Columns to count or colour by: the index's fields, then every metadata column the listing has."""
    seen: set[str] = set()
    for hit in hits:
        seen.update(hit.metadata)
    # The land-cover shares are offered apart (always, in their own group): not among the other columns.
    hidden = INTERNAL_COLUMNS | set(FIELDS) | set(cover.SHARE_COLUMNS)
    extra = sorted(c for c in seen - hidden if c not in ("license", "url"))
    return [*FIELDS, *extra]


def value_of(metadata: Mapping[str, str], column: str) -> str:
    """What a bar or a sample is grouped by: the column's value, or for a land-cover share its bin of 0.2."""
    if cover.is_share(column):
        return cover.bin_label(cover.share(metadata, column))
    return column_value(metadata, column) or NO_VALUE


def colours(values: Sequence[str]) -> dict[str, str]:
    """A colour per value, most frequent first; past the palette, grey."""
    return {v: PALETTE[i] if i < len(PALETTE) and v != NO_VALUE else OTHER_COLOUR for i, v in enumerate(values)}


@dataclass
class Row:
    value: str
    count: int
    percent: float
    segments: list[tuple[str, int, float, str]]  # colour value, images, percent of the row, colour


@dataclass
class Distribution:
    by: str
    colour_by: str
    total: int
    rows: list[Row]
    legend: dict[str, str]
    from_stats: bool  # the counts are the indexer's Stats (exact); else counted from the listing


def _values(hits: Sequence[indexer_pb2.Hit], column: str) -> list[str]:
    return [value_of(h.metadata, column) for h in hits]


def distribution(
    stats: indexer_pb2.StatsResponse, hits: Sequence[indexer_pb2.Hit], by: str, colour_by: str, top: int = 30
) -> Distribution:
    """Images per value of `by` (Stats' exact counts when it is an index field), each split by `colour_by`."""
    listed = _values(hits, by)
    if by in stats.by_field:
        counts = Counter(dict(stats.by_field[by].counts))
        missing = stats.images - sum(counts.values())
        if missing > 0:
            counts[NO_VALUE] = missing
        total, from_stats = stats.images, True
    else:
        counts, total, from_stats = Counter(listed), len(hits), False
    split: dict[str, Counter[str]] = {}
    colour_values: Counter[str] = Counter()
    if colour_by:
        for value, colour_value in zip(listed, _values(hits, colour_by), strict=True):
            split.setdefault(value, Counter())[colour_value] += 1
            colour_values[colour_value] += 1
    if cover.is_share(colour_by):  # the scale's bins, low to high, then "no data"
        legend = {v: c for v, c in cover.legend().items() if v in colour_values}
    else:
        legend = colours([v for v, _ in colour_values.most_common()])
    order = list(cover.legend()) if cover.is_share(by) else []
    rows = []
    for value, count in sorted(
        counts.items(),
        key=lambda kv: (order.index(kv[0]),) if order else (kv[0] == NO_VALUE, -kv[1], kv[0]),
    )[:top]:
        parts = split.get(value, Counter())
        seen = sum(parts.values()) or 1
        if cover.is_share(colour_by):  # a bar's bins low to high, so bars read as a scale
            ranked = sorted(parts.items(), key=lambda kv: list(legend).index(kv[0]))
        else:
            ranked = sorted(parts.items(), key=lambda kv: -kv[1])
        segments = [(c, n, 100.0 * n / seen, legend[c]) for c, n in ranked]
        rows.append(Row(value, count, 100.0 * count / total if total else 0.0, segments))
    return Distribution(by, colour_by, total, rows, legend, from_stats)


def samples(
    hits: Sequence[indexer_pb2.Hit], column: str, value: str, where: tuple[str, str] | None, limit: int = 12
) -> list[indexer_pb2.Hit]:
    """Images whose `column` is `value` (and whose `where` column is its value), in listing order."""
    found = []
    for hit in hits:
        if value_of(hit.metadata, column) != value:
            continue
        if where and value_of(hit.metadata, where[0]) != where[1]:
            continue
        found.append(hit)
        if len(found) == limit:
            break
    return found


def _number(metadata: Mapping[str, str], names: Sequence[str]) -> float | None:
    for name in names:
        try:
            return float(metadata[name])
        except (KeyError, ValueError):
            continue
    return None


@dataclass
class Point:
    x: float
    y: float
    value: str
    colour: str
    image_id: str
    label: str


def map_points(hits: Sequence[indexer_pb2.Hit], colour_by: str) -> tuple[list[Point], dict[str, str], int]:
    """Images with coordinates on a 720x360 equirectangular plane (x = 2*(lon+180), y = 2*(90-lat)).

    Coloured by a land-cover share, a point has the scale's colour of its own share (grey: no data)."""
    numeric = cover.is_share(colour_by)
    raw = []
    for hit in hits:
        lat, lon = _number(hit.metadata, LATITUDES), _number(hit.metadata, LONGITUDES)
        if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
            continue
        if numeric:
            found = cover.share(hit.metadata, colour_by)
            value, fill = cover.label(found), cover.colour(found)
        else:
            value, fill = (column_value(hit.metadata, colour_by) or NO_VALUE if colour_by else ""), ""
        raw.append((lon, lat, value, fill, hit))
    if numeric:
        present = {cover.bin_label(cover.share(h.metadata, colour_by)) for *_, h in raw}
        legend = {v: c for v, c in cover.legend().items() if v in present}
    else:
        legend = colours([v for v, _ in Counter(v for _, _, v, _, _ in raw).most_common()])
    points = [
        Point(
            round(2 * (lon + 180), 2),
            round(2 * (90 - lat), 2),
            v,
            fill or legend.get(v, PALETTE[0]),
            h.image_id,
            f"{lat:.3f}, {lon:.3f}" + (f" — {colour_by} {v}" if numeric else f" — {v}" if v else ""),
        )
        for lon, lat, v, fill, h in raw
    ]
    return points, legend, len(hits) - len(raw)


def project(vectors: np.ndarray, method: str = "pca") -> tuple[np.ndarray, str, list[float]]:
    """2-D coordinates of the rows of `vectors`: PCA by SVD (default), or UMAP when umap-learn is installed.

    Returns the coordinates scaled into [0, 1], the method used and PCA's explained-variance ratios.
    """
    if len(vectors) < 3:
        return np.full((len(vectors), 2), 0.5), "pca", []
    used, ratios = "pca", []
    if method == "umap":
        try:
            import umap  # noqa: PLC0415 - optional; only when asked for

            coords = umap.UMAP(n_components=2, random_state=0).fit_transform(vectors)
            used = "umap"
        except ImportError:
            method = "pca"
    if used == "pca":
        centred = vectors - vectors.mean(axis=0, keepdims=True)
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        coords = centred @ vt[:2].T
        energy = float((singular**2).sum()) or 1.0
        ratios = [float(s**2 / energy) for s in singular[:2]]
    low, high = coords.min(axis=0), coords.max(axis=0)
    return (coords - low) / np.where(high - low > 0, high - low, 1.0), used, ratios


def umap_available() -> bool:
    try:
        import umap  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True
