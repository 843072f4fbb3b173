"""Helpers shared by our own (non-peft) adapter layers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from vadapt.contracts import Backbone

    from .base import AdapterConfig


class AdapterLayer(nn.Module):
    """Base of our wrapper layers: the frozen module is ``base_layer`` (peft's name), the rest is the adapter."""


class WeightAdapterLayer(AdapterLayer):
    """A wrapper standing in for a frozen Linear (or conv) whose weight it adapts: ``.weight`` and ``.bias`` read
    through to the frozen layer, so modules that read them (e.g. timm's attention, fused kernels) keep working."""

    @property
    def weight(self) -> torch.Tensor:
        """The frozen layer's weight."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The frozen layer's bias, or ``None``."""
        return self.base_layer.bias


def first_width(module: nn.Module, layout: str) -> tuple[int, int]:
    """(input width, output width) of ``module``: from its first and last Linear (Conv2d for ``"conv"``)."""
    kind = nn.Conv2d if layout == "conv" else nn.Linear
    layers = [module] if isinstance(module, kind) else [m for m in module.modules() if isinstance(m, kind)]
    if not layers:
        raise ValueError(f"{type(module).__name__} holds no {kind.__name__} to size an adapter from")
    first, last = layers[0], layers[-1]
    if kind is nn.Conv2d:
        return first.in_channels, last.out_channels
    return first.in_features, last.out_features


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Set ``new`` in place of the submodule at the dotted path ``name`` under ``root``."""
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def find_linear_targets(backbone: Backbone, config: AdapterConfig, method: str) -> tuple[str, list[str]]:
    """``(root name, names)`` of the ``nn.Linear`` modules ``config`` targets (default ``backbone.lora_targets``).

    For adapters that rewrite Linear weights (SALT, q/v DoRA): matched modules that are not Linears are skipped
    with a warning, and it is an error naming what matched when no Linear is left.
    """
    import warnings

    from torch import nn

    from .base import default_targets, find_targets

    targets = default_targets(backbone, "lora_targets", config.target_modules)
    root_name = backbone.name or "backbone"
    names = find_targets(backbone.model, targets, config.exclude_modules, root_name=root_name)
    linear = [n for n in names if isinstance(backbone.model.get_submodule(n), nn.Linear)]
    skipped = [n for n in names if n not in linear]
    if not linear:
        raise ValueError(f"{method} adapts nn.Linear modules, but target_modules={targets!r} matched only other "
                         f"modules of the {root_name}: {skipped[:8]}")
    if skipped:
        warnings.warn(f"{method} skips matched modules that are not nn.Linear: {skipped[:8]}", stacklevel=3)
    return root_name, linear


def merge_layers(backbone: Backbone, layer_class: type[AdapterLayer]) -> None:
    """Replace every ``layer_class`` module by its ``merge()`` (a plain frozen module with the upstream name)."""
    found = [(name, m) for name, m in backbone.model.named_modules() if isinstance(m, layer_class)]
    for name, module in found:
        replace_module(backbone.model, name, module.merge())
    for p in backbone.parameters():
        p.requires_grad_(False)
