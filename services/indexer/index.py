"""The service's vector index: the FAISS backend under its original name (see faiss_backend.py)."""

from __future__ import annotations

from taxonstream.indexer.backend import Hit
from taxonstream.indexer.faiss_backend import FaissIndex, faiss_id

VectorIndex = FaissIndex

__all__ = ["Hit", "VectorIndex", "faiss_id"]
