"""Bottleneck adapter configuration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vadapt.adapters.base import AdapterConfig


@dataclass
class BottleneckConfig(AdapterConfig):
    """Bottleneck adapters: Houlsby et al. 2019 (sequential) and AdaptFormer, Chen et al. 2022 (parallel).

    Attributes:
        adapter_dim: bottleneck width (AdaptFormer: 64).
        adapter_mode: ``"parallel"`` adds ``s * up(relu(down(x)))`` beside the wrapped module (AdaptFormer);
            ``"sequential"`` adds it after: ``h + s * up(relu(down(h)))`` with ``h`` the module output.
        adapter_scale: ``s`` (AdaptFormer: 0.1).
        adapter_dropout: dropout inside the bottleneck (AdaptFormer: 0.1).
        target_modules: module names inside each block; default ``backbone.adapter_targets`` (the MLP).
    """

    adapter_dim: int = 64
    adapter_mode: Literal["parallel", "sequential"] = "parallel"
    adapter_scale: float = 0.1
    adapter_dropout: float = 0.1

    method = "bottleneck"

    def __post_init__(self) -> None:
        if self.adapter_dim < 1:
            raise ValueError(f"BottleneckConfig.adapter_dim must be >= 1, got {self.adapter_dim}")
        if self.adapter_mode not in ("parallel", "sequential"):
            raise ValueError(f"BottleneckConfig.adapter_mode must be parallel or sequential, got {self.adapter_mode!r}")
        if not 0.0 <= self.adapter_dropout < 1.0:
            raise ValueError(f"BottleneckConfig.adapter_dropout must be in [0, 1), got {self.adapter_dropout}")
