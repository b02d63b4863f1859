"""Classify uses the checkpoint's own temperature (pybioclip's exp(logit_scale)), carried from install to Classify."""

from __future__ import annotations

import math

import numpy as np
import pytest
from google.protobuf import json_format, text_format

from taxonstream.classify.service import Classifier
from taxonstream.classify.zeroshot import DEFAULT_LOGIT_SCALE, LabelBank
from taxonstream.models.checkpoints import logit_scale_parameter

BIOCLIP_SCALE = 1 / 0.07  # CLIP's initial temperature; any value other than 100 will do


class ScaledEmbedder:
    """EmbedTexts as the embedder answers it: three fixed label directions and the model's temperature."""

    DIRECTIONS = {"moth": (1.0, 0.2, 0.0), "beetle": (0.3, 1.0, 0.1), "wasp": (0.1, 0.4, 1.0)}

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.calls = 0

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, str, str, float]:
        self.calls += 1
        rows = [next((v for k, v in self.DIRECTIONS.items() if k in t), (1.0, 1.0, 1.0)) for t in texts]
        vectors = np.asarray(rows, dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), "clip", "1", self.scale


def _softmax_of_scaled_cosines(scale: float, image: np.ndarray, classes: list[tuple[float, ...]]) -> list[float]:
    # Independent of the code under test: plain Python floats.
    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    img = unit(image)
    logits = [scale * sum(a * b for a, b in zip(img, unit(c), strict=True)) for c in classes]
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    return [e / sum(exps) for e in exps]


@pytest.mark.parametrize("scale", [BIOCLIP_SCALE, 2.5])
def test_zero_shot_probabilities_use_the_models_scale(scale: float) -> None:
    image = np.asarray([0.8, 0.5, 0.3], dtype=np.float32)
    labels = ["moth", "beetle", "wasp"]
    got = Classifier(ScaledEmbedder(scale), None, "clip", "1").zero_shot(image, labels, k=3, templates=["{}"])
    expected = _softmax_of_scaled_cosines(scale, image, [ScaledEmbedder.DIRECTIONS[label] for label in labels])
    by_label = {p.label: p.score for p in got}
    assert [by_label[label] for label in labels] == pytest.approx(expected, rel=1e-5)
    # And they differ from what the fixed 100 gave: the scale reached the softmax.
    at_100 = _softmax_of_scaled_cosines(100.0, image, [ScaledEmbedder.DIRECTIONS[label] for label in labels])
    assert max(abs(a - b) for a, b in zip(expected, at_100, strict=True)) > 0.01


def test_a_model_without_a_recorded_scale_uses_100() -> None:
    classifier = Classifier(ScaledEmbedder(0.0), None, "clip", "1")
    classifier.zero_shot(np.asarray([1.0, 0.0, 0.0], np.float32), ["moth", "wasp"], k=2, templates=["{}"])
    assert classifier.logit_scale == DEFAULT_LOGIT_SCALE


def test_rank_classification_asks_the_embedder_for_the_scale_once() -> None:
    embedder = ScaledEmbedder(BIOCLIP_SCALE)
    taxa = [["Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Nymphalidae", "Danaus", s] for s in ("a", "b")]
    bank = LabelBank.from_arrays(np.asarray([[1, 0.2, 0], [0.3, 1, 0.1]], np.float32), [[t, ""] for t in taxa])
    classifier = Classifier(embedder, None, "clip", "1")
    classifier._banks["tol"] = bank  # a bank already read (the store is not what this test is about)
    image = np.asarray([0.8, 0.5, 0.3], np.float32)
    got = [p.score for p in classifier.to_rank(image, "species", k=2)]
    expected = sorted(_softmax_of_scaled_cosines(BIOCLIP_SCALE, image, [(1, 0.2, 0), (0.3, 1, 0.1)]), reverse=True)
    assert got == pytest.approx(expected, rel=1e-5)
    classifier.to_rank(image, "genus", k=1)
    assert embedder.calls == 1


def test_the_install_parameter_reaches_the_embedder_as_written() -> None:
    # config.pbtxt's parameter, parsed as Triton parses it and read back the way the embedder reads it.
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    config = text_format.Parse(
        'name: "bioclip_text"\n' + logit_scale_parameter(14.285714), model_config_pb2.ModelConfig()
    )
    as_json = {"config": json_format.MessageToDict(config, preserving_proto_field_name=True)}
    assert float(as_json["config"]["parameters"]["logit_scale"]["string_value"]) == 14.285714

    from taxonstream.embedder.worker import TextEncoder

    class FakeClient:
        def get_model_config(self, model: str, version: str, as_json: bool = False) -> dict:
            assert (model, version, as_json) == ("bioclip_text", "1", True)
            return as_json_answer

    as_json_answer = as_json
    encoder = TextEncoder("127.0.0.1:1", "bioclip_text", "1", batch=8)
    encoder.model._local.client = FakeClient()
    assert encoder.logit_scale() == 14.285714
    as_json_answer = {"config": {"name": "clip_standin_text"}}  # a stand-in records none; the first answer is kept
    assert encoder.logit_scale() == 14.285714
