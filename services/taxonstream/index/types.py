"""The types every index engine and its callers share: hits, stats and the engines' configurations."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal


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
    """Thresholds and parameters of the in-process FAISS index (the indexer sets them from
    `TAXONSTREAM_INDEX_*`; see `IndexerSettings`).

    The index type follows the number of live vectors: exact (flat) below `hnsw_from`, HNSW up to
    `ivfpq_from`, IVF-PQ beyond. Crossing a threshold rebuilds the index in the next type from the
    stored vectors; falling below half a threshold (after deletes) rebuilds it back, so a collection
    hovering at a threshold does not flip-flop. Rebuilds of collections of `background_from` vectors or
    more run in a thread while the old index keeps answering and taking writes.
    """

    hnsw_from: int = 100_000
    ivfpq_from: int = 10_000_000
    kind: Literal["flat", "hnsw", "ivfpq"] | None = None  # force one type (benchmarks, tests)
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 256  # recall@10 0.965 at 1M × 512 (tools/bench/index); 96 gave 0.91
    nlist: int = 0  # IVF lists; 0: about 4·√n of the vectors at training time
    pq_m: int = 64  # sub-quantizers (64 bytes a vector); the largest divisor of dim not above this
    pq_nbits: int = 8  # bits per sub-quantizer code (fewer while the collection is under 2^nbits)
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
    # Smaller rebuilds run inside the write (well under a second); larger ones in a background thread.
    background_from: int = 10_000

    def __post_init__(self) -> None:
        positive = ("hnsw_from", "ivfpq_from", "hnsw_m", "ef_construction", "ef_search", "pq_m", "nprobe", "rerank")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"FaissConfig.{name} must be at least 1, not {getattr(self, name)}")
        for name in ("nlist", "exact_below", "compact_min", "background_from"):
            if getattr(self, name) < 0:
                raise ValueError(f"FaissConfig.{name} must not be negative, not {getattr(self, name)}")
        if self.hnsw_from > self.ivfpq_from:
            raise ValueError(f"FaissConfig: hnsw_from ({self.hnsw_from}) is above ivfpq_from ({self.ivfpq_from})")
        if not 1 <= self.pq_nbits <= 16:
            raise ValueError(f"FaissConfig.pq_nbits must be 1–16 (FAISS's PQ codes), not {self.pq_nbits}")
        if not 0 <= self.ann_min_share <= 1:
            raise ValueError(f"FaissConfig.ann_min_share is a share, 0–1, not {self.ann_min_share}")
        if not 0 < self.compact_ratio <= 1:
            raise ValueError(f"FaissConfig.compact_ratio is a share, above 0 and at most 1, not {self.compact_ratio}")


MILVUS_QUERY_WINDOW = 16_384  # the most rows one Milvus query returns


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

    def __post_init__(self) -> None:
        if not 0 <= self.exact_below <= MILVUS_QUERY_WINDOW:
            raise ValueError(f"MilvusConfig.exact_below must be 0–{MILVUS_QUERY_WINDOW}, not {self.exact_below}")


def milvus_params(
    index_type: str,
    *,
    hnsw_m: int,
    ef_construction: int,
    ef_search: int,
    nlist: int,
    nprobe: int,
    pq_m: int,
    pq_nbits: int,
) -> tuple[dict[str, int], dict[str, int]]:
    """Milvus's index and search parameters for `index_type` from the same knobs the FAISS index takes.
    `nlist` 0 (FAISS: sized to the collection) becomes 1024: Milvus builds an IVF per segment, not one."""
    kind = index_type.upper()
    if kind == "HNSW":
        return {"M": hnsw_m, "efConstruction": ef_construction}, {"ef": ef_search}
    lists = nlist or 1024
    if kind in ("IVF_FLAT", "IVF_SQ8"):
        return {"nlist": lists}, {"nprobe": nprobe}
    if kind == "IVF_PQ":
        return {"nlist": lists, "m": pq_m, "nbits": pq_nbits}, {"nprobe": nprobe}
    return {}, {}  # FLAT, AUTOINDEX, DISKANN…: Milvus's own defaults


@dataclass(frozen=True)
class IndexConfig:
    backend: Literal["faiss", "milvus"] = "faiss"
    faiss: FaissConfig = field(default_factory=FaissConfig)
    milvus: MilvusConfig = field(default_factory=MilvusConfig)
