"""Any2Point backbones: a frozen 2D ViT (DINOv2 through timm) run on point clouds (Tang et al., ECCV 2024,
arXiv:2404.07989).

The model (tokenizer, virtual-projection position encoding, guided adapters: ``vadapt.adapters.any2point``)
wraps a registered ViT; the ViT keeps its upstream weights file and stays frozen, the Any2Point parts train.
Use it as any point backbone, e.g. ``PointClassificationTask(backbone="any2point_dinov2_b",
weights="pretrained", num_classes=40)``; its options (``Any2PointConfig`` fields) are the entry's defaults.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from vadapt.weights import WeightsSource

from .base import register_backbone
from .vit import _DINOV2_URL


def _build(vit: str, **config: Any) -> nn.Module:
    """The Any2Point model around a randomly initialised ``vit``; ``create_backbone`` then loads the ViT's
    upstream weights file into it (``Any2PointBackbone.load_pretrained``)."""
    from vadapt.adapters.any2point import create_any2point  # its layers; imported when a model is built

    return create_any2point(vit, weights=None, **config)


register_backbone(
    "any2point_dinov2_b", family="any2point", builder=_build,
    weights=WeightsSource("dinov2_vitb14_pretrain.pth", url=_DINOV2_URL.format("dinov2_vitb14")),
    description="Any2Point: frozen DINOv2 ViT-B/14 on point clouds (Point-PN tokenizer, 6-view projected "
    "positions, guided adapters)",
    vit="vit_base_patch14_dinov2",
)
register_backbone(
    "any2point_test", family="any2point", builder=_build, tiny=True,
    description="tiny Any2Point (tiny DINOv2-architecture ViT) for tests",
    vit="dinov2_test", num_points=128, tokenizer_dim=6, k_neighbors=8, last_bottleneck=4,
)
