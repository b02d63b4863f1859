"""Real DETR-family detector checkpoints into the Triton layout, behind the DETECTOR tensor contract.

    taxonstream models install detr --checkpoint DIR [--label specimen] [--image-size 800] [--name detr]

DIR is a Hugging Face checkpoint folder: `config.json`, `model.safetensors` (or `pytorch_model.bin`) and,
when the model was published with one, `preprocessor_config.json`. Families (transformers 5.23, offline):

- `detr` (DetrForObjectDetection, e.g. the BIOSCAN crop tool's fine-tune of facebook/detr-resnet-50) with a
  transformers ResNet backbone (`backbone_config`, as in facebook/detr-resnet-50's `no_timm` revision). A
  checkpoint that names a timm backbone (`use_timm_backbone`, the main revision) would need timm, which is
  not installed here; its timm ResNet keys are renamed onto transformers' ResNet (`_timm_resnet_to_hf`).
- `yolos` (YolosForObjectDetection): a ViT detector with DETR's head and output convention.

Both score each query with a softmax over the classes plus a trailing "no object" logit. RT-DETR (sigmoid
scores, multi-scale deformable attention) is refused for now: its traced ONNX graph did not match torch.

The exported graph is `DetectorWrapper`: images [B, 3, S, S] in [0, 1] (squashed, as
`preprocess.detector_pixels` makes them) -> the checkpoint's own input scaling and mean/std ->
the model -> boxes [B, Q, 4] (cx, cy, w, h normalised, the model's `pred_boxes` as they are) and
scores [B, Q]: per query the highest probability among the specimen classes (`--label`, repeatable), or,
without --label, among all classes but "no object" for a multi-class checkpoint and the one class of a
one-class one. That is the score and box transformers' `post_process_object_detection` reports.
S defaults to the size the checkpoint was trained at (`size.shortest_edge` or a square `height`/`width`
from preprocessor_config.json, else 800): DETR resizes keeping the aspect ratio, our contract squashes,
so an image is seen at the trained scale, only stretched. The detector service reads S from Triton.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .contract import MAX_BATCH_SIZE, ModelContract, TensorSpec
from .installs import installed_entry, publish, staging_dir
from .triton_config import Target, render_config, write_triton_files

PARITY_TOLERANCE = 1e-3  # absolute, on probabilities and normalised box coordinates
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what DETR's and YOLOS's image processors default to
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 800  # DETR's shortest_edge
SOFTMAX_FAMILIES = ("detr", "yolos")
_STATE_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class InputConvention:
    """How the checkpoint wants its pixels: x = images * scale, then (x - mean) / std when normalising."""

    image_size: int
    scale: float  # 1.0 when the model was trained on rescale_factor 1/255 (pixels in [0, 1])
    mean: tuple[float, float, float] | None  # None: no normalisation (do_normalize false)
    std: tuple[float, float, float] | None
    source: str  # where the numbers came from, for model.json


def input_convention(checkpoint: Path, image_size: int | None = None) -> InputConvention:
    """The checkpoint's normalisation and training size, from its preprocessor_config.json if it has one."""
    path = checkpoint / "preprocessor_config.json"
    if not path.is_file():
        return InputConvention(
            image_size or DEFAULT_IMAGE_SIZE,
            1.0,
            IMAGENET_MEAN,
            IMAGENET_STD,
            "defaults (no preprocessor_config.json): ImageNet mean/std",
        )
    config = json.loads(path.read_text())
    # Our pixels are already value / 255; a processor that rescales by another factor, or not at all,
    # wants them scaled back by this much.
    scale = 255.0 * float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 255.0
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    if config.get("do_normalize", True):
        mean = _triple(config.get("image_mean", IMAGENET_MEAN))
        std = _triple(config.get("image_std", IMAGENET_STD))
    size = config.get("size") or {}
    trained = size.get("shortest_edge") or (size.get("height") if size.get("height") == size.get("width") else None)
    return InputConvention(
        int(image_size or trained or DEFAULT_IMAGE_SIZE), scale, mean, std, "preprocessor_config.json"
    )


def _triple(value: Any) -> tuple[float, float, float]:
    values = [float(v) for v in (value if isinstance(value, list | tuple) else [value] * 3)]
    if len(values) != 3:
        raise ValueError(f"expected 3 channel values, got {value!r}")
    return values[0], values[1], values[2]


def resolve_labels(id2label: dict[int, str], labels: Sequence[str | int] = ()) -> list[int] | None:
    """Class ids that count as "specimen"; None means every class (the no-object logit is never one)."""
    if not labels:
        return [0] if len(id2label) == 1 else None
    by_name = {name.casefold(): int(i) for i, name in id2label.items()}
    ids = []
    for label in labels:
        text = str(label).strip()
        if text.casefold() in by_name:
            ids.append(by_name[text.casefold()])
        elif text.isdigit() and int(text) in id2label:
            ids.append(int(text))
        else:
            known = ", ".join(f"{i}={n}" for i, n in sorted(id2label.items())[:20])
            raise ValueError(
                f"label {text!r} is not a class of this checkpoint ({known}{', …' if len(id2label) > 20 else ''})"
            )
    return sorted(set(ids))


def _module_class():
    import torch
    from torch import nn

    class DetectorWrapper(nn.Module):
        """images [B, 3, S, S] in [0, 1] -> boxes [B, Q, 4] (cx, cy, w, h normalised), scores [B, Q]."""

        def __init__(self, model: nn.Module, convention: InputConvention, label_ids: list[int] | None) -> None:
            super().__init__()
            self.model = model
            self.scale = convention.scale
            mean = convention.mean or (0.0, 0.0, 0.0)
            std = convention.std or (1.0, 1.0, 1.0)
            self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
            self.label_ids = label_ids
            if label_ids is not None:
                self.register_buffer("label_index", torch.tensor(label_ids, dtype=torch.int64), persistent=False)

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            pixels = (images * self.scale - self.mean) / self.std
            out = self.model(pixel_values=pixels)
            # The last logit is DETR's "no object"; its probability is what a query's other classes lack.
            probabilities = out.logits.softmax(-1)[..., :-1]
            if self.label_ids is not None:
                probabilities = probabilities.index_select(-1, self.label_index)
            return out.pred_boxes, probabilities.max(-1).values

    return DetectorWrapper


def _timm_resnet_to_hf(key: str) -> str | None:
    """A timm ResNet parameter name as transformers' ResNet names it (None: not part of the backbone)."""
    if key.startswith("fc.") or key.endswith("num_batches_tracked"):
        return None
    if key.startswith("conv1."):
        return "embedder.embedder.convolution." + key[len("conv1.") :]
    if key.startswith("bn1."):
        return "embedder.embedder.normalization." + key[len("bn1.") :]
    match = re.fullmatch(r"layer(\d)\.(\d+)\.(conv|bn)(\d)\.(.+)", key)
    if match:
        stage, block, kind, index, rest = match.groups()
        part = "convolution" if kind == "conv" else "normalization"
        return f"encoder.stages.{int(stage) - 1}.layers.{block}.layer.{int(index) - 1}.{part}.{rest}"
    match = re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.([01])\.(.+)", key)
    if match:
        stage, block, index, rest = match.groups()
        part = "convolution" if index == "0" else "normalization"
        return f"encoder.stages.{int(stage) - 1}.layers.{block}.shortcut.{part}.{rest}"
    raise ValueError(f"unexpected timm ResNet parameter {key!r}")


# timm's ResNets as transformers' ResNetConfig (bottleneck blocks, stride in the 3x3 conv as both do).
_TIMM_RESNETS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}


def _read_state(checkpoint: Path) -> dict[str, Any]:
    import torch

    if (checkpoint / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(checkpoint / "model.safetensors"))
    return torch.load(str(checkpoint / "pytorch_model.bin"), map_location="cpu", weights_only=True)


def _without_timm(checkpoint: Path, config: dict[str, Any], scratch: Path) -> Path:
    """A copy of a timm-backbone DETR checkpoint with transformers' ResNet backbone in its place."""
    from safetensors.torch import save_file

    backbone = config.get("backbone") or "resnet50"
    if backbone not in _TIMM_RESNETS or config.get("dilation"):
        raise ValueError(
            f"a timm {backbone!r} backbone{' with dilation' if config.get('dilation') else ''} "
            f"needs timm; only {', '.join(_TIMM_RESNETS)} without dilation are converted"
        )
    prefixes = ("model.backbone.conv_encoder.model.", "model.backbone.model.")
    state = {}
    for key, tensor in _read_state(checkpoint).items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is None:
            state[key] = tensor
        elif (renamed := _timm_resnet_to_hf(key[len(prefix) :])) is not None:
            state[prefixes[0] + renamed] = tensor
    converted = {
        k: v
        for k, v in config.items()
        if k not in {"backbone", "use_timm_backbone", "backbone_kwargs", "use_pretrained_backbone"}
    }
    converted["use_timm_backbone"] = False
    converted["backbone_config"] = {
        "model_type": "resnet",
        "embedding_size": 64,
        "hidden_sizes": [256, 512, 1024, 2048],
        "depths": list(_TIMM_RESNETS[backbone]),
        "layer_type": "bottleneck",
        "hidden_act": "relu",
        "downsample_in_first_stage": False,
        "out_features": ["stage4"],
        "num_channels": config.get("num_channels", 3),
    }
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "config.json").write_text(json.dumps(converted, indent=2))
    save_file({k: v.contiguous() for k, v in state.items()}, str(scratch / "model.safetensors"))
    return scratch


def load_detector(checkpoint: Path) -> Any:
    """The checkpoint's transformers model, in eval mode, loaded without network access (or timm)."""
    from transformers import AutoModelForObjectDetection
    from transformers.utils import logging as hf_logging

    config_path = checkpoint / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{checkpoint} has no config.json (a Hugging Face checkpoint folder is expected)")
    if not any((checkpoint / name).is_file() for name in _STATE_FILES):
        raise ValueError(f"{checkpoint} has neither {' nor '.join(_STATE_FILES)}")
    config = json.loads(config_path.read_text())
    family = config.get("model_type", "")
    if family not in SOFTMAX_FAMILIES:
        raise ValueError(f"model_type {family!r} is not supported (supported: {', '.join(SOFTMAX_FAMILIES)})")
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="taxonstream-detr-") as scratch:
        source = checkpoint
        # DetrConfig treats a missing backbone_config as use_timm_backbone=True (resnet50 through timm).
        if family == "detr" and not config.get("backbone_config") and config.get("use_timm_backbone", True):
            source = _without_timm(checkpoint, config, Path(scratch) / "converted")
        model = AutoModelForObjectDetection.from_pretrained(str(source), local_files_only=True)
    return model.eval()


def build_wrapper(model: Any, convention: InputConvention, labels: Sequence[str | int] = ()) -> Any:
    """The module that is exported: our contract around the checkpoint's model."""
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    return _module_class()(model, convention, resolve_labels(id2label, labels)).eval()


def install_detector(
    checkpoint: Path,
    out_dir: Path,
    target: Target | str = Target.LOCAL,
    version: str = "1",
    name: str = "detr",
    labels: Sequence[str | int] = (),
    image_size: int | None = None,
) -> dict[str, Any]:
    """Export the checkpoint as `<out_dir>/<name>/<version>` (ONNX + config.pbtxt); returns its manifest entry."""
    import numpy as np
    import torch

    from .onnx_export import export_checked

    checkpoint, out_dir, target = Path(checkpoint), Path(out_dir), Target(target)
    model = load_detector(checkpoint)
    convention = input_convention(checkpoint, image_size)
    if not 32 <= convention.image_size <= 2048:
        raise ValueError(f"image size {convention.image_size} is outside 32-2048 (ResNet strides need 32)")
    wrapper = build_wrapper(model, convention, labels)
    size, queries = (
        convention.image_size,
        int(model.config.num_queries if model.config.model_type == "detr" else model.config.num_detection_tokens),
    )
    contract = ModelContract(
        name,
        version,
        model.config.model_type,
        "specimen-detection",
        False,
        (TensorSpec("images", (3, size, size)),),
        (TensorSpec("boxes", (queries, 4)), TensorSpec("scores", (queries,))),
        max_batch_size=MAX_BATCH_SIZE,
    )
    staging = staging_dir(out_dir, name)
    # Two images, so the check also shows the batch axis is dynamic (the export traced one).
    feeds = {"images": np.random.default_rng(0).random((2, 3, size, size), dtype=np.float32)}
    exported = export_checked(wrapper, [torch.zeros(1, 3, size, size)], staging, contract, feeds, PARITY_TOLERANCE)
    config = render_config(contract, target).replace(
        "`taxonstream models repository`", f"`taxonstream models install detr` from {checkpoint.name}"
    )
    write_triton_files(staging, contract, target, config)
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    label_ids = wrapper.label_ids
    entry = {
        **installed_entry(contract, checkpoint, exported),
        "target": target.value,
        "input_size": [size, size],
        "queries": queries,
        "specimen_classes": ({str(i): id2label[i] for i in label_ids} if label_ids is not None else "any"),
        "score": "max softmax probability over the specimen classes (no-object excluded)",
        "input_convention": asdict(convention),
        "settings": {"TAXONSTREAM_DETECTOR_MODEL": name, "TAXONSTREAM_DETECTOR_MODEL_VERSION": version},
    }
    publish(staging, out_dir, entry)
    return entry
