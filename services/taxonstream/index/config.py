"""The index's knobs as settings (TAXONSTREAM_INDEX_*, TAXONSTREAM_MILVUS_*) and their translation to IndexConfig."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from taxonstream.core.settings import CoreSettings
from taxonstream.index.backend import FaissConfig, IndexConfig, MilvusConfig, milvus_params


class IndexSettings(CoreSettings):
    """Everything that shapes an index, read from the environment; `index_config()` hands it to the backends."""

    # faiss (in-process; exact, then HNSW from `index_hnsw_from`, IVF-PQ from `index_ivfpq_from` vectors)
    # or milvus (a Milvus server at `milvus_uri`; a path ending .db runs Milvus Lite in-process).
    # What each knob trades is in docs/index.md ("Tuning").
    index_backend: Literal["faiss", "milvus"] = "faiss"
    index_kind: Literal["auto", "flat", "hnsw", "ivfpq"] = "auto"  # FAISS: "auto" follows the size
    index_hnsw_from: int = Field(default=100_000, ge=1)
    index_ivfpq_from: int = Field(default=10_000_000, ge=1)
    # FAISS rebuilds (type migration, compaction, IVF-PQ retraining) of this many live vectors or more
    # run in a background thread; smaller ones inside the write that called for them.
    index_background_from: int = Field(default=10_000, ge=0)
    # HNSW, both backends: links per node, build-time and search-time candidate lists.
    index_hnsw_m: int = Field(default=32, ge=4, le=256)
    index_ef_construction: int = Field(default=80, ge=8, le=4096)
    index_ef_search: int = Field(default=256, ge=1, le=32_768)
    # IVF(-PQ): lists (0: ≈4·√n for FAISS, 1024 a segment for Milvus), lists probed a query, PQ
    # sub-quantizers (FAISS takes the largest divisor of the dimension up to this) and bits a code.
    index_ivf_nlist: int = Field(default=0, ge=0, le=1 << 20)
    index_ivf_nprobe: int = Field(default=32, ge=1, le=1 << 20)
    index_pq_m: int = Field(default=64, ge=1, le=4096)
    index_pq_nbits: int = Field(default=8, ge=4, le=16)
    index_ivfpq_rerank: int = Field(default=8, ge=1, le=1024)  # FAISS: candidates re-scored per hit
    # FAISS filtered search: exact when at most `exact_below` items match or under `ann_min_share` of the
    # index, the ANN search with the filter as its selector otherwise.
    index_exact_below: int = Field(default=20_000, ge=0)
    index_ann_min_share: float = Field(default=0.05, ge=0, le=1)
    # FAISS tombstones (deleted and replaced vectors) are compacted past this share and count.
    index_compact_ratio: float = Field(default=0.25, gt=0, le=1)
    index_compact_min: int = Field(default=1024, ge=0)
    milvus_uri: str = ""
    milvus_token: str = ""
    milvus_collection: str = "taxonstream_images"
    # Used when the collection is created; a changed type needs a new collection (search knobs apply at once).
    milvus_index_type: Literal["HNSW", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "FLAT", "DISKANN", "AUTOINDEX"] = "HNSW"
    milvus_exact_below: int = Field(default=2_000, ge=0, le=16_384)  # one Milvus query returns at most 16384

    @model_validator(mode="after")
    def check_index_thresholds(self) -> IndexSettings:
        if self.index_hnsw_from > self.index_ivfpq_from:
            raise ValueError(
                f"index_hnsw_from ({self.index_hnsw_from}) must not exceed index_ivfpq_from ({self.index_ivfpq_from})"
            )
        return self

    def index_config(self) -> IndexConfig:
        index_params, search_params = milvus_params(
            self.milvus_index_type,
            hnsw_m=self.index_hnsw_m,
            ef_construction=self.index_ef_construction,
            ef_search=self.index_ef_search,
            nlist=self.index_ivf_nlist,
            nprobe=self.index_ivf_nprobe,
            pq_m=self.index_pq_m,
            pq_nbits=self.index_pq_nbits,
        )
        milvus = MilvusConfig(
            uri=self.milvus_uri or MilvusConfig.uri,
            token=self.milvus_token,
            collection=self.milvus_collection,
            index_type=self.milvus_index_type,
            index_params=index_params,
            search_params=search_params,
            exact_below=self.milvus_exact_below,
        )
        faiss = FaissConfig(
            hnsw_from=self.index_hnsw_from,
            ivfpq_from=self.index_ivfpq_from,
            kind=None if self.index_kind == "auto" else self.index_kind,
            hnsw_m=self.index_hnsw_m,
            ef_construction=self.index_ef_construction,
            ef_search=self.index_ef_search,
            nlist=self.index_ivf_nlist,
            pq_m=self.index_pq_m,
            pq_nbits=self.index_pq_nbits,
            nprobe=self.index_ivf_nprobe,
            rerank=self.index_ivfpq_rerank,
            exact_below=self.index_exact_below,
            ann_min_share=self.index_ann_min_share,
            compact_ratio=self.index_compact_ratio,
            compact_min=self.index_compact_min,
            background_from=self.index_background_from,
        )
        return IndexConfig(backend=self.index_backend, faiss=faiss, milvus=milvus)
