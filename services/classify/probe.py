"""Linear probe: logistic regression on CLIP embeddings of a labelled set (scikit-learn).

For questions zero-shot cannot answer well — e.g. iDigBio's "is this herbarium sheet mercury-stained?" —
a few hundred labelled embeddings and a linear classifier on top are the usual recipe. The fitted probe is
saved as JSON (classes, weights, bias, the embedding model it was trained on), not as a pickle, so applying
it never runs code from the file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass
class Probe:
    classes: list[str]
    coef: list[list[float]]   # [classes, D] (binary: [1, D], for classes[1])
    intercept: list[float]
    model: str
    model_version: str

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """[N, classes] class probabilities, as scikit-learn's predict_proba gives them."""
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
        return cls(**json.loads(path.read_text()))


def train(vectors: np.ndarray, labels: list[str], model: str, model_version: str, c: float = 1.0) -> Probe:
    from sklearn.linear_model import LogisticRegression

    if len(set(labels)) < 2:
        raise ValueError("a probe needs at least two classes")
    fitted = LogisticRegression(C=c, max_iter=2000).fit(np.asarray(vectors, np.float64), labels)
    return Probe([str(c) for c in fitted.classes_], fitted.coef_.tolist(), fitted.intercept_.tolist(),
                 model, model_version)
