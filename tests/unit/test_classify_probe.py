"""Linear probe: trains on separable embeddings, agrees with scikit-learn, survives a JSON round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

from taxonstream.classify.probe import Probe, train  # noqa: E402


def _blobs(classes: list[str], per_class: int = 40, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(classes), dim)) * 3
    vectors = np.concatenate([c + rng.normal(size=(per_class, dim)) for c in centres])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, [label for label in classes for _ in range(per_class)]


@pytest.mark.parametrize("classes", [["clean", "mercury"], ["a", "b", "c"]])
def test_probe_separates_and_matches_sklearn(classes: list[str], tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    vectors, labels = _blobs(classes)
    probe = train(vectors, labels, "clip", "1")
    predicted = [label for label, _ in probe.predict(vectors)]
    assert np.mean([p == t for p, t in zip(predicted, labels, strict=True)]) > 0.95
    reference = LogisticRegression(C=1.0, max_iter=2000).fit(vectors, labels)
    np.testing.assert_allclose(probe.probabilities(vectors), reference.predict_proba(vectors), atol=1e-6)
    probe.save(tmp_path / "probe.json")
    again = Probe.load(tmp_path / "probe.json")
    np.testing.assert_allclose(again.probabilities(vectors), probe.probabilities(vectors))
    assert (again.model, again.model_version, again.classes) == ("clip", "1", sorted(classes))


def test_probe_needs_two_classes() -> None:
    with pytest.raises(ValueError):
        train(np.eye(3), ["x", "x", "x"], "clip", "1")
