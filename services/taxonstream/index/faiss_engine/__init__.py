"""The in-process FAISS index engine, split by job (see `engine` for the design)."""

from taxonstream.index.faiss_engine.engine import FaissIndex
from taxonstream.index.faiss_engine.snapshot import SnapshotFormatError

__all__ = ["FaissIndex", "SnapshotFormatError"]
