"""The local target's model.py, run without Triton.

Only the few names it uses from `triton_python_backend_utils` are faked (requests holding tensors,
responses, errors); everything else is real: the written repository, config, ONNX file, onnxruntime.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
onnxruntime = pytest.importorskip("onnxruntime")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")

from google.protobuf import json_format, text_format  # noqa: E402

from taxonstream.models.repository import write_repository  # noqa: E402


class FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class FakeRequest:
    def __init__(self, **arrays: np.ndarray) -> None:
        self.tensors = {name: FakeTensor(name, array) for name, array in arrays.items()}


class FakeError:
    def __init__(self, message: str) -> None:
        self._message = message

    def message(self) -> str:
        return self._message


class FakeResponse:
    def __init__(self, output_tensors: list[FakeTensor], error: FakeError | None = None) -> None:
        self.tensors = {tensor.name(): tensor.as_numpy() for tensor in output_tensors}
        self.error = error


def _fake_pb_utils() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = FakeTensor
    module.InferenceResponse = FakeResponse
    module.TritonError = FakeError
    module.get_input_tensor_by_name = lambda request, name: request.tensors.get(name)
    return module


class CountingSession:
    """Wraps the real session to count how often execute() runs it."""

    def __init__(self, session: Any) -> None:
        self.session, self.calls, self.batch_sizes = session, 0, []

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.calls += 1
        self.batch_sizes.append(len(next(iter(feeds.values()))))
        return self.session.run(output_names, feeds)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(tmp_path_factory.mktemp("repo") / "models", "local")


def _load_model(repo: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    spec = importlib.util.spec_from_file_location(f"triton_model_{name}", repo / name / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # What Triton passes: the config as JSON with proto field names (int64 dims come as strings).
    config = text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    model = module.TritonPythonModel()
    model.initialize(
        {
            "model_config": json_format.MessageToJson(config, preserving_proto_field_name=True),
            "model_repository": str(repo / name),
            "model_version": "1",
        }
    )
    model.session = CountingSession(model.session)
    return model


def _reference(repo: Path, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = onnxruntime.InferenceSession(str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def test_encoder_batches_requests_into_one_run(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _load_model(repo, "clip_standin_image", monkeypatch)
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(n, 3, 224, 224)).astype(np.float32) for n in (1, 3, 2)]
    responses = model.execute([FakeRequest(pixel_values=b) for b in batches])

    assert model.session.calls == 1 and model.session.batch_sizes == [6]
    assert len(responses) == 3
    for batch, response in zip(batches, responses, strict=True):
        assert response.error is None
        embeddings = response.tensors["embeddings"]
        assert embeddings.shape == (len(batch), 512) and embeddings.dtype == np.float32
        expected = _reference(repo, "clip_standin_image", {"pixel_values": batch})["embeddings"]
        np.testing.assert_allclose(embeddings, expected, atol=1e-4)


def test_detector_splits_both_outputs_back(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _load_model(repo, "detector_standin", monkeypatch)
    rng = np.random.default_rng(1)
    batches = [rng.random((n, 3, 256, 256), dtype=np.float32) for n in (2, 1)]
    responses = model.execute([FakeRequest(images=b) for b in batches])

    assert model.session.calls == 1
    for batch, response in zip(batches, responses, strict=True):
        expected = _reference(repo, "detector_standin", {"images": batch})
        assert response.tensors["boxes"].shape == (len(batch), 8, 4)
        assert response.tensors["scores"].shape == (len(batch), 8)
        np.testing.assert_allclose(response.tensors["boxes"], expected["boxes"], atol=1e-6)
        np.testing.assert_allclose(response.tensors["scores"], expected["scores"], atol=1e-6)


def test_a_malformed_request_fails_alone(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _load_model(repo, "clip_standin_image", monkeypatch)
    good = np.zeros((2, 3, 224, 224), dtype=np.float32)
    requests = [
        FakeRequest(pixel_values=good),
        FakeRequest(pixel_values=np.zeros((1, 3, 32, 32), dtype=np.float32)),  # wrong size
        FakeRequest(wrong_name=good),  # missing input
        FakeRequest(pixel_values=good[:1]),
    ]
    responses = model.execute(requests)

    assert [r.error is None for r in responses] == [True, False, False, True]
    assert "shape" in responses[1].error.message()
    assert "pixel_values" in responses[2].error.message()
    assert model.session.calls == 1 and model.session.batch_sizes == [3]
    np.testing.assert_allclose(responses[3].tensors["embeddings"], responses[0].tensors["embeddings"][:1], atol=1e-5)


def test_only_malformed_requests_run_nothing(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _load_model(repo, "detector_standin", monkeypatch)
    responses = model.execute([FakeRequest(images=np.zeros((1, 3, 8, 8), dtype=np.float32))])
    assert responses[0].error is not None
    assert model.session.calls == 0


def test_float64_input_is_accepted_as_float32(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _load_model(repo, "detector_standin", monkeypatch)
    batch = np.full((1, 3, 256, 256), 0.5)
    response = model.execute([FakeRequest(images=batch)])[0]
    expected = _reference(repo, "detector_standin", {"images": batch.astype(np.float32)})
    np.testing.assert_allclose(response.tensors["scores"], expected["scores"], atol=1e-6)
