"""Deep visual prompt tuning configuration."""

from __future__ import annotations

from dataclasses import dataclass

from vadapt.adapters.base import AdapterConfig


@dataclass
class VPTConfig(AdapterConfig):
    """VPT-deep (Jia et al., ECCV 2022, arXiv:2203.12119): learnable tokens in front of every block's input.

    Attributes:
        num_tokens: prompt tokens per block (the paper searches 1-200; 10 is a common default).
        prompt_dropout: dropout on the prompt tokens (paper: 0.1).
        layers: block indices that get prompts; ``None`` = every block (VPT-deep).
    """

    num_tokens: int = 10
    prompt_dropout: float = 0.0
    layers: list[int] | None = None

    method = "vpt"

    def __post_init__(self) -> None:
        if self.num_tokens < 1:
            raise ValueError(f"VPTConfig.num_tokens must be >= 1, got {self.num_tokens}")
        if self.target_modules is not None or self.exclude_modules is not None:
            raise ValueError("VPTConfig prompts whole blocks: choose them with `layers`, not target_modules")
