"""The benchmark's images and URL list: drawn anew for every run under .bench/e2e/.

Two sets:
  small   400 x 300 coloured shapes (the stand-in generator), about 10-20 kB each
  photo   3000 x 2000, shapes under a paper-like grain and sensor noise at JPEG quality 90: 1.2-1.7 MB each,
          the size of a specimen photo (pure shapes would compress to ~100 kB and flatter the fetch and decode)

Every run draws its own pictures (seeded by the run id) and stamps them with a JPEG comment segment (COM,
right after SOI) naming the run. New bytes alone are not enough: with the same pixels in every run each image
is a near duplicate of itself in every earlier run, and the checksummer's near-duplicate links (2 PUTs each)
grow with the number of runs (measured: 5.9 link PUTs per record after 3 runs), so no two runs compare.
"""

from __future__ import annotations

import hashlib
import io
import random
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from taxonstream.models.synthetic import shapes_image

REPO = Path(__file__).resolve().parents[3]
CACHE = REPO / ".bench" / "e2e"
SIZES = {"small": (400, 300), "photo": (3000, 2000)}
# Noise sigma (grey levels) drawn per photo: 4.5 gives ~1.2 MB, 7 ~1.7 MB at quality 90 (measured).
PHOTO_SIGMA = (4.5, 7.0)


def photo_image(seed: int, size: tuple[int, int] = SIZES["photo"]) -> Image.Image:
    """Shapes drawn at 1/8 scale and blown up (soft edges, like a lens), plus two scales of noise."""
    rng = np.random.default_rng(seed)
    width, height = size
    base = np.asarray(shapes_image(seed, size=(width // 8, height // 8)).resize(size, Image.Resampling.BILINEAR))
    sigma = float(rng.uniform(*PHOTO_SIGMA))
    grain = rng.normal(0.0, 2 * sigma, (height // 4, width // 4)).astype(np.float32)
    grain = np.asarray(Image.fromarray(grain).resize(size, Image.Resampling.BILINEAR))[:, :, None]
    noise = rng.normal(0.0, sigma, (height, width, 3)).astype(np.float32)
    return Image.fromarray(np.clip(base + grain + noise, 0, 255).astype(np.uint8))


def _encode(kind: str, seed: int) -> bytes:
    out = io.BytesIO()
    image = photo_image(seed) if kind == "photo" else shapes_image(seed, size=SIZES[kind])
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def run_seed(run_id: str) -> int:
    """A seed of its own for every run, so no run's pictures resemble another's."""
    return int(hashlib.sha256(run_id.encode()).hexdigest()[:12], 16)


def drawn_set(kind: str, count: int, run_id: str, progress: bool = True) -> Iterator[bytes]:
    """`count` distinct JPEGs of `kind` for this run (photo: ~0.5 s each, drawn before anything is timed)."""
    base = run_seed(run_id)
    for i in range(count):
        if progress and i % 100 == 0 and kind == "photo":
            print(f"drawing {kind} images {i}/{count}", flush=True)
        yield _encode(kind, base + 7919 * i)


def stamped(jpeg: bytes, run_id: str) -> bytes:
    """The same JPEG with a comment segment naming the run: same pixels, new bytes."""
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    comment = f"taxonstream bench e2e run {run_id}".encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + jpeg[2:]


@dataclass(frozen=True)
class Entry:
    url: str
    kind: str  # "image" (first copy), "duplicate" (same bytes from another host) or "missing" (answers 404)
    host: str


@dataclass(frozen=True)
class Plan:
    run_id: str
    directory: Path  # this run's stamped files, served by the sites
    entries: list[Entry]
    image_bytes: int  # total size of the distinct images

    def count(self, kind: str) -> int:
        return sum(1 for e in self.entries if e.kind == kind)


def make_plan(
    kind: str,
    distinct: int,
    duplicates: int,
    missing: int,
    origin_hosts: list[str],
    mirror_hosts: list[str],
    port: int,
    run_id: str,
) -> Plan:
    """This run's pictures in a run directory, and the shuffled URL list that serves them.

    Image i lives on origin host i mod len(origin_hosts); duplicate j is image j*step fetched from a
    mirror host (another host name, the same bytes); the missing URLs name files no host has.
    """
    if duplicates > distinct:
        raise ValueError(f"{duplicates} duplicates need at least as many distinct images, not {distinct}")
    directory = CACHE / f"run-{run_id}"
    directory.mkdir(parents=True, exist_ok=True)
    names, total = [], 0
    for i, drawn in enumerate(drawn_set(kind, distinct, run_id)):
        name = f"{run_id}-{i:05d}.jpg"  # a new URL every run: the fetcher remembers URLs it stored
        data = stamped(drawn, run_id)
        (directory / name).write_bytes(data)
        names.append(name)
        total += len(data)

    def entry(host: str, name: str, kind: str) -> Entry:
        return Entry(f"http://{host}:{port}/img/{name}", kind, host)

    entries = [entry(origin_hosts[i % len(origin_hosts)], n, "image") for i, n in enumerate(names)]
    step = max(1, distinct // max(1, duplicates))
    for j in range(duplicates):
        entries.append(entry(mirror_hosts[j % len(mirror_hosts)], names[j * step], "duplicate"))
    for j in range(missing):
        entries.append(entry(origin_hosts[j % len(origin_hosts)], f"{run_id}-gone-{j:05d}.jpg", "missing"))
    random.Random(run_id).shuffle(entries)  # hosts and kinds interleaved, as in a real export
    return Plan(run_id, directory, entries, total)


def remove_run(plan: Plan) -> None:
    shutil.rmtree(plan.directory, ignore_errors=True)
