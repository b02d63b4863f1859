"""STAND-IN CLIP image tower: a tiny, randomly initialised ViT, not BioCLIP.

It exists so the pipeline, Triton and the tests run where no weights can be downloaded. Its embeddings
carry no biology: they only tell images apart (near-duplicates land next to each other, distinct images
do not), which is what the platform's dedup, index and search paths need to be exercised.

The layout and parameter names follow open_clip's VisionTransformer (`conv1`, `class_embedding`,
`positional_embedding`, `ln_pre`, `transformer.resblocks.N.{ln_1,attn,ln_2,mlp.c_fc,mlp.c_proj}`,
`ln_post`, `proj`), so a real BioCLIP `visual.*` state dict could be loaded into a full-size config of the
same module later. Attention is written out with plain matmuls (no nn.MultiheadAttention fast path) so
the ONNX export is a small, portable graph.

Initialisation and why: with open_clip's initialisation a random 2-layer tower is nearly an identity
with LayerNorms. Its residual branches are tiny (output projections std width^-0.5 / sqrt(2 * layers)) and
its attention is near uniform, so the class token comes out as its own embedding plus an average of the
patches: the embedding mostly encodes the image's average colour on top of an offset shared by every
image. Measured on 300 synthetic shape images: mean cosine 0.78 between unrelated images, and a purple
image with a small green bar at 0.9996 to a purple image with a pink ellipse. Three gains fix that while
keeping near-duplicates together (`python -m tools.models.standins discrimination` re-measures):
  - class_embedding_gain 0.1: shrinks the offset every image shares (mean cosine 0.78 -> ~0.45);
  - qk_gain 2: sharper, content-dependent attention, so where the shapes are matters, not only colour;
  - residual_gain 3: larger attention/MLP outputs, so the nonlinear mixing reaches the embedding.
Pushed further (qk 3 and up) the encoder becomes over-sensitive: a JPEG re-encode or a 10 % rescale
stops being the nearest neighbour of its original. A unit test guards the chosen point.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .contract import CLIP_CONTEXT_LENGTH, CLIP_IMAGE_SIZE, CLIP_VOCAB_SIZE, EMBEDDING_DIM
from .seeding import SeededInit


@dataclass(frozen=True)
class VisionTowerConfig:
    image_size: int = CLIP_IMAGE_SIZE
    patch_size: int = 32
    width: int = 128
    layers: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    output_dim: int = EMBEDDING_DIM
    seed: int = 20240607
    # Gains over open_clip's initialisation that keep random embeddings discriminative (module docstring).
    class_embedding_gain: float = 0.1
    qk_gain: float = 2.0
    residual_gain: float = 3.0
    quick_gelu: bool = False

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class SelfAttention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = width // heads
        self.scale = self.head_dim**-0.5  # a Python float, so tracing records it as a constant
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = nn.functional.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.reshape(batch, tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = (q @ k.transpose(-2, -1)) * self.scale
        if mask is not None:  # additive: -inf where a token may not look (the text tower's causal mask)
            scores = scores + mask
        weights = torch.softmax(scores, dim=-1)
        mixed = (weights @ v).transpose(1, 2).reshape(batch, tokens, width)
        return self.out_proj(mixed)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation of OpenAI's CLIP weights (open_clip's `quick_gelu` models)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, quick_gelu: bool = False) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, hidden)),
                    ("gelu", QuickGELU() if quick_gelu else nn.GELU()),
                    ("c_proj", nn.Linear(hidden, width)),
                ]
            )
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, quick_gelu: bool = False) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, quick_gelu) for _ in range(layers)
        )

    @torch.no_grad()
    def initialise(self, init: SeededInit, attn_std: float, proj_std: float, qk_gain: float | None = None) -> None:
        """open_clip's block initialisation, drawn from `init` in a fixed order (the weights depend on it);
        `qk_gain` scales the query and key rows of each attention's input projection, not the values."""
        for block in self.resblocks:
            width = block.attn.out_proj.in_features
            init.normal_(block.attn.in_proj_weight, attn_std)
            if qk_gain is not None:
                block.attn.in_proj_weight[: 2 * width].mul_(qk_gain)
            block.attn.in_proj_bias.zero_()
            init.normal_(block.attn.out_proj.weight, proj_std)
            block.attn.out_proj.bias.zero_()
            init.normal_(block.mlp.c_fc.weight, (2 * width) ** -0.5)
            block.mlp.c_fc.bias.zero_()
            init.normal_(block.mlp.c_proj.weight, proj_std)
            block.mlp.c_proj.bias.zero_()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class ClipStandinImageEncoder(nn.Module):
    """pixel_values [B, 3, S, S] (CLIP-normalised) -> embeddings [B, output_dim], not normalised."""

    def __init__(self, config: VisionTowerConfig = VisionTowerConfig()) -> None:
        super().__init__()
        if config.image_size % config.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        self.config = config
        width = config.width
        grid = config.image_size // config.patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=config.patch_size, stride=config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, config.layers, config.heads, config.mlp_ratio, config.quick_gelu)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.empty(width, config.output_dim))
        self._initialise(config)

    @torch.no_grad()
    def _initialise(self, config: VisionTowerConfig) -> None:
        init = SeededInit(config.seed)
        normal_ = init.normal_

        width = config.width
        scale = width**-0.5
        # ln_pre normalises the patch tokens, so the patch embedding's scale does not matter.
        normal_(self.conv1.weight, (3 * config.patch_size * config.patch_size) ** -0.5)
        normal_(self.class_embedding, scale * config.class_embedding_gain)
        normal_(self.positional_embedding, scale)
        normal_(self.proj, scale)
        attn_std = scale
        proj_std = scale * (2 * config.layers) ** -0.5 * config.residual_gain
        self.transformer.initialise(init, attn_std, proj_std, qk_gain=config.qk_gain)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixel_values)  # [B, W, g, g]
        x = x.flatten(2).transpose(1, 2)  # [B, g*g, W]
        cls = self.class_embedding.reshape(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


def build_clip_standin(config: VisionTowerConfig = VisionTowerConfig()) -> ClipStandinImageEncoder:
    """The stand-in encoder in eval mode; the same config always gives the same weights."""
    return ClipStandinImageEncoder(config).eval()


@dataclass(frozen=True)
class TextTowerConfig:
    """open_clip's text tower (CLIP's causal transformer over BPE tokens); the defaults are the stand-in's."""

    vocab_size: int = CLIP_VOCAB_SIZE
    context_length: int = CLIP_CONTEXT_LENGTH
    width: int = 64
    layers: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    output_dim: int = EMBEDDING_DIM
    quick_gelu: bool = False
    seed: int = 20240609

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class ClipTextEncoder(nn.Module):
    """input_ids [B, 77] (open_clip tokens: zero-padded, EOT = the largest id) -> embeddings [B, output_dim].

    Parameter names are open_clip's top-level text keys (`token_embedding`, `positional_embedding`,
    `transformer.resblocks.N.*`, `ln_final`, `text_projection`), so a CLIP checkpoint's text half loads as
    is. As in open_clip, the embedding is read at the end-of-text token, found as the argmax of the ids.
    """

    def __init__(self, config: TextTowerConfig = TextTowerConfig()) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
        self.transformer = Transformer(config.width, config.layers, config.heads, config.mlp_ratio, config.quick_gelu)
        self.ln_final = nn.LayerNorm(config.width)
        self.text_projection = nn.Parameter(torch.empty(config.width, config.output_dim))
        # Causal mask as a buffer (not a state-dict entry: checkpoints do not carry it).
        mask = torch.full((config.context_length, config.context_length), float("-inf")).triu(1)
        self.register_buffer("attn_mask", mask, persistent=False)
        self._initialise(config)

    @torch.no_grad()
    def _initialise(self, config: TextTowerConfig) -> None:
        # open_clip's text initialisation.
        init = SeededInit(config.seed)
        normal_ = init.normal_

        width = config.width
        normal_(self.token_embedding.weight, 0.02)
        normal_(self.positional_embedding, 0.01)
        proj_std = width**-0.5 * (2 * config.layers) ** -0.5
        self.transformer.initialise(init, width**-0.5, proj_std)
        normal_(self.text_projection, width**-0.5)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(input_ids) + self.positional_embedding
        x = self.ln_final(self.transformer(x, self.attn_mask))
        eot = input_ids.argmax(dim=-1)  # the first largest id: <|endoftext|>
        pooled = x.gather(1, eot[:, None, None].expand(-1, 1, x.shape[-1])).squeeze(1)
        return pooled @ self.text_projection


def build_clip_text_standin(config: TextTowerConfig = TextTowerConfig()) -> ClipTextEncoder:
    """The stand-in text encoder in eval mode; the same config always gives the same weights."""
    return ClipTextEncoder(config).eval()
