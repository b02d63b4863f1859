"""Triton model repository writer: config files parse, carry the contract, manifest, idempotence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")

from google.protobuf import text_format  # noqa: E402

from taxonstream.models import repository  # noqa: E402
from taxonstream.models.repository import ensure_repository, is_current, read_manifest  # noqa: E402
from tools.models.standins import main  # noqa: E402

EXPECTED = {
    "clip_standin_image": {
        "inputs": {"pixel_values": [3, 224, 224]},
        "outputs": {"embeddings": [512]},
    },
    "detector_standin": {
        "inputs": {"images": [3, 256, 256]},
        "outputs": {"boxes": [8, 4], "scores": [8]},
    },
    "clip_standin_text": {
        "inputs": {"input_ids": [77]},
        "outputs": {"embeddings": [512]},
    },
}
INT64_INPUTS = {"input_ids"}


@pytest.fixture(scope="module")
def local_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "models"
    assert main(["repository", "--out", str(out), "--target", "local"]) == 0
    return out


@pytest.fixture(scope="module")
def cluster_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cluster") / "models"
    assert main(["repository", "--out", str(out), "--target", "cluster"]) == 0
    return out


def _config(repo: Path, name: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def _check_contract(config: model_config_pb2.ModelConfig, name: str) -> None:
    assert config.name == name
    assert config.max_batch_size == (128 if name == "clip_standin_text" else 32)
    for tensor in [*config.input, *config.output]:
        expected = model_config_pb2.TYPE_INT64 if tensor.name in INT64_INPUTS else model_config_pb2.TYPE_FP32
        assert tensor.data_type == expected
    assert {t.name: list(t.dims) for t in config.input} == EXPECTED[name]["inputs"]
    assert {t.name: list(t.dims) for t in config.output} == EXPECTED[name]["outputs"]
    assert config.HasField("dynamic_batching")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_local_config_uses_python_backend(local_repo: Path, name: str) -> None:
    config = _config(local_repo, name)
    _check_contract(config, name)
    assert config.backend == "python" and not config.platform
    # One CPU instance: queued requests batch without waiting, and a free instance never idles.
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    assert [group.kind for group in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    assert config.parameters["intra_op_threads"].string_value in {"1", "2"}
    assert (local_repo / name / "1" / "model.py").is_file()
    assert (local_repo / name / "1" / "model.onnx").stat().st_size > 0


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cluster_config_uses_onnxruntime_on_gpu(cluster_repo: Path, name: str) -> None:
    config = _config(cluster_repo, name)
    _check_contract(config, name)
    assert config.platform == "onnxruntime_onnx" and not config.backend
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    assert [group.kind for group in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert sorted(p.name for p in (cluster_repo / name / "1").iterdir()) == ["model.onnx"]


def test_manifest_lists_each_model_as_a_stand_in(local_repo: Path) -> None:
    manifest = json.loads((local_repo / "models.json").read_text())
    assert manifest["target"] == "local"
    assert len(manifest["content_hash"]) == 64
    by_name = {entry["name"]: entry for entry in manifest["models"]}
    assert set(by_name) == set(EXPECTED)
    for entry in by_name.values():
        assert entry["standin"] is True
        assert entry["version"] == "1"
        assert entry["model_id"] == f"{entry['name']}/1"
        assert entry["torch_vs_onnxruntime_max_abs_diff"] < 1e-4
        assert "STAND-IN" in entry["description"]
    encoder = by_name["clip_standin_image"]
    assert encoder["family"] == "clip-vit"
    assert encoder["input_size"] == [224, 224]
    assert encoder["embedding_dim"] == 512
    assert encoder["embedding_normalised"] is False
    assert by_name["detector_standin"]["input_size"] == [256, 256]
    text = by_name["clip_standin_text"]
    assert (text["family"], text["embedding_dim"], text["settings"]["vocab_size"]) == ("clip-text", 512, 49408)
    assert "embedding_dim" not in by_name["detector_standin"]


def test_ensure_repository_skips_a_current_repository(local_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_current(local_repo, "local")

    def must_not_build(*_: object) -> Path:
        raise AssertionError("rebuilt a current repository")

    monkeypatch.setattr(repository, "_write_unlocked", must_not_build)
    assert ensure_repository(local_repo, "local") == local_repo.resolve()


def test_ensure_repository_rebuilds_for_another_target(local_repo: Path) -> None:
    # The same directory is not current for the cluster target: its hash differs.
    assert not is_current(local_repo, "cluster")


def test_ensure_repository_rebuilds_what_is_missing_or_changed(tmp_path: Path) -> None:
    out = tmp_path / "models"
    ensure_repository(out)
    first = read_manifest(out)
    assert first is not None

    (out / "detector_standin" / "1" / "model.onnx").unlink()
    assert not is_current(out)
    ensure_repository(out)
    assert (out / "detector_standin" / "1" / "model.onnx").is_file()
    assert read_manifest(out) == first  # same recipe, same content (exports are deterministic)

    manifest = json.loads((out / "models.json").read_text())
    manifest["content_hash"] = "0" * 64
    manifest["models"].append({"name": "retired_model", "version": "1"})
    (out / "models.json").write_text(json.dumps(manifest))
    (out / "retired_model" / "1").mkdir(parents=True)
    (out / "unrelated_model").mkdir()
    ensure_repository(out)
    assert is_current(out)
    assert not (out / "retired_model").exists()  # ours, no longer written: removed
    assert (out / "unrelated_model").is_dir()  # not ours: left alone
    assert not list(tmp_path.glob(".models-build-*"))  # staging cleaned up


def test_repository_reads_the_same_after_a_copy(local_repo: Path, tmp_path: Path) -> None:
    # What the local stack does when it copies a built repository: it stays current (no absolute paths).
    copy = tmp_path / "copy"
    shutil.copytree(local_repo, copy)
    assert is_current(copy, "local")
