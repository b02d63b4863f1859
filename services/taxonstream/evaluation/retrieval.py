"""Leave-one-out retrieval recall@k, overall and per class at each rank (as the NFHM/BioCosmos report does).

Every labelled image queries all the others (itself left out). At a rank, a query scores a hit at k when
at least one of its k nearest neighbours carries the query's label at that rank — Recall@k as image
retrieval benchmarks define it. Queries without a label at the rank, or whose label no other image has
(nothing could be found), are left out of that rank and counted as `excluded`. Overall recall is the mean
over queries; per-class recall is the mean over a class's queries (its spread is what the box plots show).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from taxonstream.evaluation.data import Labelled

KS: tuple[int, ...] = (1, 5, 10)
_BLOCK = 4096


def neighbours(vectors: np.ndarray, k: int, engine: str = "exact") -> np.ndarray:
    """(n, k) row numbers of each row's nearest other rows by inner product, best first; -1 pads.

    `exact` is brute force (the reference); `index` uses the product's FAISS index with the type it
    would have at this size, to measure what its approximation costs."""
    n = len(vectors)
    if engine == "index":
        from taxonstream.index.faiss_engine import FaissIndex

        index = FaissIndex()
        index.upsert_many([str(i) for i in range(n)], vectors, [{}] * n)
        found = np.full((n, k + 1), -1, dtype=np.int64)
        for start in range(0, n, _BLOCK):
            for row, hits in enumerate(index.search_many(vectors[start : start + _BLOCK], k + 1), start=start):
                found[row, : len(hits)] = [int(h.image_id) for h in hits]
    elif engine == "exact":
        flat = faiss.IndexFlatIP(vectors.shape[1])
        flat.add(vectors)
        found = np.concatenate(
            [flat.search(vectors[start : start + _BLOCK], min(k + 1, n))[1] for start in range(0, n, _BLOCK)]
        )
    else:
        raise ValueError(f"unknown engine {engine!r}: exact or index")
    out = np.full((n, k), -1, dtype=np.int64)
    for row in range(n):
        others = found[row][(found[row] != row) & (found[row] >= 0)][:k]  # leave the query itself out
        out[row, : len(others)] = others
    return out


def hits(neigh: np.ndarray, labels: np.ndarray, ks: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(hit (n, len(ks)) bool, valid (n,) bool) for one rank's labels ('' = unknown)."""
    values, codes = np.unique(labels.astype(str), return_inverse=True)
    unknown = np.flatnonzero(values == "")
    codes = np.where(np.isin(codes, unknown), -1, codes)
    valid = (codes >= 0) & (np.bincount(codes[codes >= 0], minlength=len(values))[np.maximum(codes, 0)] >= 2)
    found = np.where(neigh >= 0, codes[np.maximum(neigh, 0)], -2)  # a missing neighbour never matches
    same = found == codes[:, None]
    return np.stack([same[:, :k].any(axis=1) for k in ks], axis=1) & valid[:, None], valid


@dataclass(frozen=True)
class RetrievalReport:
    summary: list[dict[str, object]]  # rank, k, recall, queries, classes, excluded
    per_class: list[dict[str, object]]  # rank, label, queries, recall@k for each k


def evaluate(data: Labelled, ks: Sequence[int] = KS, engine: str = "exact") -> RetrievalReport:
    ks = sorted(set(ks))
    neigh = neighbours(data.vectors, max(ks), engine)
    summary: list[dict[str, object]] = []
    per_class: list[dict[str, object]] = []
    for rank, labels in data.labels.items():
        hit, valid = hits(neigh, labels, ks)
        names = labels.astype(str)
        classes = sorted(set(names[valid]))
        for j, k in enumerate(ks):
            summary.append(
                {
                    "rank": rank,
                    "k": k,
                    "recall": float(hit[valid, j].mean()) if valid.any() else float("nan"),
                    "queries": int(valid.sum()),
                    "classes": len(classes),
                    "excluded": int((~valid).sum()),
                }
            )
        order = np.argsort(names[valid], kind="stable")
        label_sorted, hit_sorted = names[valid][order], hit[valid][order]
        starts = np.flatnonzero(np.r_[True, label_sorted[1:] != label_sorted[:-1]]) if len(order) else []
        bounds = [*starts, len(order)]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            per_class.append(
                {
                    "rank": rank,
                    "label": label_sorted[a],
                    "queries": int(b - a),
                    **{f"recall@{k}": float(hit_sorted[a:b, j].mean()) for j, k in enumerate(ks)},
                }
            )
    return RetrievalReport(summary=summary, per_class=per_class)
