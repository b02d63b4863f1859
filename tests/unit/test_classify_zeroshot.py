"""Zero-shot and rank classification: templates, label averaging, softmax, per-rank sums, banks, caching."""

from __future__ import annotations

import numpy as np
import pytest

from taxonstream.classify.service import Classifier, ClassifyError
from taxonstream.classify.templates import OPENAI_IMAGENET_TEMPLATES, prompts
from taxonstream.classify.zeroshot import LabelBank, label_embeddings, probabilities, zero_shot

TAXA = [
    ["Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Nymphalidae", "Danaus", "plexippus"],
    ["Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Nymphalidae", "Danaus", "gilippus"],
    ["Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Pieridae", "Pieris", "rapae"],
    ["Animalia", "Arthropoda", "Insecta", "Coleoptera", "Carabidae", "Carabus", "nemoralis"],
]
NAMES = [[t, c] for t, c in zip(TAXA, ["monarch", "queen", "small white", ""], strict=True)]


def _unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_eighty_distinct_openai_templates_each_with_one_slot() -> None:
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80
    assert len(set(OPENAI_IMAGENET_TEMPLATES)) == 80
    assert all(t.count("{}") == 1 for t in OPENAI_IMAGENET_TEMPLATES)
    assert "a photo of a {}." in OPENAI_IMAGENET_TEMPLATES


def test_prompts_are_label_major() -> None:
    assert prompts(["moth", "bee"], ["a {}.", "the {}!"]) == ["a moth.", "the moth!", "a bee.", "the bee!"]
    with pytest.raises(ValueError):
        prompts(["moth"], ["no slot"])


def test_label_embedding_is_the_renormalised_mean_of_its_prompts() -> None:
    prompt_vectors = np.stack([_unit(1, 0, 0), _unit(0, 1, 0), _unit(0, 0, 2), _unit(0, 0, 1)])
    labels = label_embeddings(prompt_vectors, 2)
    np.testing.assert_allclose(labels[0], _unit(1, 1, 0), atol=1e-6)
    np.testing.assert_allclose(labels[1], _unit(0, 0, 1), atol=1e-6)
    with pytest.raises(ValueError):
        label_embeddings(prompt_vectors, 3)


def test_probabilities_are_softmax_of_scaled_cosines() -> None:
    image = _unit(1, 0)
    classes = np.stack([_unit(1, 0), _unit(0, 1), _unit(1, 1)])
    cos = np.array([1.0, 0.0, 2**-0.5])
    expected = np.exp(100 * cos) / np.exp(100 * cos).sum()
    np.testing.assert_allclose(probabilities(image, classes), expected, rtol=1e-5)
    assert probabilities(image, classes, logit_scale=1.0).sum() == pytest.approx(1.0)


def test_zero_shot_returns_top_k_best_first() -> None:
    predictions = zero_shot(
        _unit(1, 0.1), ["beetle", "moth", "bee"], np.stack([_unit(0, 1), _unit(1, 0), _unit(1, 1)]), k=2, logit_scale=10
    )
    assert [p.label for p in predictions] == ["moth", "bee"]
    assert predictions[0].score > predictions[1].score


def _bank() -> LabelBank:
    vectors = np.stack([_unit(1, 0, 0, 0), _unit(0, 1, 0, 0), _unit(0, 0, 1, 0), _unit(0, 0, 0, 1)])
    return LabelBank.from_arrays(vectors.T, NAMES)  # pybioclip's [D, N]


def test_rank_probabilities_sum_the_species_under_each_taxon() -> None:
    bank = _bank()
    image = _unit(1, 1, 0.5, 0)
    species = probabilities(image, bank.embeddings, 5.0)
    by_genus = bank.predict(image, "genus", k=10, logit_scale=5.0)
    assert [p.label for p in by_genus] == ["Danaus", "Pieris", "Carabus"]
    assert by_genus[0].score == pytest.approx(species[0] + species[1])
    assert by_genus[0].taxon == tuple(TAXA[0][:6])
    by_order = bank.predict(image, "order", k=1, logit_scale=5.0)
    assert (by_order[0].label, by_order[0].score) == ("Lepidoptera", pytest.approx(species[:3].sum()))
    top = bank.predict(image, "species", k=2, logit_scale=5.0)
    assert [(p.label, p.common_name) for p in top] == [("Danaus plexippus", "monarch"), ("Danaus gilippus", "queen")]
    assert sum(p.score for p in bank.predict(image, "kingdom", k=5)) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        bank.predict(image, "tribe")


def test_bank_round_trips_and_checks_its_shape() -> None:
    bank = _bank()
    again = LabelBank.from_bytes(*bank.to_bytes())
    np.testing.assert_array_equal(again.embeddings, bank.embeddings)
    assert again.taxa == bank.taxa and again.common_names == bank.common_names
    with pytest.raises(ValueError):
        LabelBank.from_arrays(np.zeros((3, 5)), NAMES)
    with pytest.raises(ValueError):
        LabelBank.from_arrays(np.eye(4), NAMES, dim=512)
    with pytest.raises(ValueError):
        LabelBank.from_arrays(np.eye(4), [[["Animalia", "Danaus"], ""]] * 4)


class FakeEmbedder:
    """Texts to vectors by keyword, counting calls: stands in for the embedder's EmbedTexts."""

    def __init__(self, model: str = "clip/1") -> None:
        self.calls = 0
        self.model = model

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, str, str, float]:
        self.calls += 1
        vectors = np.stack([_unit(1, 0.01) if "moth" in t else _unit(0.01, 1) for t in texts])
        name, version = self.model.split("/")
        return vectors, name, version, 0.0  # a stand-in: no temperature recorded


def test_classifier_zero_shot_caches_label_vectors_per_label_set() -> None:
    embedder = FakeEmbedder()
    classifier = Classifier(embedder, None, "clip", "1")
    first = classifier.zero_shot(_unit(1, 0), ["moth", "beetle"], k=2)
    assert [p.label for p in first] == ["moth", "beetle"]
    assert embedder.calls == 1  # 160 prompts in one call
    classifier.zero_shot(_unit(0, 1), ["moth", "beetle"], k=2)
    assert embedder.calls == 1
    classifier.zero_shot(_unit(0, 1), ["moth", "beetle"], k=2, templates=["{}"])
    assert embedder.calls == 2


def test_classifier_refuses_mismatched_models_and_bad_requests() -> None:
    with pytest.raises(ClassifyError, match="would not compare"):
        Classifier(FakeEmbedder("other/2"), None, "clip", "1").zero_shot(_unit(1, 0), ["moth"], k=1)
    classifier = Classifier(FakeEmbedder(), None, "clip", "1")
    for labels in ([], [" "], ["moth", "moth"]):
        with pytest.raises(ClassifyError):
            classifier.zero_shot(_unit(1, 0), labels, k=1)
    with pytest.raises(ClassifyError):
        classifier.to_rank(_unit(1, 0), "tribe", k=1)
    with pytest.raises(ClassifyError):
        classifier.to_rank(_unit(1, 0), "genus", k=1)  # no store to read a bank from
