"""How the FAISS engine answers a query: exact scoring of few matches, ANN with the filter bitmap otherwise."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import faiss
import numpy as np

from taxonstream.index import filters as flt
from taxonstream.index.faiss_engine.postings import Selection
from taxonstream.index.types import FaissConfig

CHUNK = 65_536  # slots scored per matrix product in an exact search


def top_k_by_slot(scores: np.ndarray, slots: np.ndarray, k: int) -> np.ndarray:
    """Column order of the k best scores in each row, best first, equal scores by lower slot."""
    k = min(k, scores.shape[1])
    out = np.empty((scores.shape[0], k), dtype=np.int64)
    if k == 0:
        return out
    for row in range(scores.shape[0]):
        cand = np.argpartition(-scores[row], k - 1)[:k] if k < scores.shape[1] else np.arange(scores.shape[1])
        out[row] = cand[np.lexsort((slots[row, cand], -scores[row, cand]))]
    return out


class Searching:
    """The search half of `FaissIndex` (the caller holds the read lock)."""

    config: FaissConfig
    _index: faiss.Index | None
    _kind: str
    _n: int
    _slot: dict[str, int]

    if TYPE_CHECKING:  # defined by FaissIndex

        def _vectors(self, slots: np.ndarray) -> np.ndarray: ...

        def _selection(self, wanted: flt.Wanted) -> Selection | None: ...

    def _exact(self, queries: np.ndarray, k: int, selection: Selection | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the selected slots (all slots when None)."""
        if self._kind != "ivfpq" and selection is not None and selection.count > self.config.exact_below:
            # Many matches: FAISS's flat scan with the bitmap reads only the selected rows, without copying
            # them out (a gather of 50k × 2 KB rows costs more than the scan).
            assert self._index is not None
            flat = faiss.downcast_index(self._index.storage) if self._kind == "hnsw" else self._index
            return flat.search(queries, k, params=faiss.SearchParameters(sel=selection.selector))
        slots_all = np.arange(self._n) if selection is None else selection.slots
        best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
        best_i = np.empty((len(queries), 0), dtype=np.int64)
        for start in range(0, len(slots_all), CHUNK):
            slots = slots_all[start : start + CHUNK]
            scores = queries @ self._vectors(slots).T
            merged_s = np.concatenate([best_s, scores], axis=1)
            merged_i = np.concatenate([best_i, np.broadcast_to(slots, scores.shape)], axis=1)
            order = top_k_by_slot(merged_s, merged_i, k)
            best_s = np.take_along_axis(merged_s, order, axis=1)
            best_i = np.take_along_axis(merged_i, order, axis=1)
        return best_s, best_i

    def _ann(self, queries: np.ndarray, k: int, selection: Selection | None) -> tuple[np.ndarray, np.ndarray]:
        assert self._index is not None
        cfg = self.config
        sel = None if selection is None else selection.selector
        # IVF scans whole lists: with a filter, only its share of each list can be a candidate, so widen.
        widen = 1 if selection is None else math.ceil(self._n / max(selection.count, 1))
        if self._kind == "flat":
            params = faiss.SearchParameters(sel=sel) if sel is not None else None
            return self._index.search(queries, k, params=params)
        if self._kind == "hnsw":
            # No widening here: a larger efSearch with a selector found no more of the true top 10 (it only
            # filled k sooner from a worse walk); sparse filters take the exact path instead.
            ef = max(cfg.ef_search, k)
            return self._index.search(queries, k, params=faiss.SearchParametersHNSW(efSearch=ef, sel=sel))
        nlist = self._index.nlist
        params = faiss.SearchParametersIVF(nprobe=min(cfg.nprobe * widen, nlist), sel=sel)
        count = self._n if selection is None else selection.count
        _, cand = self._index.search(queries, min(k * cfg.rerank, count), params=params)
        # Re-score the PQ candidates with the stored vectors: PQ distances alone rank too coarsely.
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        slots = np.full((len(queries), k), -1, dtype=np.int64)
        for row, found in enumerate(cand):
            found = found[found >= 0]
            exact = (self._vectors(found) @ queries[row]).reshape(1, -1)
            order = top_k_by_slot(exact, found.reshape(1, -1), k)[0]
            scores[row, : len(order)] = exact[0, order]
            slots[row, : len(order)] = found[order]
        return scores, slots

    def _search(self, queries: np.ndarray, k: int, wanted: flt.Wanted) -> tuple[np.ndarray, np.ndarray]:
        selection = self._selection(wanted)
        count = self._n if selection is None else selection.count
        k = min(k, count)
        if k <= 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        few = selection is not None and (
            selection.count <= self.config.exact_below or selection.count < self.config.ann_min_share * len(self._slot)
        )
        if few:
            return self._exact(queries, k, selection)
        scores, slots = self._ann(queries, k, selection)
        short = np.flatnonzero((slots < 0).any(axis=1))
        if len(short):  # the graph walk ran out before k matches: answer those queries exactly
            scores[short], slots[short] = self._exact(queries[short], k, selection)
        return scores, slots
