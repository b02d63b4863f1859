"""Exact and near-duplicate groups in a folder: what `taxonstream dupes PATH` reports.

Exact duplicates are files with the same sha256. Near duplicates are distinct images whose pHashes are within
`max_distance` bits, grouped transitively (if A is near B and B near C, all three form one group, as a
curator would want to review them together); every pair's distance is kept so the report can show it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from taxonstream.integrity.checksums import WorkerPool
from taxonstream.integrity.neardup import HammingIndex, connected
from taxonstream.integrity.phash import Fingerprint, fingerprint_batch
from taxonstream.integrity.sumbuddy import Entry


@dataclass
class Image:
    """One distinct content (sha256) with every path it was found at."""

    sha256: str
    phash: int | None
    paths: list[str] = field(default_factory=list)


@dataclass
class NearGroup:
    images: list[Image]
    pairs: list[tuple[str, str, int]]  # (sha256, sha256, Hamming distance) for each close pair


@dataclass
class DupesReport:
    files: int
    images: dict[str, Image]
    exact: list[Image]  # contents found at two or more paths
    near: list[NearGroup]
    not_images: list[str]  # paths that do not decode as images, or are featureless (still in exact groups)
    errors: list[str]  # paths that could not be read, with why


def fingerprints(entries: Sequence[Entry], pool: WorkerPool) -> list[Fingerprint]:
    # Decoding costs ~50 ms per MB of JPEG: a few MB already pay for starting the workers.
    return [fp for _, fp in pool.map_batches(fingerprint_batch, entries, serial_below=4 << 20)]


def find_duplicates(entries: Sequence[Entry], max_distance: int = 8, workers: int | None = None) -> DupesReport:
    with WorkerPool(workers) as pool:
        prints = fingerprints(entries, pool)
    return group(entries, prints, max_distance)


def group(entries: Sequence[Entry], prints: Sequence[Fingerprint], max_distance: int) -> DupesReport:
    """Exact groups by sha256, near groups by pHash over the distinct images; deterministic order."""
    images: dict[str, Image] = {}
    not_images, errors = [], []
    for entry, fp in zip(entries, prints, strict=True):
        if fp.error:
            errors.append(f"{entry.filepath}: {fp.error}")
            continue
        image = images.setdefault(fp.sha256, Image(fp.sha256, fp.phash))
        image.paths.append(entry.filepath)
        if fp.phash is None:
            not_images.append(entry.filepath)
    exact = sorted((i for i in images.values() if len(i.paths) > 1), key=lambda i: i.paths[0])

    index = HammingIndex.build(((i.sha256, i.phash) for i in images.values() if i.phash is not None), max_distance)
    near = []
    for group_pairs in connected(index.near_pairs()):
        keys = {k for a, b, _ in group_pairs for k in (a, b)}
        near.append(NearGroup(sorted((images[k] for k in keys), key=lambda i: i.paths[0]), sorted(group_pairs)))
    near.sort(key=lambda g: g.images[0].paths[0])
    return DupesReport(len(entries), images, exact, near, not_images, errors)
