"""Any2Point backbones: a frozen 2D ViT (DINOv2 through timm) or 1D text transformer (CLIP's, through open_clip)
run on point clouds (Tang et al., ECCV 2024, arXiv:2404.07989).

A composite: the model (tokenizer, virtual-projection position encoding, guided adapters:
``vadapt.adapters.any2point``) wraps a registered backbone (``vadapt.backbones``), so it is built one layer above
both and registers its entries in the backbone registry when this module is imported (``vadapt.tasks`` does).
The wrapped model keeps its upstream weights file and stays frozen, the Any2Point parts train. Use it as any
point backbone, e.g. ``PointClassificationTask(backbone="any2point_dinov2_b",
weights="pretrained", num_classes=40)``; its options (``Any2PointConfig`` fields) are the entry's defaults.
"""

from __future__ import annotations

from typing import Any

from vadapt.adapters.any2point import Any2PointBackbone, Any2PointConfig
from vadapt.backbones import create_backbone, register_backbone
from vadapt.backbones.clip import HF_WEIGHTS, OpenClipTextTower
from vadapt.backbones.vit import _DINOV2_URL
from vadapt.weights import WeightsSource


def create_any2point(
    vit: str = "vit_base_patch14_dinov2", weights: str | None = None, **config: Any
) -> Any2PointBackbone:
    """Build a registered timm ViT (``vit``, ``weights`` as :func:`~vadapt.backbones.create_backbone`) and wrap
    it: ``create_any2point("dinov2_test", num_points=128, tokenizer_dim=6, k_neighbors=8)``."""
    backbone = Any2PointBackbone(create_backbone(vit, weights=weights), Any2PointConfig(**config))
    backbone.name = f"any2point_{vit}"
    return backbone


def _build(vit: str, **config: Any) -> Any2PointBackbone:
    """The Any2Point model around a randomly initialised registered ``vit``; ``create_backbone`` then loads the
    ViT's upstream weights file into it (``Any2PointBackbone.load_pretrained``)."""
    return create_any2point(vit, weights=None, **config)


def _build_clip_text(
    arch: str, quick_gelu: bool = False, text_cfg: dict[str, Any] | None = None, **config: Any
) -> Any2PointBackbone:
    """The Any2Point model around a randomly initialised open_clip text transformer (``arch``'s ``text_cfg``
    with ``text_cfg`` overrides); ``create_backbone`` then loads a full CLIP file's text tower into it."""
    return Any2PointBackbone(OpenClipTextTower(arch, quick_gelu, **(text_cfg or {})), Any2PointConfig(**config))


register_backbone(
    "any2point_dinov2_b", family="any2point", builder=_build,
    weights=WeightsSource("dinov2_vitb14_pretrain.pth", url=_DINOV2_URL.format("dinov2_vitb14")),
    description="Any2Point: frozen DINOv2 ViT-B/14 on point clouds (Point-PN tokenizer, 6-view projected "
    "positions, guided adapters)",
    vit="vit_base_patch14_dinov2",
)
# official Any2Point_CLIP_Lang: OpenAI's ViT-L-14 (QuickGELU); fine_tune.sh / cfgs/scanobjectnn/Any2Point.yaml
register_backbone(
    "any2point_clip_text_l14", family="any2point", builder=_build_clip_text,
    weights=WeightsSource(HF_WEIGHTS, hub_id="timm/vit_large_patch14_clip_224.openai"),
    description="Any2Point: frozen CLIP ViT-L/14 text transformer (OpenAI weights) on point clouds (Point-PN "
    "tokenizer, 6-view 1D projected positions, guided adapters)",
    arch="ViT-L-14", quick_gelu=True, k_neighbors=81, adapter_dim=16, coef_pro=0.3, grid_3d=0.08,
)
register_backbone(
    "any2point_test", family="any2point", builder=_build, tiny=True,
    description="tiny Any2Point (tiny DINOv2-architecture ViT) for tests",
    vit="dinov2_test", num_points=128, tokenizer_dim=6, k_neighbors=8, last_bottleneck=4,
)
register_backbone(
    "any2point_clip_test", family="any2point", builder=_build_clip_text, tiny=True,
    description="tiny Any2Point on a tiny CLIP-architecture text transformer (77 positions) for tests",
    arch="ViT-L-14", quick_gelu=True, text_cfg={"width": 32, "heads": 2, "layers": 4, "vocab_size": 64},
    num_points=128, tokenizer_dim=6, k_neighbors=8, last_bottleneck=4, adapter_dim=16, coef_pro=0.3, grid_3d=0.08,
)
