"""Synthetic test images: random coloured shapes on random backgrounds, reproducible from a seed.

Used to check that the stand-in encoder tells distinct images apart, and handy as demo input.
"""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw


def _random_colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def shapes_image(seed: int, size: tuple[int, int] = (320, 240), max_shapes: int = 6) -> Image.Image:
    """An RGB image of 1..max_shapes ellipses, rectangles and triangles; the same seed gives the same image."""
    rng = random.Random(seed)
    width, height = size
    image = Image.new("RGB", size, _random_colour(rng))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, max_shapes)):
        x0, x1 = sorted(rng.randrange(width) for _ in range(2))
        y0, y1 = sorted(rng.randrange(height) for _ in range(2))
        box = (x0, y0, max(x1, x0 + 4), max(y1, y0 + 4))
        kind = rng.choice(("ellipse", "rectangle", "triangle"))
        if kind == "ellipse":
            draw.ellipse(box, fill=_random_colour(rng))
        elif kind == "rectangle":
            draw.rectangle(box, fill=_random_colour(rng))
        else:
            draw.polygon(
                [(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=_random_colour(rng)
            )
    return image


def near_duplicate(image: Image.Image, seed: int, jpeg_quality: int = 85) -> Image.Image:
    """The same picture as a re-upload would give it: JPEG re-encoded, slightly rescaled and shifted.

    These are the changes a second copy of one specimen photo typically carries, so the original should
    stay the nearest neighbour of the result.
    """
    rng = random.Random(seed)
    width, height = image.size
    scale = rng.uniform(0.85, 1.15)
    resized = image.resize((max(8, round(width * scale)), max(8, round(height * scale))), Image.Resampling.BILINEAR)
    dx, dy = rng.randint(0, 3), rng.randint(0, 3)
    shifted = resized.crop((dx, dy, resized.width, resized.height))
    buffer = io.BytesIO()
    shifted.save(buffer, format="JPEG", quality=jpeg_quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")
