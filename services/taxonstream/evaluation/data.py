"""A labelled embedding set: vectors (one per row) and, for each rank, every row's label ('' = unknown).

Embeddings come from a `.npy` file (row i ↔ labels row i) or from a list column of the labels file
(`embedding` or `vector`, Parquet or JSONL). Labels are read from CSV/TSV/Parquet/JSONL: a column named
after the rank wins; standard ranks missing as columns are derived from the row's Darwin Core columns
the way the index derives its filter facets (so `species` can come from `scientificName`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from taxonstream.index.filters import RANKS, facets

# Ranks reported when none are asked for: the NFHM report's category/genus/species plus the Linnaean ranks.
DEFAULT_RANKS: tuple[str, ...] = ("category", *RANKS)
VECTOR_COLUMNS = ("embedding", "vector")
ID_COLUMNS = ("image_id", "id", "sha256")


class DataError(ValueError):
    pass


@dataclass(frozen=True)
class Labelled:
    vectors: np.ndarray  # (n, d) float32
    labels: dict[str, np.ndarray]  # rank → (n,) str, '' where unknown
    ids: np.ndarray  # (n,) str: the id column, else the row number

    def __len__(self) -> int:
        return len(self.vectors)


def _rows(path: Path) -> Iterator[dict[str, object]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000):
            yield from batch.to_pylist()
    elif suffix in {".jsonl", ".json"}:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise DataError(f"{path}:{number}: expected a JSON object per line")
                    yield row
    elif suffix in {".csv", ".tsv", ".txt"}:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            yield from csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
    else:
        raise DataError(f"{path}: unknown format {suffix or '(no extension)'}; use .csv, .tsv, .jsonl or .parquet")


def load(
    labels: Path,
    embeddings: Path | None = None,
    ranks: Sequence[str] | None = None,
    normalise: bool = True,
) -> Labelled:
    """Read a labelled set; `ranks` None means every default rank that has at least one label."""
    if not labels.is_file():
        raise DataError(f"{labels}: no such file")
    rows = list(_rows(labels))
    if not rows:
        raise DataError(f"{labels}: no rows")
    columns = set(rows[0])
    if embeddings is not None:
        if not embeddings.is_file():
            raise DataError(f"{embeddings}: no such file")
        vectors = np.load(embeddings, allow_pickle=False)
    else:
        column = next((c for c in VECTOR_COLUMNS if c in columns), None)
        if column is None:
            raise DataError(f"{labels}: no {' or '.join(VECTOR_COLUMNS)} column; give the vectors with --embeddings")
        vectors = np.asarray([row[column] for row in rows])
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(rows):
        raise DataError(f"{len(rows)} label rows but embeddings of shape {vectors.shape}")
    if normalise:  # cosine similarity, as CLIP embeddings are compared
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.where(norms == 0, 1, norms)

    derived = [facets({k: str(v) for k, v in row.items() if v is not None}) for row in rows]
    table: dict[str, np.ndarray] = {}
    for rank in ranks or DEFAULT_RANKS:
        if rank in columns:
            values = [str(row.get(rank) or "").strip() for row in rows]
        elif rank in RANKS:
            values = [item.get(rank, "") for item in derived]
        elif not ranks:
            continue
        else:
            raise DataError(f"{labels}: no {rank!r} column (columns: {', '.join(sorted(columns))})")
        if ranks or any(values):
            table[rank] = np.asarray(values, dtype=object)
    if not table:
        raise DataError(f"{labels}: no labels at any of {', '.join(DEFAULT_RANKS)}")
    id_column = next((c for c in ID_COLUMNS if c in columns), None)
    ids = [str(row[id_column]) for row in rows] if id_column else [str(n) for n in range(len(rows))]
    return Labelled(vectors=vectors, labels=table, ids=np.asarray(ids, dtype=object))
