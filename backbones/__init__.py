"""Frozen backbones behind one interface (:class:`Backbone`) and one registry (``vadapt list backbones``).

Each family module registers its entries when imported; they are imported explicitly here. Upstream
libraries (timm, segment-anything, sam2, open_clip) are imported only when a backbone is built. Image
backbones subclass :class:`Backbone`; the point-cloud family (``point_mae``) has its own ``PointBackbone``.
Composites that wrap a backbone in an adapter package (Any2Point) register from :mod:`vadapt.composites`.
"""

from . import clip, depth_anything, diffusion, efficientnet, point_mae, sam, sam2, vit  # noqa: F401  (each registers its entries)
from .base import BACKBONES, Backbone, BackboneEntry, create_backbone, register_backbone

__all__ = ["BACKBONES", "Backbone", "BackboneEntry", "create_backbone", "register_backbone"]
