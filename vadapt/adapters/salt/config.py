"""SALT configuration (LoRA-like field names: ``r``, ``lora_r``, ``lora_alpha``, ``rank_pattern``)."""

from __future__ import annotations

from dataclasses import dataclass

from vadapt.adapters.base import AdapterConfig


@dataclass
class SaltConfig(AdapterConfig):
    """SALT (Elsayed et al., 2025, arXiv:2503.16055): scale and shift the top singular values of each frozen
    weight and add a LoRA in the subspace of the remaining singular directions.

    Attributes:
        r: number of top singular values that get a trainable scale and shift; ``None`` uses
            ``max(1, int(r_ratio * min(out, in)))`` per matrix.
        r_ratio: fraction of ``min(out, in)`` used when ``r`` is ``None`` (the official SAM 2 code's
            ``ratio_salt = 0.1``).
        lora_r: rank of the LoRA on the remaining ``min(out, in) - r`` singular directions (official: 256);
            0 disables it (scale/shift only).
        lora_alpha: the LoRA term is multiplied by ``lora_alpha / lora_r``; ``None`` means a factor 1, as in
            the official code (which has no such scale).
        rank_pattern: per-module ``r`` overriding the above, keyed by module-name suffix (peft's
            ``rank_pattern``), e.g. ``{"lin1": 50, "lin2": 50}`` for the official SAM encoder setting.
        target_modules: ``nn.Linear`` modules to adapt; default ``backbone.lora_targets`` (the fused ``qkv``).
            The official SAM code adapts ``qkv``, ``proj``, ``lin1`` and ``lin2`` of every block
            (``["attn.qkv", "attn.proj", "mlp.lin1", "mlp.lin2"]`` here).
    """

    r: int | None = None
    r_ratio: float = 0.1
    lora_r: int = 256
    lora_alpha: float | None = None
    rank_pattern: dict[str, int] | None = None

    method = "salt"

    def __post_init__(self) -> None:
        if self.r is not None and (isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 0):
            raise ValueError(f"SaltConfig.r must be an int >= 0 or None, got {self.r!r}")
        if not 0.0 < self.r_ratio <= 1.0:
            raise ValueError(f"SaltConfig.r_ratio must be in (0, 1], got {self.r_ratio!r}")
        if isinstance(self.lora_r, bool) or not isinstance(self.lora_r, int) or self.lora_r < 0:
            raise ValueError(f"SaltConfig.lora_r must be an int >= 0, got {self.lora_r!r}")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ValueError(f"SaltConfig.lora_alpha must be > 0 or None, got {self.lora_alpha!r}")
        if self.r == 0 and self.lora_r == 0:
            raise ValueError("SaltConfig.r and SaltConfig.lora_r are both 0: nothing would train")
        for key, value in (self.rank_pattern or {}).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"SaltConfig.rank_pattern[{key!r}] must be an int >= 0, got {value!r}")

    @property
    def lora_scaling(self) -> float:
        """Factor on the LoRA term: ``lora_alpha / lora_r``, or 1 when ``lora_alpha`` is ``None``."""
        if self.lora_alpha is None or self.lora_r == 0:
            return 1.0
        return self.lora_alpha / self.lora_r

    def rank_for(self, name: str, k: int) -> int:
        """``r`` for the module called ``name`` whose weight has ``k = min(out, in)`` singular values."""
        from vadapt.adapters.base import matches

        for key, value in (self.rank_pattern or {}).items():
            if matches(name, [key]):
                return value
        if self.r is not None:
            return self.r
        return max(1, int(self.r_ratio * k))
