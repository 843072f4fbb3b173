"""QV-DoRA configuration (LoRA-like field names: ``r``, ``lora_alpha``, ``use_dora``)."""

from __future__ import annotations

from dataclasses import dataclass

from vadapt.adapters.base import AdapterConfig

#: the slices of a fused ``qkv`` projection, in their row order ``[q | k | v]``
QKV_SLICES: tuple[str, ...] = ("q", "k", "v")


@dataclass
class QVDoraConfig(AdapterConfig):
    """DoRA (Liu et al., 2024, arXiv:2402.09353) on the query and value slices of fused ``qkv`` Linears, as
    MapSAM adapts SAM's image encoder (Xia et al., 2024, arXiv:2411.06971; official code ``Xue-Xia/MapSAM``,
    ``sam_dora_image_encoder.py``). The key rows stay frozen. See :mod:`.layer` for the maths and deviations.

    Attributes:
        r: rank of each slice's update ``B_s @ A_s`` (MapSAM's default ``--rank 4``).
        lora_alpha: the update is multiplied by ``lora_alpha / r``; ``None`` means ``lora_alpha = r`` (factor 1),
            as in MapSAM's code, which has no scaling (and no dropout).
        slices: which row blocks of the fused ``[q | k | v]`` weight to adapt, any non-empty subset of
            ``("q", "k", "v")`` (MapSAM: ``("q", "v")``); kept in ``q, k, v`` order.
        use_dora: learn a magnitude per output row (DoRA); ``False`` gives a plain LoRA on the slices.
        target_modules: fused ``qkv`` ``nn.Linear`` modules (``out_features = 3 * d_out``); default
            ``backbone.lora_targets`` (``["qkv"]`` for SAM, SAM 2 Hiera and timm ViTs).
    """

    r: int = 4
    lora_alpha: float | None = None
    slices: tuple[str, ...] = ("q", "v")
    use_dora: bool = True

    method = "qv_dora"

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"QVDoraConfig.r must be an int >= 1, got {self.r!r}")
        if self.lora_alpha is not None and (isinstance(self.lora_alpha, bool) or not self.lora_alpha > 0):
            raise ValueError(f"QVDoraConfig.lora_alpha must be > 0 or None, got {self.lora_alpha!r}")
        if isinstance(self.slices, str) or not all(isinstance(s, str) for s in self.slices):
            raise ValueError(
                f"QVDoraConfig.slices must be a list of slice names from {list(QKV_SLICES)}, got {self.slices!r}"
            )
        slices = tuple(self.slices)
        unknown = [s for s in slices if s not in QKV_SLICES]
        if not slices or unknown or len(set(slices)) != len(slices):
            raise ValueError(
                f"QVDoraConfig.slices must be a non-empty subset of {list(QKV_SLICES)} without repeats, "
                f"got {self.slices!r}"
            )
        self.slices = tuple(s for s in QKV_SLICES if s in slices)
        if not isinstance(self.use_dora, bool):
            raise ValueError(f"QVDoraConfig.use_dora must be a bool, got {self.use_dora!r}")

    @property
    def scaling(self) -> float:
        """Factor on each slice's update: ``lora_alpha / r``, or 1 when ``lora_alpha`` is ``None``."""
        return 1.0 if self.lora_alpha is None else self.lora_alpha / self.r
