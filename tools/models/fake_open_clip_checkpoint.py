"""RANDOM WEIGHTS in a real open_clip CLIP checkpoint's layout: for exercising the converter at full size.

    .venv/bin/python tools/models/fake_open_clip_checkpoint.py ViT-B-16 /tmp/b16.safetensors   # BioCLIP geometry
    .venv/bin/python tools/models/fake_open_clip_checkpoint.py ViT-L-14 /tmp/l14.bin           # BioCLIP 2 geometry

No weights can be downloaded on the build machines, yet `taxonstream models install bioclip|bioclip2` must
take the published files. This writes a state dict with the parameter names and shapes open_clip's `CLIP`
has for the geometry (and so its `.bin` / `.safetensors` files have): `visual.*` for the VisionTransformer,
`token_embedding`, `positional_embedding`, `transformer.resblocks.N.*`, `ln_final`, `text_projection` for the
text half, `logit_scale`. Values are random, drawn with open_clip's initialisation scales from a fixed seed
(LayerNorms 1 / 0, logit_scale log(1 / 0.07)), so activations stay in the range trained weights give; the
resulting embeddings carry no biology. `.bin` is written with torch.save, anything else as safetensors.

The tables are written from open_clip's model configs (ViT-B-16.json, ViT-L-14.json) and module layout, not
from our towers, so a mismatch between the two shows up when the converter loads the file.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Geometry:
    """The state-dict-visible numbers of an open_clip CLIP config (heads leave no trace in the shapes)."""

    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    embed_dim: int
    text_width: int
    text_layers: int
    context_length: int = 77
    vocab_size: int = 49408
    mlp_ratio: int = 4


GEOMETRIES = {
    "ViT-B-16": Geometry(224, 16, 768, 12, 512, 512, 12),  # BioCLIP
    "ViT-L-14": Geometry(224, 14, 1024, 24, 768, 768, 12),  # BioCLIP 2
}
# Parameter counts open_clip reports for these configs (its model profile table), as a check on the tables.
PUBLISHED_PARAMETERS = {"ViT-B-16": 149_620_737, "ViT-L-14": 427_616_513}


def _resblock(prefix: str, width: int, mlp_ratio: int) -> dict[str, tuple[int, ...]]:
    hidden = width * mlp_ratio
    return {
        f"{prefix}.ln_1.weight": (width,),
        f"{prefix}.ln_1.bias": (width,),
        f"{prefix}.attn.in_proj_weight": (3 * width, width),
        f"{prefix}.attn.in_proj_bias": (3 * width,),
        f"{prefix}.attn.out_proj.weight": (width, width),
        f"{prefix}.attn.out_proj.bias": (width,),
        f"{prefix}.ln_2.weight": (width,),
        f"{prefix}.ln_2.bias": (width,),
        f"{prefix}.mlp.c_fc.weight": (hidden, width),
        f"{prefix}.mlp.c_fc.bias": (hidden,),
        f"{prefix}.mlp.c_proj.weight": (width, hidden),
        f"{prefix}.mlp.c_proj.bias": (width,),
    }


def state_dict_shapes(g: Geometry) -> dict[str, tuple[int, ...]]:
    """Keys and shapes in the order open_clip's CLIP.state_dict() lists them."""
    grid = g.image_size // g.patch_size
    shapes: dict[str, tuple[int, ...]] = {
        "positional_embedding": (g.context_length, g.text_width),
        "text_projection": (g.text_width, g.embed_dim),
        "logit_scale": (),
        "visual.class_embedding": (g.vision_width,),
        "visual.positional_embedding": (grid * grid + 1, g.vision_width),
        "visual.proj": (g.vision_width, g.embed_dim),
        "visual.conv1.weight": (g.vision_width, 3, g.patch_size, g.patch_size),
        "visual.ln_pre.weight": (g.vision_width,),
        "visual.ln_pre.bias": (g.vision_width,),
    }
    for n in range(g.vision_layers):
        shapes |= _resblock(f"visual.transformer.resblocks.{n}", g.vision_width, g.mlp_ratio)
    shapes |= {"visual.ln_post.weight": (g.vision_width,), "visual.ln_post.bias": (g.vision_width,)}
    for n in range(g.text_layers):
        shapes |= _resblock(f"transformer.resblocks.{n}", g.text_width, g.mlp_ratio)
    return shapes | {
        "token_embedding.weight": (g.vocab_size, g.text_width),
        "ln_final.weight": (g.text_width,),
        "ln_final.bias": (g.text_width,),
    }


def parameter_count(g: Geometry) -> int:
    return sum(math.prod(shape) for shape in state_dict_shapes(g).values())


def _std(key: str, g: Geometry) -> float | None:
    """open_clip's initialisation scale for a key; None: a LayerNorm or bias (ones / zeros) or logit_scale."""
    visual = key.startswith("visual.")
    width, layers = (g.vision_width, g.vision_layers) if visual else (g.text_width, g.text_layers)
    name = key.removeprefix("visual.")
    if name.endswith("attn.in_proj_weight"):
        return width**-0.5
    if name.endswith(("attn.out_proj.weight", "mlp.c_proj.weight")):
        return width**-0.5 * (2 * layers) ** -0.5
    if name.endswith("mlp.c_fc.weight"):
        return (2 * width) ** -0.5
    if name == "conv1.weight":
        return (3 * g.patch_size * g.patch_size) ** -0.5
    if visual and name in ("class_embedding", "positional_embedding", "proj"):
        return width**-0.5
    return {"token_embedding.weight": 0.02, "positional_embedding": 0.01, "text_projection": width**-0.5}.get(key)


def random_state_dict(g: Geometry, seed: int = 0, dtype: str = "float32") -> dict:
    import torch

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in state_dict_shapes(g).items():
        std = _std(key, g)
        if std is not None:
            tensor = torch.randn(shape, generator=generator) * std
        elif key == "logit_scale":
            tensor = torch.tensor(math.log(1 / 0.07))
        elif key.endswith(".weight") and ("ln_" in key):
            tensor = torch.ones(shape)
        else:
            tensor = torch.zeros(shape)
        state[key] = tensor.to(getattr(torch, dtype))
    return state


def write_checkpoint(g: Geometry, path: Path, seed: int = 0, dtype: str = "float32") -> Path:
    """`.bin` / `.pt`: torch.save of the plain state dict (open_clip_pytorch_model.bin); else safetensors."""
    import torch

    state = random_state_dict(g, seed, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".bin", ".pt", ".pth"):
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path), metadata={"format": "pt", "note": "random weights, not a trained model"})
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=sorted(GEOMETRIES))
    parser.add_argument("out", type=Path, help=".bin/.pt (torch.save) or .safetensors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    args = parser.parse_args(argv)
    geometry = GEOMETRIES[args.model]
    started = time.perf_counter()
    write_checkpoint(geometry, args.out, args.seed, args.dtype)
    print(
        f"{args.out}: {args.model} RANDOM weights, {len(state_dict_shapes(geometry))} tensors, "
        f"{parameter_count(geometry):,} parameters, {args.out.stat().st_size / 2**20:.0f} MiB, "
        f"{time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
