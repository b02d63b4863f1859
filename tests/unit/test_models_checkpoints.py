"""Real-checkpoint path: an open_clip-layout CLIP state dict (ViT-B/16 widths, one layer per tower to fit
2 cores) through the same converter `taxonstream models install bioclip` runs, into the Triton layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnxruntime = pytest.importorskip("onnxruntime")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")

from google.protobuf import text_format  # noqa: E402

from taxonstream.models.checkpoints import clip_towers, install_clip, load_state_dict  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """open_clip's ViT-B/16 layout from the fake-checkpoint tool's tables, one layer per tower."""
    tool = _fake_checkpoint_tool()
    geometry = tool.Geometry(
        image_size=224, patch_size=16, vision_width=768, vision_layers=1, embed_dim=512, text_width=512, text_layers=1
    )
    state = tool.random_state_dict(geometry, seed=5)
    state["logit_scale"] = torch.tensor(float(np.log(100.0)))
    path = tmp_path_factory.mktemp("ckpt") / "open_clip_pytorch_model.bin"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)  # a wrapped training save
    return path


def test_geometry_is_read_from_the_tensors(checkpoint: Path) -> None:
    image_tower, text_tower, logit_scale = clip_towers(load_state_dict(checkpoint))
    v, t = image_tower.config, text_tower.config
    assert (v.image_size, v.patch_size, v.width, v.heads, v.layers, v.output_dim) == (224, 16, 768, 12, 1, 512)
    assert (t.vocab_size, t.context_length, t.width, t.heads, t.layers, t.output_dim) == (49408, 77, 512, 8, 1, 512)
    assert logit_scale == pytest.approx(100.0, rel=1e-5)


def test_install_writes_both_towers_in_the_triton_layout(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "models"
    entries = install_clip("bioclip", checkpoint, out, target="cluster")
    assert [e["name"] for e in entries] == ["bioclip_image", "bioclip_text"]
    assert all(e["parity"] < 1e-3 and e["standin"] is False for e in entries)
    for entry, (inp, dims) in zip(entries, [("pixel_values", [3, 224, 224]), ("input_ids", [77])], strict=True):
        config = text_format.Parse((out / entry["name"] / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert config.platform == "onnxruntime_onnx" and config.HasField("dynamic_batching")
        assert [(t.name, list(t.dims)) for t in config.input] == [(inp, dims)]
        assert [(t.name, list(t.dims)) for t in config.output] == [("embeddings", [512])]
        assert json.loads((out / entry["name"] / "model.json").read_text())["embedding_dim"] == 512
    # The exported image tower is the checkpoint's: onnxruntime on it equals the torch tower with those weights.
    image_tower, _, _ = clip_towers(load_state_dict(checkpoint))
    pixels = np.random.default_rng(1).normal(size=(2, 3, 224, 224)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(out / "bioclip_image" / "1" / "model.onnx"))
    with torch.no_grad():
        expected = image_tower(torch.from_numpy(pixels)).numpy()
    np.testing.assert_allclose(session.run(["embeddings"], {"pixel_values": pixels})[0], expected, atol=1e-3)


def test_a_checkpoint_of_another_geometry_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not clip-vit-l-14"):
        install_clip("bioclip2", checkpoint, tmp_path / "models")


def _fake_checkpoint_tool():
    import importlib.util
    import sys

    if "fake_open_clip_checkpoint" not in sys.modules:  # dataclasses look their module up there
        path = Path(__file__).resolve().parents[2] / "tools" / "models" / "fake_open_clip_checkpoint.py"
        spec = importlib.util.spec_from_file_location("fake_open_clip_checkpoint", path)
        sys.modules[spec.name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["fake_open_clip_checkpoint"]


def test_full_size_fake_checkpoint_tables_are_open_clips() -> None:
    """The random full-size checkpoints (tools/models) have open_clip's parameter counts (its published table);
    their keys and shapes are checked by the towers' strict load (the other tests here)."""
    tool = _fake_checkpoint_tool()
    for name, geometry in tool.GEOMETRIES.items():
        assert tool.parameter_count(geometry) == tool.PUBLISHED_PARAMETERS[name]


def test_fake_checkpoint_safetensors_load_into_the_towers(tmp_path: Path) -> None:
    tool = _fake_checkpoint_tool()
    geometry = tool.Geometry(
        image_size=32, patch_size=16, vision_width=64, vision_layers=2, embed_dim=32, text_width=64, text_layers=1
    )
    path = tool.write_checkpoint(geometry, tmp_path / "open_clip_model.safetensors", dtype="float16")
    image_tower, text_tower, logit_scale = clip_towers(load_state_dict(path))  # strict: every key, every shape
    v, t = image_tower.config, text_tower.config
    assert (v.image_size, v.patch_size, v.width, v.heads, v.layers, v.output_dim) == (32, 16, 64, 1, 2, 32)
    assert (t.vocab_size, t.context_length, t.width, t.layers, t.output_dim) == (49408, 77, 64, 1, 32)
    assert logit_scale == pytest.approx(1 / 0.07, rel=1e-3)
