"""Point-PEFT configuration (Tang et al., "Point-PEFT: Parameter-Efficient Fine-Tuning for 3D Pre-trained
Models", AAAI 2024, arXiv:2310.03059); defaults are those of the official Point-MAE ScanObjectNN run
(``MAE/models/Point_Mask_Rev_FT_scan_cp.py``, ``cfgs/finetune_scan_hardest.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass

from vadapt.adapters.base import AdapterConfig


@dataclass
class PointPEFTConfig(AdapterConfig):
    """Point-prior prompts, parallel FFN adapters and geometry-aware adapters for a frozen Point-MAE.

    Attributes:
        prompt_tokens: learnable prompt tokens ``T`` per prompted block (official ``num_tokens=10``). With a
            filled point-prior bank, the ``T`` prior tokens are ``[query, weighted sum, top-k]``, so the
            retrieval takes ``k = T - 2`` neighbours (official 8).
        prompt_blocks: the first ``prompt_blocks`` blocks get prompts (official ``layer_id <= 5``: 6);
            0 disables prompts and the prior bank.
        prompt_dropout: dropout on the prompt tokens (official 0.1).
        adapter_dim: bottleneck width of the FFN adapter and of the post-block adapter (official 16).
        adapter_scale: the FFN adapter's scale, ``x + f + s * adapter(f)`` with ``f`` the FFN output
            (official 0.7).
        adapter_dropout: dropout inside the bottlenecks (official ``adapter_drop_path_rate`` 0.1).
        prior_adapter_dim: bottleneck width of each prompted block's prior-token adapter (official 8).
        geo_k: patch tokens per local sub-group of the geometry-aware adapter (official ``group_size / 2``: 16).
        geo_group_ratio: sub-groups per patch: ``G' = int(G * ratio)`` (official ``num_group / 2``: 0.5).
        geo_heads: heads of the attention inside each sub-group (official 6).
        geo_attn_dim: inner width of that attention (official 18, i.e. 3 per head; scaled by
            ``geo_attn_dim ** -0.5`` as the official).
        geo_centre_scale: weight of the sub-centre token added to the pooled group feature (official 0.3).
        geo_prop_scale: weight of the propagated group features added to the patch tokens (official 0.3).
        tune_backbone_bias: also train the backbone parameters the official runner unfreezes: the biases of
            ``norm1``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2`` in every block, the final norm, the
            class token and its position. Off by default: the backbone stays frozen.
    """

    prompt_tokens: int = 10
    prompt_blocks: int = 6
    prompt_dropout: float = 0.1
    adapter_dim: int = 16
    adapter_scale: float = 0.7
    adapter_dropout: float = 0.1
    prior_adapter_dim: int = 8
    geo_k: int = 16
    geo_group_ratio: float = 0.5
    geo_heads: int = 6
    geo_attn_dim: int = 18
    geo_centre_scale: float = 0.3
    geo_prop_scale: float = 0.3
    tune_backbone_bias: bool = False

    method = "point_peft"

    @property
    def prior_topk(self) -> int:
        """Neighbours retrieved from the point-prior bank: ``prompt_tokens - 2``."""
        return self.prompt_tokens - 2

    def __post_init__(self) -> None:
        name = type(self).__name__
        positive = ("adapter_dim", "prior_adapter_dim", "geo_k", "geo_heads", "geo_attn_dim")
        for field_name in positive:
            value = getattr(self, field_name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}.{field_name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.prompt_tokens, int) or self.prompt_tokens < 3:
            raise ValueError(
                f"{name}.prompt_tokens must be an integer >= 3 (the prior tokens are [query, weighted sum, "
                f"top-k] with k = prompt_tokens - 2 >= 1), got {self.prompt_tokens!r}"
            )
        if not isinstance(self.prompt_blocks, int) or self.prompt_blocks < 0:
            raise ValueError(f"{name}.prompt_blocks must be an integer >= 0, got {self.prompt_blocks!r}")
        for field_name in ("prompt_dropout", "adapter_dropout"):
            value = getattr(self, field_name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}.{field_name} must be in [0, 1), got {value}")
        if not 0.0 < self.geo_group_ratio <= 1.0:
            raise ValueError(f"{name}.geo_group_ratio must be in (0, 1], got {self.geo_group_ratio}")
        if self.geo_attn_dim % self.geo_heads:
            raise ValueError(
                f"{name}.geo_attn_dim ({self.geo_attn_dim}) must be divisible by geo_heads ({self.geo_heads})"
            )
        for field_name in ("adapter_scale", "geo_centre_scale", "geo_prop_scale"):
            value = getattr(self, field_name)
            if not isinstance(value, (int, float)) or value != value:
                raise ValueError(f"{name}.{field_name} must be a number, got {value!r}")
        if self.target_modules is not None or self.exclude_modules is not None:
            raise ValueError(
                f"{name} adapts every block of a Point-MAE backbone: choose the prompted blocks with "
                f"`prompt_blocks`, not target_modules / exclude_modules"
            )
