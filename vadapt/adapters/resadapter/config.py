"""ResAdapter configuration (fields named as in ``peft.LoraConfig`` where they overlap)."""

from __future__ import annotations

from dataclasses import dataclass

from vadapt.adapters.base import AdapterConfig


@dataclass
class ResAdapterConfig(AdapterConfig):
    """ResAdapter (Cheng et al., "ResAdapter: Domain Consistent Resolution Adapter for Diffusion Models", 2024,
    arXiv:2403.02084; official release bytedance/res-adapter, inference code and weights only).

    Two parts, trained on a frozen SD1.5 / SDXL UNet (or an AnimateDiff ``UNetMotionModel``, same names):

    * ResCLoRA: LoRA on the ``conv`` of every down-/up-sampler (SD1.5: 6 convs, SDXL: 4). The down projection is a
      ``3x3`` conv ``(C -> r)`` with the base conv's stride and padding (stride 2 in downsamplers, 1 in upsamplers,
      where it sees the nearest-x2 upsampled input like the base conv), the up projection a ``1x1`` conv
      ``(r -> C)``, zero-initialised; no biases. Output ``conv(x) + strength * (lora_alpha / r) * up(down(x))``.
    * ResENorm: the GroupNorm ``norm1`` / ``norm2`` (weight and bias) of every ResNet block (down, mid, up) train.
      The official norm file holds their *absolute* values; the base values are kept to turn the adapter off.

    Trainable parameters: 970,240 on SD1.5 (LoRA 870,400 + norms 99,840), 527,360 on SDXL (460,800 + 66,560).

    Attributes:
        r: LoRA rank (official 16; the ``resadapter_v1_sdxl_extrapolation`` release uses 32).
        lora_alpha: LoRA scale numerator, ``scaling = strength * lora_alpha / r`` (official 8, i.e. 0.5). A loaded
            official file's ``.alpha`` replaces it.
        train_norms: train norm1/norm2 of every ResNet block (ResENorm). ``False`` = ResCLoRA only (what the official
            code uses for the ``*_interpolation`` models); the norms then stay the base's and are neither saved nor
            loaded.
        strength: multiplier of the LoRA branch only (the official ``res_adapter_alpha`` passed to
            ``pipe.set_adapters``; README: 1.0 for interpolation, 0.3-0.7 for extrapolation). The norms are never
            scaled (official behaviour). Change it later with ``set_resadapter_strength``.
        target_modules / exclude_modules: not used; the targets are fixed by the method (an error if set).
    """

    r: int = 16
    lora_alpha: float = 8.0
    train_norms: bool = True
    strength: float = 1.0

    method = "resadapter"

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"ResAdapterConfig.r must be an integer >= 1, got {self.r!r}")
        if not self.lora_alpha > 0:
            raise ValueError(f"ResAdapterConfig.lora_alpha must be > 0, got {self.lora_alpha!r}")
        if not isinstance(self.train_norms, bool):
            raise ValueError(f"ResAdapterConfig.train_norms must be a bool, got {self.train_norms!r}")
        if not isinstance(self.strength, (int, float)) or isinstance(self.strength, bool):
            raise ValueError(f"ResAdapterConfig.strength must be a number, got {self.strength!r}")
        if self.target_modules is not None or self.exclude_modules is not None:
            raise ValueError(
                "ResAdapterConfig adapts every down-/up-sampler conv and ResNet norm by definition; "
                "target_modules / exclude_modules cannot be set"
            )
