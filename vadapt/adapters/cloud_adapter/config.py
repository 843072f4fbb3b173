"""Cloud-Adapter configuration."""

from __future__ import annotations

from dataclasses import dataclass

from vadapt.adapters.base import AdapterConfig


@dataclass
class CloudAdapterConfig(AdapterConfig):
    """Cloud-Adapter (Zou et al., "Adapting Vision Foundation Models for Robust Cloud Segmentation in Remote
    Sensing Images"; code: github.com/XavierJiezou/Cloud-Adapter).

    A small ConvNet (the *spatial perception* module) turns the input image into one context map, the sum of
    its multi-scale features pooled to the coarsest scale; after every adapted block, the block's patch tokens
    cross-attend to that map through low-rank projections and add the result (the *adapting* module).
    Defaults are the released DINOv2 ViT-L configuration (``configs/adapter/
    cloud_adapter_pmaa_convnext_lora_16_adapter_all.py`` there: hidden/context 64, depth 4, rank 16, every
    one of the 24 blocks, 8 heads of 64), about 0.6% of ViT-L's parameters as the paper states.

    Attributes:
        context_dim: channels of the ConvNet and of the context map (official ``hidden_channels`` =
            ``context_dim`` = 64).
        context_depth: stride-2 stages of the ConvNet; the context map is at stride ``2**context_depth``
            (official ``depth`` = 4, stride 16).
        rank: inner rank of each of the four projections (q, k, v, out) of the cross-attention (official
            ``rank_dim`` = 16); ``None`` uses full-rank projections (the official ``rank_dim=None`` variant).
        num_heads: attention heads of the cross-attention (official 8).
        head_dim: width of each head (official 64; inner width ``num_heads * head_dim`` = 512).
        layers: indices of the blocks followed by an adapting module; ``None`` = every block (official
            ``adapter_index = range(24)``).
        norm_groups: GroupNorm groups for the ConvNet's ``context_dim``-wide norms (``context_dim`` must be a
            multiple); the official ConvNet uses BatchNorm (deviation, see :mod:`.layer`).
        zero_init: start the output projection's last factor at zero so the adapted backbone starts equal to
            the frozen one (deviation: the official code keeps PyTorch's default Linear init there); ``False``
            gives the official init.
    """

    context_dim: int = 64
    context_depth: int = 4
    rank: int | None = 16
    num_heads: int = 8
    head_dim: int = 64
    layers: list[int] | None = None
    norm_groups: int = 32
    zero_init: bool = True

    method = "cloud_adapter"

    def __post_init__(self) -> None:
        if self.target_modules is not None or self.exclude_modules is not None:
            raise ValueError(
                "CloudAdapterConfig adapts whole blocks: choose them with `layers`, not target_modules / "
                "exclude_modules"
            )
        for name in ("context_dim", "num_heads", "head_dim", "norm_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"CloudAdapterConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.context_depth < 0:
            raise ValueError(f"CloudAdapterConfig.context_depth must be >= 0, got {self.context_depth}")
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"CloudAdapterConfig.rank must be >= 1 or None (full rank), got {self.rank}")
        if self.context_dim % self.norm_groups:
            raise ValueError(
                f"CloudAdapterConfig.norm_groups ({self.norm_groups}) must divide context_dim ({self.context_dim})"
            )
        if self.layers is not None and not self.layers:
            raise ValueError("CloudAdapterConfig.layers must name at least one block (None = every block)")
