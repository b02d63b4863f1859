"""Evaluation: recall@k equals brute force, the split is stratified 70/10/20, metrics are the textbook ones."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taxonstream.cli.main import main
from taxonstream.evaluation import classify, retrieval
from taxonstream.evaluation.data import Labelled, load


def letters(n: int) -> str:
    """Latin-looking names: scientificName parsing wants letters, not digits."""
    return chr(97 + n // 26) + chr(97 + n % 26)


def synthetic(n: int = 300, dim: int = 16, seed: int = 0) -> Labelled:
    """Species clustered inside genera inside categories; a few unknown labels and a singleton species."""
    rng = np.random.default_rng(seed)
    species = rng.integers(24, size=n)
    species[0] = 99  # a species with one image: never a valid query
    centres = rng.normal(size=(100, dim))
    vectors = centres[species] + 1.2 * rng.normal(size=(n, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = {
        "category": np.array([f"C{s % 2}" for s in species], dtype=object),
        "genus": np.array([f"Genus{letters(s // 4)}" for s in species], dtype=object),
        "species": np.array([f"Genus{letters(s // 4)} ep{letters(s)}" for s in species], dtype=object),
    }
    labels["genus"][rng.choice(n, 10, replace=False)] = ""  # unknown at that rank
    return Labelled(vectors.astype(np.float32), labels, np.array([f"img{i}" for i in range(n)], dtype=object))


def brute_force_recall(data: Labelled, rank: str, k: int) -> tuple[float, int, dict[str, float]]:
    sims = data.vectors @ data.vectors.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    labels = data.labels[rank]
    counts = Counter(labels)
    per_class: dict[str, list[bool]] = {}
    for i, label in enumerate(labels):
        if label == "" or counts[label] < 2:
            continue
        per_class.setdefault(label, []).append(any(labels[j] == label for j in order[i]))
    every = [h for hits in per_class.values() for h in hits]
    return float(np.mean(every)), len(every), {c: float(np.mean(h)) for c, h in per_class.items()}


@pytest.mark.parametrize("engine", ["exact", "index"])
def test_recall_at_k_equals_brute_force(engine):
    data = synthetic()
    report = retrieval.evaluate(data, (1, 5, 10), engine=engine)
    for rank in data.labels:
        for k in (1, 5, 10):
            recall, queries, per_class = brute_force_recall(data, rank, k)
            row = next(r for r in report.summary if r["rank"] == rank and r["k"] == k)
            assert row["queries"] == queries and row["excluded"] == len(data) - queries
            assert row["recall"] == pytest.approx(recall)
            got = {c["label"]: c[f"recall@{k}"] for c in report.per_class if c["rank"] == rank}
            assert got == pytest.approx(per_class)
    # and the figures are not trivially perfect or zero: the set is a real test
    species_r1 = next(r["recall"] for r in report.summary if r["rank"] == "species" and r["k"] == 1)
    assert 0.2 < species_r1 < 0.95


def test_the_split_is_stratified_70_10_20_and_reproducible():
    labels = np.array(["a"] * 100 + ["b"] * 10 + ["c"] * 3 + ["d"] * 1 + [""] * 5, dtype=object)
    split = classify.stratified_split(labels, seed=1)
    share = {c: Counter(split[labels == c]) for c in "abcd"}
    assert share["a"] == {"train": 70, "val": 10, "test": 20}
    assert share["b"] == {"train": 7, "val": 1, "test": 2}
    assert share["c"] == {"train": 2, "test": 1}  # 0.3 val rounds down; one test; the rest trains
    assert share["d"] == {"train": 1}
    assert set(split[labels == ""]) == {""}
    assert (classify.stratified_split(labels, seed=1) == split).all()
    assert (classify.stratified_split(labels, seed=2) != split).any()


def test_knn_scores_and_metrics_match_hand_computation():
    train = np.eye(3, dtype=np.float32)
    train_y = np.array([0, 1, 1])
    queries = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8]], dtype=np.float32)
    scores = classify.knn_scores(train, train_y, queries, k=2, classes=2)
    # query 0: neighbours row 0 (0.9, class 0) and row 1 (0.1, class 1); query 1: rows 2 (0.8) and 1 (0.2)
    assert scores == pytest.approx(np.array([[0.9, 0.1], [0.0, 1.0]]), abs=1e-6)
    assert classify.top_k_accuracy(scores, np.array([1, 1]), 1) == 0.5
    assert classify.top_k_accuracy(scores, np.array([1, 1]), 2) == 1.0


@pytest.mark.parametrize("method", ["knn", "linear"])
def test_classification_reports_every_rank_on_one_split(method):
    data = synthetic(n=400, seed=3)
    results, split = classify.evaluate(data, method=method, seed=0)
    assert [r.rank for r in results] == ["category", "genus", "species"]
    for r in results:
        assert 0 <= r.top1 <= r.top5 <= 1 and 0 <= r.macro_f1 <= 1
        assert r.train + r.val + r.test == int((data.labels[r.rank] != "").sum())
    species = results[2]
    assert species.top1 > 0.5  # clusters are learnable; a chance classifier scores about 1/24
    # macro-F1 is the mean of the per-class F1 over the classes that occur (none predicted-only here or below)
    assert species.macro_f1 <= max(c["f1"] for c in species.per_class)
    assert Counter(split)["test"] == species.test


def write_set(tmp_path: Path, data: Labelled) -> tuple[Path, Path]:
    np.save(tmp_path / "vectors.npy", data.vectors)
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "category", "genus", "scientificName"])
        for i in range(len(data)):
            species = data.labels["species"][i]
            writer.writerow([data.ids[i], data.labels["category"][i], data.labels["genus"][i], f"{species} Author"])
    return tmp_path / "vectors.npy", labels


def read(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_cli_eval_retrieval_writes_tables_and_plots(tmp_path, capsys):
    data = synthetic()
    vectors, labels = write_set(tmp_path, data)
    out = tmp_path / "eval"
    assert main(["eval", "retrieval", "--labels", str(labels), "--embeddings", str(vectors), "--out", str(out)]) == 0
    summary = read(out / "retrieval_summary.csv")
    # species came from scientificName ("Genusaa epab Author" → "Genusaa epab"), matching the synthetic labels
    assert {r["rank"] for r in summary} == {"category", "genus", "species"}
    recall, _, _ = brute_force_recall(data, "species", 5)
    assert float(next(r["recall"] for r in summary if r["rank"] == "species" and r["k"] == "5")) == pytest.approx(
        recall
    )
    assert (out / "retrieval_recall_by_rank.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(read(out / "retrieval_per_class.csv")) > 20
    assert "species" in capsys.readouterr().out


def test_cli_eval_classify_from_a_parquet_with_vectors(tmp_path):
    data = synthetic(n=200)
    table = pa.table(
        {
            "image_id": list(data.ids),
            "species": list(data.labels["species"]),
            "embedding": [list(map(float, v)) for v in data.vectors],
        }
    )
    pq.write_table(table, tmp_path / "set.parquet")
    out = tmp_path / "eval"
    assert main(["eval", "classify", "--labels", str(tmp_path / "set.parquet"), "--out", str(out)]) == 0
    summary = read(out / "classify_summary.csv")
    assert [r["rank"] for r in summary] == ["genus", "species"]  # genus derived from the species binomial
    split = Counter(r["split"] for r in read(out / "split.csv"))
    assert split["train"] > split["test"] > split["val"] > 0
    assert (out / "classify_by_rank.png").stat().st_size > 1000


def test_cli_eval_refuses_mismatched_inputs(tmp_path, capsys):
    data = synthetic(n=50)
    vectors, labels = write_set(tmp_path, data)
    np.save(vectors, data.vectors[:40])
    assert main(["eval", "retrieval", "--labels", str(labels), "--embeddings", str(vectors)]) == 2
    assert "50 label rows but embeddings of shape (40, 16)" in capsys.readouterr().err
    assert main(["eval", "classify", "--labels", str(labels), "--embeddings", str(vectors), "--ranks", "colour"]) == 2


def test_load_derives_ranks_from_darwin_core(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("dwc:genus,dwc:specificEpithet,family\nDanaus,plexippus,Nymphalidae\nPapilio,machaon,\n")
    np.save(tmp_path / "v.npy", np.ones((2, 4), dtype=np.float32))
    data = load(path, tmp_path / "v.npy")
    assert list(data.labels) == ["family", "genus", "species"]
    assert list(data.labels["species"]) == ["Danaus plexippus", "Papilio machaon"]
    assert list(data.labels["family"]) == ["Nymphalidae", ""]
    assert np.allclose(np.linalg.norm(data.vectors, axis=1), 1)
