"""Helpers shared by our own (non-peft) adapter layers."""

from __future__ import annotations

from torch import nn


class AdapterLayer(nn.Module):
    """Base of our wrapper layers: the frozen module is ``base_layer`` (peft's name), the rest is the adapter."""


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
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)
