"""Splitting a polled batch into model sub-batches by decoded pixels, so a batch of huge photos cannot
exhaust a pod: 32 photos of 100 MP are ~10 GB as RGB, while 32 of 0.12 MP are 12 MB."""

from __future__ import annotations

from collections.abc import Sequence


def split_by_pixels(pixels: Sequence[int], budget: int) -> list[range]:
    """Consecutive index ranges, in order, each summing to at most `budget` pixels; an item larger than
    the budget on its own gets a range to itself (it has to be processed somehow, and alone is cheapest).

    A size of 0 or less (unknown) counts as 0: the caller supplies its own estimate when that matters.
    """
    if budget < 1:
        raise ValueError(f"a pixel budget must be at least 1, not {budget}")
    ranges: list[range] = []
    start, total = 0, 0
    for i, size in enumerate(pixels):
        size = max(0, size)
        if i > start and total + size > budget:
            ranges.append(range(start, i))
            start, total = i, 0
        total += size
    if start < len(pixels):
        ranges.append(range(start, len(pixels)))
    return ranges
