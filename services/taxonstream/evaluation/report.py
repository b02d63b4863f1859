"""CSV tables and PNG box plots for the evaluations (matplotlib, drawn off-screen)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from taxonstream.evaluation.classify import RankResult
from taxonstream.evaluation.retrieval import RetrievalReport


def write_csv(path: Path, rows: Sequence[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0]) if rows else []
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _boxes(path: Path, panels: dict[str, dict[str, list[float]]], ylabel: str, title: str) -> Path:
    """One panel per key (e.g. per k), one box per rank within it."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.2), squeeze=False, sharey=True)
    for ax, (name, by_rank) in zip(axes[0], panels.items(), strict=True):
        ranks = [r for r, values in by_rank.items() if values]
        ax.boxplot([by_rank[r] for r in ranks], tick_labels=ranks, showmeans=True)
        ax.set_title(name)
        ax.set_ylim(-0.02, 1.02)
        ax.tick_params(axis="x", rotation=30)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def retrieval(report: RetrievalReport, out: Path) -> list[Path]:
    ks = sorted({int(row["k"]) for row in report.summary})
    ranks = list(dict.fromkeys(str(row["rank"]) for row in report.summary))
    panels = {
        f"recall@{k}": {r: [float(c[f"recall@{k}"]) for c in report.per_class if c["rank"] == r] for r in ranks}
        for k in ks
    }
    return [
        write_csv(out / "retrieval_summary.csv", report.summary),
        write_csv(out / "retrieval_per_class.csv", report.per_class),
        _boxes(out / "retrieval_recall_by_rank.png", panels, "per-class recall", "Leave-one-out retrieval"),
    ]


def classification(results: Sequence[RankResult], split: np.ndarray, ids: np.ndarray, out: Path) -> list[Path]:
    summary = [
        {
            k: getattr(r, k)
            for k in ("rank", "method", "param", "top1", "top5", "macro_f1", "train", "val", "test", "classes")
        }
        for r in results
    ]
    per_class = [{"rank": r.rank, **row} for r in results for row in r.per_class]
    panels = {
        "F1": {r.rank: [float(c["f1"]) for c in r.per_class] for r in results},
        "accuracy": {r.rank: [float(c["accuracy"]) for c in r.per_class] for r in results},
    }
    return [
        write_csv(out / "classify_summary.csv", summary),
        write_csv(out / "classify_per_class.csv", per_class),
        write_csv(out / "split.csv", [{"image_id": i, "split": s} for i, s in zip(ids, split, strict=True)]),
        _boxes(out / "classify_by_rank.png", panels, "per-class score", "Classification (test part)"),
    ]
