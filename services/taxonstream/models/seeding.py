"""Stand-in weights that depend on a seed only: a private generator, never the global RNG state."""

from __future__ import annotations

import torch


class SeededInit:
    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator)

    @torch.no_grad()
    def normal_(self, tensor: torch.Tensor, std: float) -> None:
        """Fill `tensor` in place from N(0, std²)."""
        tensor.copy_(torch.randn(tensor.shape, generator=self.generator) * std)
