"""Injecting bottleneck adapters into every block of a backbone."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vadapt.adapters.base import default_targets, find_targets
from vadapt.adapters.layers import first_width, replace_module

from .config import BottleneckConfig
from .layer import BottleneckAdapted

if TYPE_CHECKING:
    from vadapt.contracts import Backbone


def inject_bottleneck(backbone: Backbone, config: BottleneckConfig) -> None:
    """Wrap the target modules of every block (default ``backbone.adapter_targets``) in :class:`BottleneckAdapted`, in
    place, sized from each module's first and last Linear (1×1 Conv2d for ``"conv"`` layout). Raises ``ValueError``
    when a block has no matching module."""
    targets = default_targets(backbone, "adapter_targets", config.target_modules)
    layout = backbone.block_layout
    for block in backbone.blocks:
        for name in find_targets(block, targets, config.exclude_modules, root_name=f"{backbone.name} block"):
            module = block.get_submodule(name)
            in_dim, out_dim = first_width(module, layout)
            wrapped = BottleneckAdapted(
                module, in_dim, out_dim, config.adapter_dim, config.adapter_mode, config.adapter_scale,
                config.adapter_dropout, conv=layout == "conv",
            )
            replace_module(block, name, wrapped)
