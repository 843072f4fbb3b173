"""EndoDAC configuration: DV-LoRA (LoRA-like field names ``r``, ``lora_alpha``) and the Convolutional Neck blocks."""

from __future__ import annotations

from dataclasses import dataclass, field

from vadapt.adapters.base import AdapterConfig

#: default DV-LoRA targets on ``"tokens"`` layout backbones: the two MLP Linears of every ViT block (EndoDAC)
MLP_TARGETS: tuple[str, ...] = ("fc1", "fc2")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class DVLoraConfig(AdapterConfig):
    """EndoDAC's adapter (Cui et al., 2024, "EndoDAC: Efficient Adapting Foundation Model for Self-Supervised Depth
    Estimation from Any Endoscopic Camera", arXiv:2405.08672; official code ``BeileiCui/EndoDAC``): Dynamic
    Vector-Based LoRA (DV-LoRA) on the MLP Linears plus Convolutional Neck blocks after some blocks. See
    :mod:`.layer` for the maths, the phase schedule and the deviations from the official code.

    Attributes:
        r: rank of each update (official ``--lora_rank 4``).
        lora_alpha: the update is multiplied by ``lora_alpha / r`` (official: ``lora_alpha = r``, factor 1).
        vectors: learn the per-rank vector ``U`` and per-output vector ``V`` (DV-LoRA); ``False`` gives plain LoRA
            (the paper's ablation), whose ``A`` and ``B`` train for the whole run.
        warm_up_steps: DV-LoRA's schedule (official ``--warm_up_step 20000``): steps ``< warm_up_steps`` train
            ``A`` and ``B`` (``U``, ``V`` frozen), later steps train ``U`` and ``V`` (``A``, ``B`` frozen). The
            task reads it through :func:`~vadapt.adapters.dv_lora.dv_lora_vector_phase`; ignored with
            ``vectors=False``.
        neck_blocks: indices into ``backbone.blocks`` (negative ones count from the end) after which a
            Convolutional Neck block runs (official ``--residual_block_indexes 2 5 8 11``); empty: no necks.
        neck_reduction: a neck's bottleneck width is ``channels // neck_reduction`` (official: 8).
        target_modules: Linears (and 1x1 stride-1 convolutions) that get DV-LoRA; default ``["fc1", "fc2"]`` on
            ``"tokens"`` layout backbones (the ViT MLP, as EndoDAC) and ``backbone.lora_targets`` on ``"conv"``
            layout ones (EfficientNet-Lite: the 1x1 convolutions ``conv_pw``, ``conv_pwl``).
    """

    r: int = 4
    lora_alpha: float = 4.0
    vectors: bool = True
    warm_up_steps: int = 20000
    neck_blocks: list[int] = field(default_factory=lambda: [2, 5, 8, 11])
    neck_reduction: int = 8

    method = "dv_lora"

    def __post_init__(self) -> None:
        if not _is_int(self.r) or self.r < 1:
            raise ValueError(f"DVLoraConfig.r must be an int >= 1, got {self.r!r}")
        alpha = self.lora_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise ValueError(f"DVLoraConfig.lora_alpha must be a number > 0, got {self.lora_alpha!r}")
        if not isinstance(self.vectors, bool):
            raise ValueError(f"DVLoraConfig.vectors must be a bool, got {self.vectors!r}")
        if not _is_int(self.warm_up_steps) or self.warm_up_steps < 0:
            raise ValueError(f"DVLoraConfig.warm_up_steps must be an int >= 0, got {self.warm_up_steps!r}")
        if isinstance(self.neck_blocks, (str, bytes)) or not all(_is_int(i) for i in self.neck_blocks):
            raise ValueError(
                f"DVLoraConfig.neck_blocks must be a list of block indices (ints), got {self.neck_blocks!r}"
            )
        self.neck_blocks = list(self.neck_blocks)
        if not _is_int(self.neck_reduction) or self.neck_reduction < 1:
            raise ValueError(f"DVLoraConfig.neck_reduction must be an int >= 1, got {self.neck_reduction!r}")

    @property
    def scaling(self) -> float:
        """Factor ``s = lora_alpha / r`` on each update."""
        return self.lora_alpha / self.r
