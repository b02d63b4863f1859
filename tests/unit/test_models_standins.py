"""Stand-in models: shapes per the contract, fixed-seed weights, ONNX export parity, discrimination."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from taxonstream.models.clip_standin import VisionTowerConfig, build_clip_standin  # noqa: E402
from taxonstream.models.contract import CLIP_IMAGE, DETECTOR  # noqa: E402
from taxonstream.models.detector_standin import DetectorConfig, build_detector_standin  # noqa: E402
from taxonstream.models.discrimination import nearest_neighbour_check, torch_embed_fn  # noqa: E402
from taxonstream.models.onnx_export import export_onnx, max_abs_difference  # noqa: E402

PARITY = 1e-4  # absolute, on embeddings of norm ~20; measured ~2e-5


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[object, Path]]:
    out = tmp_path_factory.mktemp("onnx")
    encoder, detector = build_clip_standin(), build_detector_standin()
    encoder_path = export_onnx(
        encoder, [torch.zeros(1, 3, 224, 224)], out / "encoder.onnx", ["pixel_values"], ["embeddings"]
    )
    detector_path = export_onnx(
        detector, [torch.zeros(1, 3, 256, 256)], out / "detector.onnx", ["images"], ["boxes", "scores"]
    )
    return {"encoder": (encoder, encoder_path), "detector": (detector, detector_path)}


def test_encoder_output_shape_and_contract_agree() -> None:
    encoder = build_clip_standin()
    with torch.no_grad():
        out = encoder(torch.randn(2, *CLIP_IMAGE.inputs[0].dims))
    assert tuple(out.shape) == (2, *CLIP_IMAGE.outputs[0].dims) == (2, 512)
    assert CLIP_IMAGE.inputs[0].dims == (3, 224, 224)


def test_detector_outputs_follow_detr_convention() -> None:
    detector = build_detector_standin()
    with torch.no_grad():
        boxes, scores = detector(torch.rand(3, *DETECTOR.inputs[0].dims))
    assert tuple(boxes.shape) == (3, *DETECTOR.outputs[0].dims) == (3, 8, 4)
    assert tuple(scores.shape) == (3, *DETECTOR.outputs[1].dims) == (3, 8)
    for tensor in (boxes, scores):
        assert float(tensor.min()) >= 0.0 and float(tensor.max()) <= 1.0
    # Plausible, non-degenerate boxes: sides well above zero.
    assert float(boxes[..., 2:].min()) > 0.1


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    first = build_clip_standin().state_dict()
    again = build_clip_standin().state_dict()
    other = build_clip_standin(dataclasses.replace(VisionTowerConfig(), seed=1)).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["proj"], other["proj"])
    torch.manual_seed(123)  # the global RNG must not matter
    det_a = build_detector_standin().state_dict()
    torch.manual_seed(456)
    det_b = build_detector_standin().state_dict()
    assert all(torch.equal(det_a[k], det_b[k]) for k in det_a)
    det_c = build_detector_standin(dataclasses.replace(DetectorConfig(), seed=5)).state_dict()
    assert not torch.equal(det_a["score_head.weight"], det_c["score_head.weight"])


@pytest.mark.parametrize("batch", [1, 5])
def test_encoder_onnx_matches_torch(exported: dict, batch: int) -> None:
    module, path = exported["encoder"]
    rng = np.random.default_rng(batch)
    feeds = {"pixel_values": rng.normal(size=(batch, 3, 224, 224)).astype(np.float32)}
    assert max_abs_difference(module, path, feeds)["embeddings"] < PARITY


@pytest.mark.parametrize("batch", [1, 7])
def test_detector_onnx_matches_torch(exported: dict, batch: int) -> None:
    module, path = exported["detector"]
    rng = np.random.default_rng(batch)
    feeds = {"images": rng.random((batch, 3, 256, 256), dtype=np.float32)}
    differences = max_abs_difference(module, path, feeds)
    assert set(differences) == {"boxes", "scores"}
    assert max(differences.values()) < PARITY


def test_onnx_graphs_have_contract_names_and_dynamic_batch(exported: dict) -> None:
    def signature(path: Path) -> dict[str, list[object]]:
        graph = onnx.load(str(path)).graph
        return {
            value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            for value in [*graph.input, *graph.output]
        }

    assert signature(exported["encoder"][1]) == {"pixel_values": ["batch", 3, 224, 224], "embeddings": ["batch", 512]}
    assert signature(exported["detector"][1]) == {
        "images": ["batch", 3, 256, 256],
        "boxes": ["batch", 8, 4],
        "scores": ["batch", 8],
    }


def test_stand_in_encoder_tells_images_apart() -> None:
    report = nearest_neighbour_check(torch_embed_fn(build_clip_standin()), count=120, seed=3)
    assert report.top1_accuracy == 1.0  # every near-duplicate finds its own original
    assert report.self_match_accuracy == 1.0
    assert report.mean_cosine_distinct < 0.7  # not collapsed onto one direction
    assert report.mean_cosine_near_duplicate > 0.95


def test_discrimination_check_fails_collapsed_encoders() -> None:
    # Fully collapsed: every image gets the same vector, so no near-duplicate finds its own original.
    def constant(pixel_values: np.ndarray) -> np.ndarray:
        return np.ones((len(pixel_values), 8), dtype=np.float32)

    assert nearest_neighbour_check(constant, count=120, seed=3).top1_accuracy < 0.05

    # Mean colour on a large shared offset: what a badly initialised random tower amounts to. It still
    # separates these synthetic images, but the distinct-image bound above rejects it.
    def mean_colour(pixel_values: np.ndarray) -> np.ndarray:
        colour = pixel_values.mean(axis=(2, 3))
        return np.concatenate([colour, np.full((len(colour), 61), 10.0)], axis=1)

    assert nearest_neighbour_check(mean_colour, count=120, seed=3).mean_cosine_distinct > 0.7
