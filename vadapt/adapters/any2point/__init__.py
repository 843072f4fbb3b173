"""Any2Point: a frozen 2D ViT or 1D text transformer as a 3D point-cloud backbone (Tang et al., ECCV 2024,
arXiv:2404.07989)."""

from .config import Any2PointConfig
from .layer import (
    LGA,
    SIX_VIEWS,
    Linear2Layer,
    PointPNTokenizer,
    PosEGeo,
    SequenceProjectionPE,
    VirtualProjectionPE,
    euler_to_matrix,
)
from .model import Any2PointBackbone

__all__ = [
    "LGA", "SIX_VIEWS", "Any2PointBackbone", "Any2PointConfig", "Linear2Layer", "PointPNTokenizer", "PosEGeo",
    "SequenceProjectionPE", "VirtualProjectionPE", "euler_to_matrix",
]
