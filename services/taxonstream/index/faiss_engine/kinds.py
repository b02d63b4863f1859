"""The three FAISS index kinds (flat, HNSW, IVF-PQ): which one a collection's size calls for, and making one."""

from __future__ import annotations

import math

import faiss
import numpy as np

from taxonstream.index.types import FaissConfig

KINDS = ("flat", "hnsw", "ivfpq")
IVFPQ_MIN = 256  # below this a forced IVF-PQ stays flat: PQ needs 2^nbits training points


def desired_kind(config: FaissConfig, current: str, live: int) -> str:
    """The kind for `live` vectors, given the kind in use (going down only below half a threshold)."""
    if config.kind is not None:
        return "flat" if config.kind == "ivfpq" and live < IVFPQ_MIN else config.kind
    target = "ivfpq" if live >= config.ivfpq_from else "hnsw" if live >= config.hnsw_from else "flat"
    if KINDS.index(target) >= KINDS.index(current):
        return target
    # Going down only below half the threshold that brought us here: no flip-flop at the edge.
    floor = (config.hnsw_from if current == "hnsw" else config.ivfpq_from) // 2
    return target if live < floor else current


def nlist_for(live: int) -> int:
    """IVF lists for a collection: about 4·√n, the usual balance of list scans against centroid scans."""
    return max(1, int(4 * math.sqrt(live)))


def new_index(
    kind: str, dim: int, config: FaissConfig, sample: np.ndarray | None = None, built_for: int = 0
) -> faiss.Index:
    """An empty index of `kind`; IVF-PQ is trained on `sample` (at least IVFPQ_MIN vectors)."""
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.ef_construction
        return index
    assert sample is not None and len(sample) >= IVFPQ_MIN
    n = len(sample)
    # k-means wants at least 39 training points a list; a configured nlist is capped the same way.
    nlist = max(1, min(config.nlist or nlist_for(built_for or n), n // 39))
    m = max(d for d in range(1, min(config.pq_m, dim) + 1) if dim % d == 0)
    nbits = min(config.pq_nbits, int(math.log2(n)))
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


def flat_view(index: faiss.Index) -> np.ndarray:
    """The float32 vectors inside a flat index (or an HNSW's flat storage), without copying."""
    flat = faiss.downcast_index(index.storage) if isinstance(index, faiss.IndexHNSW) else index
    if flat.ntotal == 0:
        return np.empty((0, flat.d), dtype=np.float32)
    return faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)
