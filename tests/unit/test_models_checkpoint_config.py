"""Whether a CLIP checkpoint uses QuickGELU: read from its open_clip config, `--quick-gelu` as the override."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from taxonstream.cli.main import parser
from taxonstream.models.checkpoints import checkpoint_quick_gelu

# Shapes of the configs as published: Hugging Face open_clip repositories nest the model under "model_cfg"
# (BioCLIP's has no quick_gelu key); open_clip's own model configs are flat (OpenAI's ViT-B-16 has it true).
BIOCLIP_HF = {"model_cfg": {"embed_dim": 512, "vision_cfg": {"image_size": 224}, "text_cfg": {}}, "preprocess_cfg": {}}
OPENAI_FLAT = {"embed_dim": 512, "quick_gelu": True, "vision_cfg": {"image_size": 224}, "text_cfg": {}}


def _checkpoint(folder: Path, config_name: str | None, config: object = None) -> Path:
    checkpoint = folder / "open_clip_pytorch_model.bin"
    checkpoint.write_bytes(b"")
    if config_name:
        (folder / config_name).write_text(config if isinstance(config, str) else json.dumps(config))
    return checkpoint


def test_bioclips_config_means_gelu(tmp_path: Path) -> None:
    value, source = checkpoint_quick_gelu(_checkpoint(tmp_path, "open_clip_config.json", BIOCLIP_HF))
    assert value is False and source.endswith("open_clip_config.json")


def test_openai_config_means_quick_gelu(tmp_path: Path) -> None:
    value, source = checkpoint_quick_gelu(_checkpoint(tmp_path, "config.json", OPENAI_FLAT))
    assert value is True and source.endswith("config.json")


def test_an_explicit_false_in_a_nested_config(tmp_path: Path) -> None:
    config = {"model_cfg": {**OPENAI_FLAT, "quick_gelu": False}}
    assert checkpoint_quick_gelu(_checkpoint(tmp_path, "open_clip_config.json", config))[0] is False


def test_no_config_or_an_unrelated_one_defaults_to_gelu(tmp_path: Path) -> None:
    assert checkpoint_quick_gelu(_checkpoint(tmp_path, None))[0] is False
    unrelated = {"architectures": ["DetrForObjectDetection"]}  # a Hugging Face config.json of another model
    value, source = checkpoint_quick_gelu(_checkpoint(tmp_path, "config.json", unrelated))
    assert value is False and source.startswith("default")


def test_a_broken_config_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="open_clip_config.json: not a readable JSON config"):
        checkpoint_quick_gelu(_checkpoint(tmp_path, "open_clip_config.json", "{not json"))


@pytest.mark.parametrize(("flag", "expected"), [([], None), (["--quick-gelu"], True), (["--no-quick-gelu"], False)])
def test_the_cli_override(flag: list[str], expected: bool | None) -> None:
    args = parser().parse_args(["models", "install", "bioclip", "--checkpoint", "x.bin", *flag])
    assert args.quick_gelu is expected


def test_the_help_documents_the_override(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["models", "install", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--quick-gelu" in text and "--no-quick-gelu" in text and "open_clip_config.json" in text
