"""STAND-IN specimen detector: a tiny random conv net with DETR's output convention, not a trained model.

DETR predicts a fixed set of N queries, each a box (cx, cy, w, h), normalised to the image and squashed
by a sigmoid, and class logits. Our contract keeps the boxes as they are and reduces the logits to one
specimen score per query in [0, 1] (for a real DETR: softmax over classes, drop "no object", take the
specimen class). The detector service crops the best box above its threshold, else keeps the whole image.

The random weights find nothing. The output head is initialised so boxes are plausible rather than
degenerate (centres near the middle, sides around 40-85 % of the image) and scores vary with the image
around 0.5, so both service branches (crop / keep whole) are exercised by ordinary inputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .contract import DETECTOR_IMAGE_SIZE, DETECTOR_QUERIES
from .seeding import SeededInit


@dataclass(frozen=True)
class DetectorConfig:
    image_size: int = DETECTOR_IMAGE_SIZE
    queries: int = DETECTOR_QUERIES
    channels: tuple[int, ...] = (16, 32, 64, 64)
    seed: int = 20240608

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class DetectorStandin(nn.Module):
    """images [B, 3, S, S] in [0, 1] -> boxes [B, N, 4] (cx, cy, w, h in [0, 1]), scores [B, N] in [0, 1]."""

    def __init__(self, config: DetectorConfig = DetectorConfig()) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        in_channels = 3
        for out_channels in config.channels:
            layers += [nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1), nn.ReLU()]
            in_channels = out_channels
        self.backbone = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.box_head = nn.Linear(in_channels, config.queries * 4)
        self.score_head = nn.Linear(in_channels, config.queries)
        self._initialise(config)

    @torch.no_grad()
    def _initialise(self, config: DetectorConfig) -> None:
        init = SeededInit(config.seed)
        normal_ = init.normal_

        for module in self.backbone:
            if isinstance(module, nn.Conv2d):
                fan_in = module.in_channels * 9
                normal_(module.weight, (2.0 / fan_in) ** 0.5)  # He init: activations keep their scale
                module.bias.zero_()
        features = self.box_head.in_features
        normal_(self.box_head.weight, 0.5 / features**0.5)
        # Per query: centre logits near 0 (sigmoid 0.5), side logits near 0.5 (sigmoid ~0.62).
        bias = init.randn(config.queries, 4) * 0.4
        bias[:, 2:] += 0.5
        self.box_head.bias.copy_(bias.reshape(-1))
        normal_(self.score_head.weight, 2.0 / features**0.5)
        normal_(self.score_head.bias, 0.5)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # DETR-style input normalisation inside the graph, so the contract stays "pixels in [0, 1]".
        features = self.pool(self.backbone(images * 2.0 - 1.0)).flatten(1)
        # unflatten, not reshape(-1, ...): the exported graph then states the [N, 4] dims statically.
        boxes = torch.sigmoid(self.box_head(features)).unflatten(1, (self.config.queries, 4))
        scores = torch.sigmoid(self.score_head(features))
        return boxes, scores


def build_detector_standin(config: DetectorConfig = DetectorConfig()) -> DetectorStandin:
    """The stand-in detector in eval mode; the same config always gives the same weights."""
    return DetectorStandin(config).eval()
