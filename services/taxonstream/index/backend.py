"""What every index backend offers the indexer service, and the factory that picks one.

Two backends share this interface: `FaissIndex` (in-process, the default; snapshots go to S3) and
`MilvusIndex` (a Milvus server or cluster holds the data, for collections past one machine). The
behavioural tests run against both. The shared types live in `index.types` (re-exported here), so the
engines need not import this module and this module can import them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

import numpy as np

from taxonstream.index.faiss_engine import FaissIndex
from taxonstream.index.filters import Filters
from taxonstream.index.milvus_backend import MilvusIndex
from taxonstream.index.types import (
    MILVUS_QUERY_WINDOW,
    FaissConfig,
    Hit,
    IndexConfig,
    IndexStats,
    MilvusConfig,
    milvus_params,
)

__all__ = [
    "MILVUS_QUERY_WINDOW",
    "FaissConfig",
    "Hit",
    "IndexBackend",
    "IndexConfig",
    "IndexStats",
    "MilvusConfig",
    "milvus_params",
    "open_index",
    "restore_index",
]


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

    def stats(self, filters: Filters | None = None) -> IndexStats: ...

    def dump(self) -> bytes:
        """What a restore needs, to store in S3 beside the Kafka offsets it includes."""
        ...

    def close(self) -> None: ...


def open_index(config: IndexConfig | None = None) -> IndexBackend:
    """An empty (FAISS) or connected (Milvus) index as configured."""
    config = config or IndexConfig()
    if config.backend == "milvus":
        return MilvusIndex(config.milvus)
    return FaissIndex(config=config.faiss)


def restore_index(config: IndexConfig, data: bytes) -> IndexBackend:
    """The index a `dump()` described: FAISS from the bytes themselves, Milvus by reconnecting."""
    if config.backend == "milvus":
        return MilvusIndex.load(data, config.milvus)
    return FaissIndex.load(data, config=config.faiss)
