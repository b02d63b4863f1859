"""Every S3 key the project writes or reads, in one place. Keys are part of the stored data's format: a
change here strands what is already in the bucket, so each function returns exactly what was always written.

  key                                                   written by       what
  originals/sha256/<ab>/<cd>/<sha256>                   fetcher          an original's bytes (content-addressed)
  jobs/<job>/records-<NNNNNN>.json                      fetcher          a job's submitted records, in chunks
  jobs/<job>/manifest/rows/<record id %-quoted>.json    checksummer      one verified record's manifest row (before
                                                                         row batches; still read)
  jobs/<job>/manifest/row-batches/<digest>.json         checksummer      the rows of one worker batch's records
  jobs/<job>/manifest.<csv|parquet>                     checksummer      the last assembled manifest
  job-progress/<topic prefix>snapshot.json.gz           fetcher          every job's counters + the offsets they include
  registry/sha256/<ab>/<sha256>.json                    checksummer      first claim of these bytes
  registry/snapshot/index.bin, meta.json                checksummer      pHash index snapshot (before generations)
  registry/snapshot/latest.json                         checksummer      pointer to the newest registry generation
  registry/snapshot/snapshots/<generation>.<part>       checksummer      one generation's objects
  provenance/<image_id>/<record_id>.json                checksummer      one source record of an image
  derivatives/<image_id>/<model>/<version>/<name>       detector         detection.json; crop.jpg, crop_256.jpg,
                                                                         original_256.jpg where they earn their
                                                                         bytes (detection.json's "stored")
  index/<backend>/versions.json                         indexer          index versions and the serving one
  index/<model>/<version>/<backend>/latest.json         indexer          pointer to the newest index generation
  index/<model>/<version>/<backend>/snapshots/<gen>.*   indexer          .bin (index), .tombstones.json, .json
  banks/<name>/embeddings.npy, names.json, meta.json    CLI              a label-embedding bank (meta.json last)
  [<prefix>/]<model>/<version>/...                      CLI              a Triton model repository upload

Blobs — originals/ and derivatives/ — are content-addressed and never listed, so they may live in a bucket of
their own (TAXONSTREAM_S3_BLOB_BUCKET; the local stack makes it indexless). Everything else is listed somewhere.

A snapshot store (`taxonstream.index.snapshots`) keeps generations under one prefix: `latest.json` plus
`snapshots/<generation>.<part>`, with `snapshots/<generation>.json` naming the parts of a complete one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from urllib.parse import quote

BLOB_PREFIXES = ("originals/", "derivatives/")


def is_blob(key: str) -> bool:
    """A content-addressed object that nothing lists (originals and derivatives)."""
    return key.startswith(BLOB_PREFIXES)


# -- originals and jobs ---------------------------------------------------------------------------------------


def original_key(sha256: str) -> str:
    return f"originals/sha256/{sha256[:2]}/{sha256[2:4]}/{sha256}"


def job_records_prefix(job_id: str) -> str:
    """A job's submitted records, in numbered chunks: `jobs retry` queues failed ones again from them, and
    the checksummer's manifest names the records that have no row."""
    return f"jobs/{job_id}/records-"


def job_records_key(job_id: str, chunk: int) -> str:
    return f"{job_records_prefix(job_id)}{chunk:06d}.json"


def job_progress_snapshot_key(topic_prefix: str) -> str:
    """The fetchers' job-progress snapshot; one per topic prefix, as the counters describe those topics."""
    return f"job-progress/{topic_prefix}snapshot.json.gz"


def manifest_rows_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/manifest/rows/"


def manifest_row_key(job_id: str, record_id: str) -> str:
    # Record ids hold ":" and may hold "/": quoted so each row is one object directly under the prefix.
    return manifest_rows_prefix(job_id) + quote(record_id, safe="") + ".json"


def manifest_row_batches_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/manifest/row-batches/"


def manifest_row_batch_key(job_id: str, record_ids: Iterable[str]) -> str:
    """Named by the records it holds, so a batch delivered again rewrites the same object (a batch cut
    differently on redelivery writes another, and assembly keeps one row per record id)."""
    digest = hashlib.sha256("\n".join(sorted(record_ids)).encode()).hexdigest()
    return f"{manifest_row_batches_prefix(job_id)}{digest[:32]}.json"


def manifest_key(job_id: str, fmt: str) -> str:
    return f"jobs/{job_id}/manifest.{fmt}"


# -- the duplicate registry -----------------------------------------------------------------------------------

REGISTRY_ENTRIES_PREFIX = "registry/sha256/"
REGISTRY_SNAPSHOT_PREFIX = "registry/snapshot/"
# The single-generation snapshot written before generations: still read when no generation exists.
REGISTRY_LEGACY_INDEX = REGISTRY_SNAPSHOT_PREFIX + "index.bin"
REGISTRY_LEGACY_META = REGISTRY_SNAPSHOT_PREFIX + "meta.json"


def registry_key(sha256: str) -> str:
    return f"{REGISTRY_ENTRIES_PREFIX}{sha256[:2]}/{sha256}.json"


def provenance_prefix(image_id: str) -> str:
    return f"provenance/{image_id}/"


def provenance_key(image_id: str, record_id: str) -> str:
    return f"{provenance_prefix(image_id)}{record_id}.json"


# -- derivatives ----------------------------------------------------------------------------------------------

DERIVATIVE_NAMES = {
    "crop": "crop.jpg",
    "crop_small": "crop_256.jpg",
    "original_small": "original_256.jpg",
    "lineage": "detection.json",
}


def derivative_prefix(image_id: str, model: str, version: str) -> str:
    return f"derivatives/{image_id}/{model}/{version}/"


def derivative_keys(image_id: str, model: str, version: str) -> dict[str, str]:
    """Where the detector stores what it derives from one image: under the image id and the model version."""
    prefix = derivative_prefix(image_id, model, version)
    return {kind: prefix + name for kind, name in DERIVATIVE_NAMES.items()}


# The 256-px copies are stored only for an original over this many pixels on its shorter side (2 x 256):
# a smaller original is its own small copy, and a re-encoded copy of most of its pixels would cost about
# as many bytes as the original (a 400x300 demo JPEG: ~0.5x each).
SMALL_COPIES_MIN_SIDE = 512


def small_copies_stored(original_size: tuple[int, int]) -> bool:
    """Whether the detector stores a 256-px copy of an original of this (width, height)."""
    return min(original_size) > SMALL_COPIES_MIN_SIDE


def thumbnail_key(
    image_id: str, model: str, version: str, crop_key: str, original_key: str, original_size: tuple[int, int]
) -> str:
    """The search thumbnail: the 256-px crop where a crop was stored (`crop_key` is not the original's),
    else the 256-px original where one was stored, else the original itself (at most 512 px on a side)."""
    keys = derivative_keys(image_id, model, version)
    if crop_key and crop_key != original_key:
        return keys["crop_small"]
    return keys["original_small"] if small_copies_stored(original_size) else original_key


def small_original_key(image_id: str, thumbnail: str, original_key: str) -> str | None:
    """The whole image at 256 px, from the thumbnail's key: beside a derivative thumbnail (every layout
    stores original_256.jpg with crop_256.jpg), the original itself where it is its own thumbnail; None for
    any other key."""
    if thumbnail and thumbnail == original_key:
        return original_key
    parsed = parse_derivative_key(thumbnail)
    return None if parsed is None else derivative_keys(image_id, parsed[1], parsed[2])["original_small"]


def derivative_to_read(lineage: dict, kind: str) -> str:
    """The key a reader of a detection.json reads for `kind` ("crop", "crop_small", "original_small").

    Its "keys" name what serves each kind: a stored derivative, or the original (for "crop": cut the
    lineage's "box" out of it). A lineage from before "stored" was recorded named all four derivatives,
    all stored; one without "keys" falls back to the derivative layout of its image id and model."""
    keys = lineage.get("keys") or derivative_keys(lineage["image_id"], lineage["model"], lineage["model_version"])
    return keys[kind]


def parse_derivative_key(key: str) -> tuple[str, str, str] | None:
    """(image_id, model, version) of a derivative key, None for any other key."""
    parts = key.split("/")
    if len(parts) < 5 or parts[0] != "derivatives":
        return None
    return parts[1], parts[2], parts[3]


# -- the index ------------------------------------------------------------------------------------------------


def index_versions_key(backend: str) -> str:
    return f"index/{backend}/versions.json"


def index_snapshot_prefix(model: str, version: str, backend: str) -> str:
    return f"index/{model}/{version}/{backend}/"


# -- snapshot generations (any prefix) ------------------------------------------------------------------------


def snapshot_latest_key(prefix: str) -> str:
    return prefix + "latest.json"


def snapshot_generations_prefix(prefix: str) -> str:
    return prefix + "snapshots/"


def snapshot_part_key(prefix: str, generation: str, part: str) -> str:
    """`part` is the suffix after the generation: "bin", "tombstones.json", "json" (the manifest)."""
    return f"{snapshot_generations_prefix(prefix)}{generation}.{part}"


def snapshot_generation_of(prefix: str, key: str) -> tuple[str, str] | None:
    """(generation, part) of a key under `prefix`'s snapshots, None for any other key."""
    head = snapshot_generations_prefix(prefix)
    if not key.startswith(head):
        return None
    generation, dot, part = key[len(head) :].partition(".")
    return (generation, part) if generation and dot and "/" not in generation else None


# -- label banks and model repositories -----------------------------------------------------------------------


def bank_keys(name: str) -> tuple[str, str, str]:
    """S3 keys of a bank: (embeddings.npy, names.json, meta.json)."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"bad bank name {name!r}")
    prefix = f"banks/{name}/"
    return prefix + "embeddings.npy", prefix + "names.json", prefix + "meta.json"


def model_repository_key(prefix: str, relative: str) -> str:
    """A model repository file's key: its path in the repository, under an optional prefix."""
    return prefix.rstrip("/") + "/" + relative if prefix else relative
