"""The bottleneck adapter layer (AdaptFormer, Chen et al. 2022, arXiv:2205.13535; Houlsby et al. 2019)."""

from __future__ import annotations

import math

import torch
from torch import nn

from vadapt.adapters.layers import AdapterLayer


class Bottleneck(nn.Module):
    """``up(dropout(relu(down(x))))`` on the channel axis; ``up`` starts at zero so the adapter starts as a no-op.

    Shapes: ``(..., C_in) -> (..., C_out)`` with Linear layers, or ``(B, C_in, H, W) -> (B, C_out, H, W)`` with
    1×1 convolutions when ``conv=True``.
    """

    def __init__(self, in_dim: int, out_dim: int, dim: int, dropout: float, conv: bool = False) -> None:
        super().__init__()
        layer = (lambda i, o: nn.Conv2d(i, o, 1)) if conv else nn.Linear
        self.down = layer(in_dim, dim)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.up = layer(dim, out_dim)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))  # AdaptFormer's init
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., C_in)`` (``(B, C_in, H, W)`` with convolutions) -> ``(..., C_out)``; zero at init."""
        return self.up(self.dropout(self.act(self.down(x))))


class BottleneckAdapted(AdapterLayer):
    """Wraps ``base_layer`` (frozen) with a parallel or sequential bottleneck.

    AdaptFormer feeds its parallel adapter the block input before ``norm2``; wrapping the MLP module feeds it
    the normalised input instead, which lets one wrapper serve every backbone (stated deviation).
    """

    def __init__(self, base_layer: nn.Module, in_dim: int, out_dim: int, dim: int, mode: str, scale: float,
                 dropout: float, conv: bool = False) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.mode = mode
        self.scale = scale
        self.adapter = Bottleneck(in_dim if mode == "parallel" else out_dim, out_dim, dim, dropout, conv)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``h = base_layer(x, ...)`` plus ``scale * adapter(x)`` (parallel) or ``scale * adapter(h)`` (sequential), in
        ``h``'s shape; equal to ``h`` at init."""
        h = self.base_layer(x, *args, **kwargs)
        return h + self.scale * self.adapter(x if self.mode == "parallel" else h)
