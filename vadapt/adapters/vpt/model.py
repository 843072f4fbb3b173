"""Injecting deep prompts into the blocks of a token-layout backbone."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from .config import VPTConfig
from .layer import PromptedBlock

if TYPE_CHECKING:
    from vadapt.contracts import Backbone


def inject_vpt(backbone: Backbone, config: VPTConfig) -> None:
    """Wrap the blocks of ``config.layers`` (default every block) in :class:`PromptedBlock`, in place, with the token
    width of each block's first LayerNorm. Raises ``ValueError`` for a non-``"tokens"`` backbone, an index out of
    range or a block without LayerNorm."""
    if backbone.block_layout != "tokens":
        raise ValueError(
            f"VPT prepends tokens to a (B, N, C) sequence, but {backbone.name!r} blocks take "
            f"{backbone.block_layout!r} layout input; use the lora or bottleneck adapter for this backbone"
        )
    blocks = backbone.blocks
    layers = config.layers if config.layers is not None else range(len(blocks))
    for i in layers:
        if not -len(blocks) <= i < len(blocks):
            raise ValueError(f"VPTConfig.layers has {i}, but {backbone.name!r} has {len(blocks)} blocks")
        block = blocks[i]
        norms = [m for m in block.modules() if isinstance(m, nn.LayerNorm)]
        if not norms:
            raise ValueError(f"cannot infer the token width of block {i} of {backbone.name!r} (no LayerNorm)")
        dim = norms[0].normalized_shape[0]
        blocks[i] = PromptedBlock(block, dim, config.num_tokens, config.prompt_dropout, backbone.patch_size)
