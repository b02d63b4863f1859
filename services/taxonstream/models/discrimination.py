"""Does an image encoder tell images apart? The nearest-neighbour check for the stand-in encoder.

For N synthetic shape images: embed each original and a near-duplicate of it (re-encoded, rescaled,
shifted), L2-normalise, and ask whether each near-duplicate's nearest original is its own. A collapsed
encoder (every image on the same direction) fails this; so does one that is over-sensitive to the small
changes a re-upload brings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .preprocess import clip_pixel_values
from .synthetic import near_duplicate, shapes_image

EmbedFn = Callable[[np.ndarray], np.ndarray]  # pixel_values [B, 3, 224, 224] -> embeddings [B, D]


@dataclass(frozen=True)
class DiscriminationReport:
    images: int
    top1_accuracy: float  # near-duplicate -> its own original is the nearest one
    self_match_accuracy: float  # original -> itself is the nearest one (ties would break this)
    mean_cosine_distinct: float  # between different originals
    max_cosine_distinct: float
    mean_cosine_near_duplicate: float  # original vs its own near-duplicate
    min_cosine_near_duplicate: float


def _normalised(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def embed_images(embed: EmbedFn, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = np.stack([clip_pixel_values(image) for image in images[start : start + batch_size]])
        chunks.append(embed(batch))
    return np.concatenate(chunks)


def nearest_neighbour_check(embed: EmbedFn, count: int = 300, seed: int = 0) -> DiscriminationReport:
    originals = [shapes_image(seed * 100_003 + i) for i in range(count)]
    duplicates = [near_duplicate(image, seed=i) for i, image in enumerate(originals)]
    base = _normalised(embed_images(embed, originals))
    query = _normalised(embed_images(embed, duplicates))

    cross = query @ base.T
    self_sim = base @ base.T
    distinct = self_sim[~np.eye(count, dtype=bool)]
    own = np.diag(cross)
    expected = np.arange(count)
    return DiscriminationReport(
        images=count,
        top1_accuracy=float(np.mean(cross.argmax(axis=1) == expected)),
        self_match_accuracy=float(np.mean(self_sim.argmax(axis=1) == expected)),
        mean_cosine_distinct=float(distinct.mean()),
        max_cosine_distinct=float(distinct.max()),
        mean_cosine_near_duplicate=float(own.mean()),
        min_cosine_near_duplicate=float(own.min()),
    )


def torch_embed_fn(module: object) -> EmbedFn:
    """Wrap a torch module as an EmbedFn (torch is imported only when this is used)."""
    import torch

    def embed(pixel_values: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(pixel_values)).numpy()  # type: ignore[operator]

    return embed
