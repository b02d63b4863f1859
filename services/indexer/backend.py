"""What every index backend offers the indexer service, and the configuration that picks one.

Two backends share this interface: `FaissIndex` (in-process, the default; snapshots go to S3) and
`MilvusIndex` (a Milvus server or cluster holds the data, for collections past one machine). The
behavioural tests run against both.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from taxonstream.indexer.filters import Filters


@dataclass(frozen=True)
class Hit:
    image_id: str
    score: float
    metadata: dict[str, str]


@dataclass(frozen=True)
class IndexStats:
    images: int
    kind: str  # "flat" | "hnsw" | "ivfpq" for FAISS; "milvus/<index type>" for Milvus
    # field (each rank, provider, licence) → value → live images with that value
    by_field: dict[str, dict[str, int]]


@dataclass(frozen=True)
class FaissConfig:
    """Thresholds and parameters of the in-process FAISS index.

    The index type follows the number of live vectors: exact (flat) below `hnsw_from`, HNSW up to
    `ivfpq_from`, IVF-PQ beyond. Crossing a threshold rebuilds the index in the next type from the
    stored vectors; falling below half a threshold (after deletes) rebuilds it back, so a collection
    hovering at a threshold does not flip-flop.
    """

    hnsw_from: int = 100_000
    ivfpq_from: int = 10_000_000
    kind: Literal["flat", "hnsw", "ivfpq"] | None = None  # force one type (benchmarks, tests)
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 256  # recall@10 0.965 at 1M × 512 (tools/bench/index); 96 gave 0.91
    pq_m: int = 64  # sub-quantizers (64 bytes a vector); the largest divisor of dim not above this
    nprobe: int = 32
    rerank: int = 8  # IVF-PQ: candidates per wanted hit, re-scored with the stored float16 vectors
    # A filtered search scores the matching items exactly when there are at most `exact_below` of them, or
    # when they are under `ann_min_share` of the index: a graph walk through mostly excluded nodes misses
    # (measured at 200k × 512: HNSW with a 1–2% IDSelector recalled 0.5–0.9 of the top 10, at ≥ 5% all).
    exact_below: int = 20_000
    ann_min_share: float = 0.05
    # Deleted and replaced entries are tombstones until they exceed this share of the index.
    compact_ratio: float = 0.25
    compact_min: int = 1024


@dataclass(frozen=True)
class MilvusConfig:
    uri: str = "./.stack/milvus.db"  # a path ending .db runs Milvus Lite in-process; http(s)://host:19530 a server
    token: str = ""
    db_name: str = ""
    collection: str = "taxonstream_images"
    index_type: str = "HNSW"
    index_params: Mapping[str, int] = field(default_factory=lambda: {"M": 32, "efConstruction": 80})
    search_params: Mapping[str, int] = field(default_factory=lambda: {"ef": 96})
    # A filtered search matching at most this many rows scores them exactly from their stored vectors:
    # a graph walk through mostly excluded rows can come back short. At most 16384 (Milvus's query window).
    exact_below: int = 2_000
    # Strong: a search sees every upsert acknowledged before it (what replay-after-restore relies on).
    consistency_level: str = "Strong"


@dataclass(frozen=True)
class IndexConfig:
    backend: Literal["faiss", "milvus"] = "faiss"
    faiss: FaissConfig = field(default_factory=FaissConfig)
    milvus: MilvusConfig = field(default_factory=MilvusConfig)


class IndexBackend(Protocol):
    """Upserts and deletes by image id; searches with filters applied inside the search."""

    dim: int | None

    def __len__(self) -> int: ...

    def upsert(self, image_id: str, vector: np.ndarray, metadata: Mapping[str, str]) -> None: ...

    def upsert_many(
        self, image_ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[Mapping[str, str]]
    ) -> None: ...

    def delete(self, image_id: str) -> bool: ...

    def delete_many(self, image_ids: Sequence[str]) -> int: ...

    def search(self, vector: np.ndarray, k: int, filters: Filters | None = None) -> list[Hit]: ...

    def vector(self, image_id: str) -> np.ndarray | None: ...

    def get(self, image_id: str) -> dict[str, str] | None: ...

    def images(self, filters: Filters | None = None) -> Iterator[tuple[str, dict[str, str]]]: ...

    def stats(self) -> IndexStats: ...

    def dump(self) -> bytes:
        """What a restore needs, to store in S3 beside the Kafka offsets it includes."""
        ...

    def close(self) -> None: ...


def open_index(config: IndexConfig | None = None) -> IndexBackend:
    """An empty (FAISS) or connected (Milvus) index as configured."""
    config = config or IndexConfig()
    if config.backend == "milvus":
        from taxonstream.indexer.milvus_backend import MilvusIndex

        return MilvusIndex(config.milvus)
    from taxonstream.indexer.faiss_backend import FaissIndex

    return FaissIndex(config=config.faiss)


def restore_index(config: IndexConfig, data: bytes) -> IndexBackend:
    """The index a `dump()` described: FAISS from the bytes themselves, Milvus by reconnecting."""
    if config.backend == "milvus":
        from taxonstream.indexer.milvus_backend import MilvusIndex

        return MilvusIndex.load(data, config.milvus)
    from taxonstream.indexer.faiss_backend import FaissIndex

    return FaissIndex.load(data, config=config.faiss)
