"""Injecting Earth-Adapter into the blocks of a token- or grid-layout backbone."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vadapt.adapters.layers import first_width

from .config import EarthAdapterConfig
from .layer import EarthAdaptedBlock, EarthAdapter, TokenGrid

if TYPE_CHECKING:
    from vadapt.contracts import Backbone


def _resolve(indices: list[int] | None, depth: int, field: str, name: str) -> list[int]:
    if indices is None:
        return list(range(depth))
    bad = [i for i in indices if not -depth <= i < depth]
    if bad:
        raise ValueError(f"EarthAdapterConfig.{field} has {bad}, but {name!r} has {depth} blocks")
    return sorted({i % depth for i in indices})


def inject_earth_adapter(backbone: Backbone, config: EarthAdapterConfig) -> None:
    """Wrap the selected blocks of ``backbone`` in :class:`EarthAdaptedBlock` (in place).

    Each adapter is sized for its block's output width (the last Linear's ``out_features``), so backbones whose
    width changes per stage (Hiera) work too.
    """
    layout = backbone.block_layout
    if layout not in ("tokens", "grid"):
        raise ValueError(
            f"Earth-Adapter splits ViT token maps by frequency and needs 'tokens' (B, N, C) or 'grid' (B, H, W, C) "
            f"blocks, but {backbone.name!r} blocks take {layout!r} layout input; use the lora or bottleneck adapter"
        )
    blocks = backbone.blocks
    depth = len(blocks)
    layers = _resolve(config.layers, depth, "layers", backbone.name)
    fft_layers = set(layers if config.fft_layers is None else _resolve(config.fft_layers, depth, "fft_layers",
                                                                      backbone.name))
    if not fft_layers <= set(layers):
        raise ValueError(
            f"EarthAdapterConfig.fft_layers {sorted(fft_layers - set(layers))} are not among the adapted `layers`"
        )
    grid = TokenGrid(backbone) if layout == "tokens" else None
    prefix = backbone.num_prefix_tokens if layout == "tokens" else 0
    for i in layers:
        block = blocks[i]
        _, width = first_width(block, layout)
        adapter = EarthAdapter(
            width, config.adapter_dim, config.adapter_scale, config.cutoff_ratio,
            frequency=i in fft_layers, zero_init=config.zero_init,
        )
        reference = next((q for q in block.parameters() if q.is_floating_point()), None)
        if reference is not None:  # live beside the block (device, and dtype of a half-precision backbone)
            adapter.to(device=reference.device, dtype=reference.dtype)
        blocks[i] = EarthAdaptedBlock(block, adapter, layout, prefix, grid)
