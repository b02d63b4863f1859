"""Linear probe: logistic regression on CLIP embeddings of a labelled set (scikit-learn).

For questions zero-shot cannot answer well — e.g. iDigBio's "is this herbarium sheet mercury-stained?" —
a few hundred labelled embeddings and a linear classifier on top are the usual recipe. The fitted probe is
saved as JSON (classes, weights, bias, the embedding model it was trained on), not as a pickle, so applying
it never runs code from the file.

A labelled set comes either as image files (embedded on the spot) or as keys of images already in the index
(`image_id`, `sha256`, `url` or `record_id`), whose stored vectors are used as they are: no re-embedding,
and exactly the vectors search answers from. The matching and the checks live here, free of gRPC.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

# Columns that name a stored image, in the order they are looked for. `url` and `record_id` are those of the
# record that first brought the image in (a duplicate's other URLs are not kept on the image).
KEY_COLUMNS = ("image_id", "sha256", "url", "record_id")
FILE_COLUMN = "image"
# Metadata an applied probe writes beside each score, when the image has it.
OUTPUT_METADATA = ("job_id", "record_id", "url", "sha256")


class ProbeError(ValueError):
    """A labelled set or a probe that cannot be used, with a message meant for the user."""


@dataclass
class Probe:
    classes: list[str]
    coef: list[list[float]]  # [classes, D] (binary: [1, D], for classes[1])
    intercept: list[float]
    model: str
    model_version: str
    source: str = ""  # "index" (stored vectors) or "files"; informational
    examples: int = 0  # labelled images it was fitted on

    @property
    def dim(self) -> int:
        return len(self.coef[0])

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """[N, classes] class probabilities, as scikit-learn's predict_proba gives them."""
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ProbeError(f"the probe takes {self.dim}-d vectors, not {list(vectors.shape)}")
        logits = np.asarray(vectors, np.float64) @ np.asarray(self.coef).T + np.asarray(self.intercept)
        if len(self.classes) == 2:
            positive = 1.0 / (1.0 + np.exp(-logits[:, 0]))
            return np.stack([1.0 - positive, positive], axis=1)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def predict(self, vectors: np.ndarray) -> list[tuple[str, float]]:
        probs = self.probabilities(vectors)
        return [(self.classes[int(i)], float(row[i])) for row, i in zip(probs, probs.argmax(axis=1), strict=True)]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)) + "\n")

    @classmethod
    def load(cls, path: Path) -> Probe:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ProbeError(f"{path}: not a probe file ({error})") from error
        known = {f.name for f in fields(cls)}
        required = {"classes", "coef", "intercept", "model", "model_version"}
        missing = required - set(data if isinstance(data, dict) else ())
        if missing:
            raise ProbeError(f"{path}: not a probe file (missing {', '.join(sorted(missing))})")
        return cls(**{k: v for k, v in data.items() if k in known})

    def check_model(self, model: str, model_version: str, where: str) -> None:
        """A probe is only meaningful on vectors of the model it was fitted on: refuse any other."""
        if (model, model_version) != (self.model, self.model_version):
            raise ProbeError(
                f"the probe was trained on {self.model}/{self.model_version} embeddings, {where} has "
                f"{model}/{model_version}: train it again on that model's vectors"
            )


def train(
    vectors: np.ndarray, labels: list[str], model: str, model_version: str, c: float = 1.0, source: str = ""
) -> Probe:
    from sklearn.linear_model import LogisticRegression

    counts = Counter(labels)
    if len(counts) < 2:
        only = f" (every row is {next(iter(counts))!r})" if counts else ""
        raise ProbeError(f"a probe needs at least two classes{only}")
    fitted = LogisticRegression(C=c, max_iter=2000).fit(np.asarray(vectors, np.float64), labels)
    return Probe(
        [str(c) for c in fitted.classes_],
        fitted.coef_.tolist(),
        fitted.intercept_.tolist(),
        model,
        model_version,
        source,
        len(labels),
    )


@dataclass
class LabelledSet:
    key: str  # FILE_COLUMN or one of KEY_COLUMNS
    rows: list[tuple[str, str]]  # (key value, label), in file order


def read_labelled(path: Path, key: str | None = None) -> LabelledSet:
    """A labelled CSV: `label` plus `image` (file paths) or a column naming stored images.

    Without `key`, `image` wins (the original file-based form), then KEY_COLUMNS in order. Rows without a
    label are skipped, so a half-labelled sheet can be used as it is.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in reader.fieldnames or []]
            raw = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ProbeError(f"{path}: cannot read it as CSV ({error})") from error
    if "label" not in columns:
        raise ProbeError(f"{path}: needs a 'label' column (has {', '.join(columns) or 'none'})")
    if key is None:
        key = next((c for c in (FILE_COLUMN, *KEY_COLUMNS) if c in columns), None)
        if key is None:
            raise ProbeError(
                f"{path}: needs a column naming the images: '{FILE_COLUMN}' (file paths) or one of "
                f"{', '.join(KEY_COLUMNS)} (images in the index)"
            )
    elif key not in columns:
        raise ProbeError(f"{path}: no {key!r} column (has {', '.join(columns)})")
    rows = [(r[key], r["label"]) for r in raw if r.get(key) and r.get("label")]
    if not rows:
        raise ProbeError(f"{path}: no row has both {key!r} and 'label'")
    return LabelledSet(key, rows)


@dataclass
class StoredImage:
    image_id: str
    metadata: Mapping[str, str]
    vector: Sequence[float]

    @property
    def model(self) -> tuple[str, str]:
        """(model, version) of the stored vector, from the index's `model` metadata ("name/version")."""
        name, _, version = self.metadata.get("model", "").rpartition("/")
        return name, version

    def key(self, column: str) -> str:
        return self.image_id if column == "image_id" else self.metadata.get(column, "")


def match_stored(
    labelled: LabelledSet,
    images: Iterable[StoredImage],
    allow_missing: bool = False,
) -> tuple[np.ndarray, list[str], tuple[str, str], list[str]]:
    """The stored vectors and labels of a labelled set; with the vectors' model and the keys not found.

    Reads `images` once (a stream), keeping only the wanted ones. Unknown keys are an error listing them
    unless `allow_missing`; vectors of more than one model, or of none named, are always an error.
    """
    wanted: dict[str, list[int]] = {}
    for position, (value, _) in enumerate(labelled.rows):
        wanted.setdefault(value, []).append(position)
    found: dict[int, StoredImage] = {}
    for image in images:
        for position in wanted.get(image.key(labelled.key), ()):
            found.setdefault(position, image)
    missing = list(dict.fromkeys(labelled.rows[p][0] for p in range(len(labelled.rows)) if p not in found))
    if missing and not allow_missing:
        shown = ", ".join(missing[:20]) + (f" … ({len(missing) - 20} more)" if len(missing) > 20 else "")
        raise ProbeError(f"{len(missing)} of the labelled {labelled.key}s are not in the index: {shown}")
    positions = sorted(found)
    if not positions:
        raise ProbeError(f"none of the labelled {labelled.key}s is in the index")
    models = Counter(found[p].model for p in positions)
    if len(models) > 1:
        listed = ", ".join(f"{m}/{v} ({n})" for (m, v), n in models.most_common())
        raise ProbeError(f"the labelled images carry vectors of more than one model: {listed}")
    model = next(iter(models))
    if not model[0]:
        raise ProbeError("the index does not say which model its vectors come from")
    dims = {len(found[p].vector) for p in positions}
    if len(dims) > 1 or 0 in dims:
        raise ProbeError(f"the stored vectors have sizes {sorted(dims)}: ask the index with_vectors")
    vectors = np.asarray([found[p].vector for p in positions], dtype=np.float32)
    return vectors, [labelled.rows[p][1] for p in positions], model, missing


def output_header(probe: Probe, columns: Sequence[str] = ()) -> list[str]:
    return ["image_id", "label", "probability", *(f"p_{c}" for c in probe.classes), *OUTPUT_METADATA, *columns]


def score_rows(probe: Probe, images: Sequence[StoredImage], columns: Sequence[str] = ()) -> list[list[str]]:
    """CSV rows (output_header's columns) for stored images: the probe's class, its probability, every
    class's probability, and metadata to find the image again. Refuses vectors of another model."""
    if not images:
        return []
    for image in images:
        image_model = image.model
        if image_model != (probe.model, probe.model_version):
            probe.check_model(*image_model, where=f"stored image {image.image_id}")
    probs = probe.probabilities(np.asarray([i.vector for i in images], dtype=np.float32))
    rows = []
    for image, row in zip(images, probs, strict=True):
        best = int(row.argmax())
        rows.append(
            [
                image.image_id,
                probe.classes[best],
                f"{row[best]:.6f}",
                *(f"{p:.6f}" for p in row),
                *(image.metadata.get(c, "") for c in (*OUTPUT_METADATA, *columns)),
            ]
        )
    return rows
