"""Point-PEFT (Tang et al., AAAI 2024): point-prior prompts, FFN adapters and geometry-aware adapters."""

from vadapt.adapters.base import ADAPTERS, AdapterMethod

from .config import PointPEFTConfig
from .layer import FFNAdapter, PointPEFTBlock, PointPEFTShared, PriorRetrieval, point_prior_features
from .model import inject_point_peft, unfreeze_official_backbone_params

ADAPTERS.register("point_peft", AdapterMethod(PointPEFTConfig, inject_point_peft))

__all__ = [
    "FFNAdapter", "PointPEFTBlock", "PointPEFTConfig", "PointPEFTShared", "PriorRetrieval",
    "inject_point_peft", "point_prior_features", "unfreeze_official_backbone_params",
]
