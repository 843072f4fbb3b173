"""Injecting Cloud-Adapter into a token- or grid-layout backbone."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vadapt.adapters.layers import first_width

from .config import CloudAdapterConfig
from .layer import CloudAdaptedBlock, ContextCrossAttention, SpatialPerception

if TYPE_CHECKING:
    from vadapt.contracts import Backbone

#: attribute of the backbone that holds the spatial perception ConvNet (saved with the adapter parameters)
CONTEXT_ATTR = "cloud_adapter"


def inject_cloud_adapter(backbone: Backbone, config: CloudAdapterConfig) -> None:
    """Add the spatial perception ConvNet as ``backbone.cloud_adapter`` (run by a forward pre-hook on the
    backbone's input) and wrap the chosen blocks in :class:`CloudAdaptedBlock`.

    Each adapting module is sized from its block's output width (its last Linear), so backbones whose width
    changes per stage (Hiera) get one module per width.
    """
    layout = backbone.block_layout
    if layout not in ("tokens", "grid"):
        raise ValueError(
            f"Cloud-Adapter cross-attends (B, N, C) tokens or (B, H, W, C) grids to its context, but "
            f"{backbone.name!r} blocks take {layout!r} layout input; use the lora or bottleneck adapter for it"
        )
    if CONTEXT_ATTR in backbone._modules:
        raise ValueError(f"{backbone.name!r} already has a Cloud-Adapter")
    blocks = backbone.blocks
    depth = len(blocks)
    indices = config.layers if config.layers is not None else list(range(depth))
    for i in indices:
        if not -depth <= i < depth:
            raise ValueError(f"CloudAdapterConfig.layers has {i}, but {backbone.name!r} has {depth} blocks")
    indices = [i % depth for i in indices]
    if len(set(indices)) != len(indices):
        raise ValueError(f"CloudAdapterConfig.layers names a block twice: {config.layers}")

    device = next(backbone.parameters()).device
    context = SpatialPerception(len(backbone.bands), config.context_dim, config.context_depth, config.norm_groups)
    setattr(backbone, CONTEXT_ATTR, context.to(device))
    backbone.register_forward_pre_hook(context.capture, with_kwargs=True)
    prefix = backbone.num_prefix_tokens if layout == "tokens" else 0
    for i in sorted(indices):
        width = first_width(blocks[i], layout)[1]
        adapter = ContextCrossAttention(
            width, config.context_dim, config.num_heads, config.head_dim, config.rank, config.zero_init
        )
        blocks[i] = CloudAdaptedBlock(blocks[i], adapter.to(device), context.slot, layout, prefix)
