"""LoRA / DoRA configuration (fields named as in ``peft.LoraConfig``)."""

from __future__ import annotations

from dataclasses import dataclass

from vadapt.adapters.base import AdapterConfig


@dataclass
class LoraConfig(AdapterConfig):
    """LoRA (Hu et al., 2021, arXiv:2106.09685) or DoRA (Liu et al., 2024, arXiv:2402.09353) through peft.

    Attributes:
        r: rank of the update ``B @ A``.
        lora_alpha: scale numerator; the update is multiplied by ``lora_alpha / r``.
        lora_dropout: dropout on the LoRA branch input.
        use_dora: decompose into magnitude and direction (DoRA).
        target_modules: default ``backbone.lora_targets`` (fused ``qkv`` for ViTs and SAM, etc.).
    """

    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    use_dora: bool = False

    method = "lora"

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoraConfig.r must be >= 1, got {self.r}")
        if self.lora_alpha <= 0:
            raise ValueError(f"LoraConfig.lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"LoraConfig.lora_dropout must be in [0, 1), got {self.lora_dropout}")
