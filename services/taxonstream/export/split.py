"""Train/val/test assignment for an export, stratified by species.

The split itself is `eval classify`'s (`stratified_split`: per species 70/10/20 by default, rounded half
up, at least one image left for training), so an exported set and an evaluation drawn with the same seed
agree. Images are ordered by id before drawing, which makes the split depend only on the set of images and
the seed, not on the order the index lists them in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from taxonstream.evaluation.classify import SPLITS, stratified_split
from taxonstream.index.filters import facets

__all__ = ["SPLITS", "assign", "parse_fractions", "stratum"]

UNLABELLED = "unlabelled-at-species"


def parse_fractions(text: str) -> tuple[float, float, float]:
    """`70/10/20` (percent) or `0.7/0.1/0.2` → (train, val, test) fractions summing to 1."""
    parts = text.replace(",", "/").replace(":", "/").split("/")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"--split wants TRAIN/VAL/TEST such as 70/10/20, not {text!r}") from None
    if len(values) != 3 or any(v < 0 for v in values) or sum(values) <= 0:
        raise ValueError(f"--split wants three non-negative shares TRAIN/VAL/TEST such as 70/10/20, not {text!r}")
    total = sum(values)
    if not (abs(total - 100) < 1e-6 or abs(total - 1) < 1e-6):
        raise ValueError(f"--split shares must add up to 100 (or 1), not {total:g}: {text!r}")
    return (values[0] / total, values[1] / total, values[2] / total)


def stratum(metadata: Mapping[str, str]) -> str:
    """The species an image is stratified by, read the way the index derives its `species` filter."""
    return facets(metadata).get("species", "")


def assign(
    image_ids: Sequence[str], labels: Sequence[str], fractions: tuple[float, float, float], seed: int
) -> list[str]:
    """Each image's part ('train', 'val' or 'test'), in the order given."""
    if len(image_ids) != len(labels):
        raise ValueError("one label per image")
    order = np.argsort(np.asarray(image_ids, dtype=object), kind="stable")
    ordered = np.asarray(labels, dtype=object)[order]
    split = stratified_split(ordered, fractions, seed=seed)
    # Images without a species are split among themselves, as `eval classify` does with its unlabelled rows.
    missing = split == ""
    if missing.any():
        rest = stratified_split(np.where(missing, UNLABELLED, ""), fractions, seed=seed + 1)
        split = np.where(missing, rest, split)
    out = np.empty(len(order), dtype=object)
    out[order] = split
    return [str(s) for s in out]
