"""An exact inner-product FAISS index keyed by image id, with metadata, upsert and snapshots."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import faiss
import numpy as np


def faiss_id(image_id: str) -> int:
    """A stable int64 id for FAISS from the image id (a sha256 hex): its first 60 bits."""
    return int(image_id[:15], 16)


@dataclass(frozen=True)
class Hit:
    image_id: str
    score: float
    metadata: dict[str, str]


@dataclass
class VectorIndex:
    dim: int | None = None
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    _index: faiss.IndexIDMap2 | None = None
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _names: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._names = {faiss_id(image_id): image_id for image_id in self.metadata}

    def __len__(self) -> int:
        with self._lock:
            return 0 if self._index is None else self._index.ntotal

    def upsert(self, image_id: str, vector: np.ndarray, metadata: dict[str, str]) -> None:
        vector = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        with self._lock:
            if self._index is None:
                self.dim = vector.shape[1]
                self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
            if vector.shape[1] != self.dim:
                raise ValueError(f"vector of {vector.shape[1]} dimensions for an index of {self.dim}")
            ids = np.array([faiss_id(image_id)], dtype=np.int64)
            # Remove-then-add makes a re-delivered embedding replace, never duplicate, its entry.
            self._index.remove_ids(ids)
            self._index.add_with_ids(vector, ids)
            self.metadata[image_id] = dict(metadata)
            self._names[int(ids[0])] = image_id

    def vector(self, image_id: str) -> np.ndarray | None:
        with self._lock:
            if self._index is None or image_id not in self.metadata:
                return None
            return self._index.reconstruct(faiss_id(image_id))

    def search(self, vector: np.ndarray, k: int) -> list[Hit]:
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        with self._lock:
            if self._index is None or self._index.ntotal == 0:
                return []
            scores, ids = self._index.search(query, min(k, self._index.ntotal))
            names = [self._names[int(i)] for i in ids[0] if i != -1]
            return [Hit(n, float(s), self.metadata[n]) for n, s in zip(names, scores[0], strict=False)]

    def serialize(self) -> tuple[bytes, dict[str, dict[str, str]]]:
        with self._lock:
            data = b"" if self._index is None else faiss.serialize_index(self._index).tobytes()
            return data, {k: dict(v) for k, v in self.metadata.items()}

    @classmethod
    def restore(cls, data: bytes, metadata: dict[str, dict[str, str]]) -> VectorIndex:
        if not data:
            return cls()
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        return cls(dim=index.d, metadata=metadata, _index=index)
