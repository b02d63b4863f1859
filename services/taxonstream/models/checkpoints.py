"""Real checkpoints into the same Triton layout as the stand-ins: BioCLIP (ViT-B/16) and BioCLIP 2 (ViT-L/14).

    taxonstream models install bioclip  --checkpoint open_clip_pytorch_model.bin [--out DIR] [--upload]
    taxonstream models install bioclip2 --checkpoint open_clip_model.safetensors

The checkpoint is an open_clip CLIP state dict (`.bin`/`.pt` via torch.load with weights_only, or
`.safetensors`), as the BioCLIP repositories publish it. Its keys map one to one onto our towers, which use
open_clip's parameter names: `visual.*` -> the image tower, `token_embedding`, `positional_embedding`,
`transformer.*`, `ln_final`, `text_projection` -> the text tower. The geometry (widths, layers, patch,
image size, embedding size) is read from the tensors' shapes and checked against the preset; heads are
width / 64 as in open_clip. Each tower is exported to ONNX, checked against torch, and written as
`<name>_image/<version>` and `<name>_text/<version>` beside the stand-ins, with the same tensor names, so
the embedder takes them by setting `TAXONSTREAM_EMBED_MODEL=<name>_image` (and `..._TEXT_MODEL`).

Two numbers come from the checkpoint, not from us: its temperature, exp(`logit_scale`), written into both
towers' config.pbtxt as the parameter `logit_scale` (the embedder hands it to Classify, as pybioclip uses
it) and into model.json; and its activation — QuickGELU or GELU — read from the open_clip config beside
the checkpoint (`open_clip_config.json` as the Hugging Face repositories ship it, or `config.json`; key
`quick_gelu`, false when absent: BioCLIP's and BioCLIP 2's are false, OpenAI's CLIP is true), overridden
with `--quick-gelu` / `--no-quick-gelu`. Without a config the default is GELU (open_clip's).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from taxonstream.core.keys import model_repository_key

from .contract import CLIP_CONTEXT_LENGTH, ModelContract, TensorSpec
from .installs import installed_entry, publish, staging_dir
from .triton_config import Target, render_config, write_triton_files

PARITY_TOLERANCE = 1e-3  # absolute on raw embeddings; full-size towers sum more terms than the stand-ins
OPEN_CLIP_CONFIGS = ("open_clip_config.json", "config.json")  # beside the checkpoint, in this order


@dataclass(frozen=True)
class ClipPreset:
    name: str
    family: str
    vision_width: int
    patch_size: int
    embedding_dim: int


PRESETS = {
    "bioclip": ClipPreset("bioclip", "clip-vit-b-16", 768, 16, 512),
    "bioclip2": ClipPreset("bioclip2", "clip-vit-l-14", 1024, 14, 768),
}


def load_state_dict(path: Path) -> dict[str, Any]:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # training checkpoints wrap it
    return {k.removeprefix("module."): v for k, v in state.items()}


def _layers(state: dict[str, Any], prefix: str) -> int:
    blocks = {int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)}
    return max(blocks) + 1 if blocks else 0


def clip_towers(state: dict[str, Any], quick_gelu: bool = False):
    """(image tower, text tower, logit scale) built to the state dict's geometry with its weights loaded."""
    from .clip_standin import ClipStandinImageEncoder, ClipTextEncoder, TextTowerConfig, VisionTowerConfig

    conv = state["visual.conv1.weight"]
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    grid = math.isqrt(int(state["visual.positional_embedding"].shape[0]) - 1)
    vision = VisionTowerConfig(
        image_size=grid * patch,
        patch_size=patch,
        width=width,
        heads=width // 64,
        layers=_layers(state, "visual.transformer.resblocks."),
        output_dim=int(state["visual.proj"].shape[1]),
        mlp_ratio=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
        quick_gelu=quick_gelu,
    )
    text_width = int(state["token_embedding.weight"].shape[1])
    text = TextTowerConfig(
        vocab_size=int(state["token_embedding.weight"].shape[0]),
        context_length=int(state["positional_embedding"].shape[0]),
        width=text_width,
        heads=text_width // 64,
        layers=_layers(state, "transformer.resblocks."),
        output_dim=int(state["text_projection"].shape[1]),
        mlp_ratio=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width,
        quick_gelu=quick_gelu,
    )
    image_tower = ClipStandinImageEncoder(vision)
    image_tower.load_state_dict({k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")})
    text_keys = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
    text_tower = ClipTextEncoder(text)
    text_tower.load_state_dict({k: v for k, v in state.items() if k.startswith(text_keys)})
    logit_scale = float(state["logit_scale"].exp()) if "logit_scale" in state else 100.0
    return image_tower.eval(), text_tower.eval(), logit_scale


def checkpoint_quick_gelu(checkpoint: Path) -> tuple[bool, str]:
    """(whether the checkpoint uses QuickGELU, where that was read) from the open_clip config beside it."""
    for name in OPEN_CLIP_CONFIGS:
        path = checkpoint.parent / name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not a readable JSON config ({error})") from error
        # open_clip_config.json nests the model under "model_cfg"; open_clip's own model configs do not.
        model = config.get("model_cfg", config) if isinstance(config, dict) else None
        if isinstance(model, dict) and ("vision_cfg" in model or "quick_gelu" in model):
            return bool(model.get("quick_gelu", False)), str(path)
    return False, "default (no open_clip config beside the checkpoint)"


def logit_scale_parameter(logit_scale: float) -> str:
    """The config.pbtxt parameter that carries the checkpoint's temperature to the embedder."""
    return f'parameters {{\n  key: "logit_scale"\n  value {{ string_value: "{logit_scale!r}" }}\n}}\n'


def install_clip(
    preset_name: str,
    checkpoint: Path,
    out_dir: Path,
    target: Target | str = Target.LOCAL,
    version: str = "1",
    name: str | None = None,
    check_preset: bool = True,
    quick_gelu: bool | None = None,
) -> list[dict[str, Any]]:
    """Export the checkpoint's two towers into the repository at `out_dir`; returns their manifest entries.

    `quick_gelu`: None reads it from the checkpoint's open_clip config (`checkpoint_quick_gelu`).
    """
    import numpy as np
    import torch

    from .onnx_export import export_checked

    preset = PRESETS[preset_name]
    if quick_gelu is None:
        quick_gelu, quick_gelu_from = checkpoint_quick_gelu(checkpoint)
    else:
        quick_gelu_from = "--quick-gelu" if quick_gelu else "--no-quick-gelu"
    image_tower, text_tower, logit_scale = clip_towers(load_state_dict(checkpoint), quick_gelu)
    vision, text = image_tower.config, text_tower.config
    if check_preset and (vision.width, vision.patch_size, vision.output_dim) != (
        preset.vision_width,
        preset.patch_size,
        preset.embedding_dim,
    ):
        raise ValueError(
            f"{checkpoint} is a width-{vision.width}, patch-{vision.patch_size}, "
            f"{vision.output_dim}-d CLIP, not {preset.family} ({preset.embedding_dim}-d)"
        )
    base = name or preset.name
    size = vision.image_size
    contracts = [
        (
            ModelContract(
                f"{base}_image",
                version,
                preset.family,
                "image-embedding",
                False,
                (TensorSpec("pixel_values", (3, size, size)),),
                (TensorSpec("embeddings", (vision.output_dim,)),),
            ),
            image_tower,
            torch.zeros(1, 3, size, size),
        ),
        (
            ModelContract(
                f"{base}_text",
                version,
                preset.family + "-text",
                "text-embedding",
                False,
                (TensorSpec("input_ids", (text.context_length,), "TYPE_INT64"),),
                (TensorSpec("embeddings", (text.output_dim,)),),
                max_batch_size=128,
            ),
            text_tower,
            torch.zeros(1, text.context_length, dtype=torch.int64),
        ),
    ]
    if text.context_length != CLIP_CONTEXT_LENGTH:
        raise ValueError(f"text context {text.context_length}, the tokenizer gives {CLIP_CONTEXT_LENGTH}")
    entries = []
    rng = np.random.default_rng(0)
    target = Target(target)
    for contract, module, example in contracts:
        staging = staging_dir(out_dir, contract.name)
        if contract.task == "image-embedding":
            feeds = {"pixel_values": rng.normal(size=(2, 3, size, size)).astype(np.float32)}
        else:
            ids = np.zeros((2, text.context_length), np.int64)
            ids[:, 0], ids[0, 1:4], ids[1, 1:3] = 49406, [320, 1125, 49407], [1002, 49407]
            feeds = {"input_ids": ids}
        exported = export_checked(module, [example], staging, contract, feeds, PARITY_TOLERANCE)
        config = render_config(contract, target) + logit_scale_parameter(logit_scale)
        write_triton_files(staging, contract, target, config)
        entry = {
            **installed_entry(contract, checkpoint, exported),
            "logit_scale": logit_scale,
            "quick_gelu": quick_gelu,
            "quick_gelu_from": quick_gelu_from,
            "embedding_dim": contract.outputs[0].dims[0],
            "onnx_bytes": exported.path.stat().st_size,
            "settings": replace(module.config).as_dict(),
        }
        publish(staging, out_dir, entry)
        entries.append(entry)
    return entries


def upload_repository(out_dir: Path, store, prefix: str = "") -> list[str]:
    """Copy a model repository into the object store (Triton in Kubernetes loads it from s3://bucket/prefix)."""
    keys = []
    for path in sorted(p for p in out_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
        key = model_repository_key(prefix, path.relative_to(out_dir).as_posix())
        store.put(key, path.read_bytes())
        keys.append(key)
    return keys
