"""Classification from embeddings: top-1, top-5 and macro-F1 on a stratified 70/10/20 split (as BIOSCAN reports).

The split is drawn once, stratified by the finest rank (every species keeps its share in each part), and
used for every rank, so genus and species are judged on the same test images. Per class: 20% test and
10% validation, rounded half up, with at least one image left for training; a class of one or two images
is training only. Unlabelled rows at a rank take no part in that rank.

Classifiers:
- `knn` (default): cosine k-nearest neighbours over the training images, each class scored by the summed
  similarity of its neighbours — the retrieval-style classification a species search database does
  (BIOSCAN-CLIP classifies by nearest neighbours among known keys). k is chosen on the validation part.
- `linear`: a linear probe, scikit-learn's multinomial logistic regression, C chosen on the validation part.

Macro-F1 is scikit-learn's `f1_score(average="macro")` over the classes in the test truth or predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from taxonstream.evaluation.data import Labelled

SPLITS = ("train", "val", "test")
KNN_K = (1, 3, 5, 10, 20)
LINEAR_C = (0.1, 1.0, 10.0)


def stratified_split(labels: np.ndarray, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 0):
    """Each row's part ('train', 'val', 'test'; '' for unlabelled rows), per class in the given shares."""
    rng = np.random.default_rng(seed)
    names = labels.astype(str)
    split = np.full(len(names), "", dtype=object)
    for label in sorted(set(names) - {""}):
        rows = np.flatnonzero(names == label)
        rng.shuffle(rows)
        n = len(rows)
        n_test = int(np.floor(fractions[2] * n + 0.5))
        n_val = int(np.floor(fractions[1] * n + 0.5))
        while n_test + n_val >= n and (n_test or n_val):  # keep one to train on
            if n_val:
                n_val -= 1
            else:
                n_test -= 1
        split[rows[:n_test]] = "test"
        split[rows[n_test : n_test + n_val]] = "val"
        split[rows[n_test + n_val :]] = "train"
    return split


def knn_scores(train: np.ndarray, train_y: np.ndarray, queries: np.ndarray, k: int, classes: int) -> np.ndarray:
    """(queries, classes) summed cosine similarity of each class among the k nearest training images."""
    index = faiss.IndexFlatIP(train.shape[1])
    index.add(np.ascontiguousarray(train))
    sims, rows = index.search(np.ascontiguousarray(queries), min(k, len(train)))
    scores = np.zeros((len(queries), classes), dtype=np.float64)
    for j in range(rows.shape[1]):
        valid = rows[:, j] >= 0
        np.add.at(scores, (np.flatnonzero(valid), train_y[rows[valid, j]]), sims[valid, j])
    # Break ties in favour of the single nearest neighbour's class.
    scores[np.arange(len(queries)), train_y[rows[:, 0]]] += 1e-9
    return scores


def top_k_accuracy(scores: np.ndarray, truth: np.ndarray, k: int) -> float:
    if len(truth) == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float((top == truth[:, None]).any(axis=1).mean())


@dataclass(frozen=True)
class RankResult:
    rank: str
    method: str
    param: float
    top1: float
    top5: float
    macro_f1: float
    train: int
    val: int
    test: int
    classes: int
    per_class: list[dict[str, object]]  # label, test, accuracy, f1


def evaluate_rank(
    vectors: np.ndarray, labels: np.ndarray, split: np.ndarray, rank: str, method: str = "knn", seed: int = 0
) -> RankResult:
    from sklearn.metrics import f1_score

    names = labels.astype(str)
    usable = names != ""
    classes, codes = np.unique(names[usable], return_inverse=True)
    y = np.full(len(names), -1)
    y[usable] = codes
    part = {s: np.flatnonzero(usable & (split == s)) for s in SPLITS}
    if len(part["train"]) == 0 or len(part["test"]) == 0:
        raise ValueError(f"{rank}: nothing to train on or test (labelled rows: {int(usable.sum())})")

    def scores_for(param: float, rows: np.ndarray) -> np.ndarray:
        if method == "knn":
            return knn_scores(vectors[part["train"]], y[part["train"]], vectors[rows], int(param), len(classes))
        model = linear_probe(vectors[part["train"]], y[part["train"]], param, seed)
        out = np.full((len(rows), len(classes)), -np.inf)
        out[:, model.classes_] = model.predict_log_proba(vectors[rows])
        return out

    grid = KNN_K if method == "knn" else LINEAR_C
    if method not in ("knn", "linear"):
        raise ValueError(f"unknown method {method!r}: knn or linear")
    if len(part["val"]):
        param = max(grid, key=lambda p: (top_k_accuracy(scores_for(p, part["val"]), y[part["val"]], 1), -grid.index(p)))
    else:
        param = grid[0]
    scores = scores_for(param, part["test"])
    truth = y[part["test"]]
    predicted = scores.argmax(axis=1)
    present = np.unique(np.concatenate([truth, predicted]))
    f1_each = f1_score(truth, predicted, labels=present, average=None, zero_division=0)
    per_class = []
    for code, f1 in zip(present, f1_each, strict=True):
        rows = truth == code
        if rows.any():
            per_class.append(
                {
                    "label": classes[code],
                    "test": int(rows.sum()),
                    "accuracy": float((predicted[rows] == code).mean()),
                    "f1": float(f1),
                }
            )
    return RankResult(
        rank=rank,
        method=method,
        param=float(param),
        top1=top_k_accuracy(scores, truth, 1),
        top5=top_k_accuracy(scores, truth, 5),
        macro_f1=float(f1_score(truth, predicted, average="macro", zero_division=0)),
        train=len(part["train"]),
        val=len(part["val"]),
        test=len(part["test"]),
        classes=len(classes),
        per_class=per_class,
    )


def linear_probe(x: np.ndarray, y: np.ndarray, c: float, seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(x, y)


FINEST_FIRST = ("species", "genus", "family", "order", "class", "phylum", "kingdom", "category")


def split_rank(data: Labelled) -> str:
    """The rank the split is stratified by: the finest one present."""
    return next((r for r in FINEST_FIRST if r in data.labels), next(iter(data.labels)))


def evaluate(
    data: Labelled, method: str = "knn", seed: int = 0, ranks: Sequence[str] | None = None
) -> tuple[list[RankResult], np.ndarray]:
    """Every rank's result, and the split (one entry per row) they share."""
    split = stratified_split(data.labels[split_rank(data)], seed=seed)
    # Rows without the finest label still belong somewhere at coarser ranks: give them their own split.
    unassigned = split == ""
    if unassigned.any():
        rest = stratified_split(np.where(unassigned, "unlabelled-at-finest", ""), seed=seed + 1)
        split = np.where(unassigned, rest, split)
    results = [
        evaluate_rank(data.vectors, labels, split, rank, method, seed)
        for rank, labels in data.labels.items()
        if ranks is None or rank in ranks
    ]
    return results, split
