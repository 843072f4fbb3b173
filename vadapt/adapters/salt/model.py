"""Injecting SALT into the ``nn.Linear`` modules a config names, and folding it back into plain Linears."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vadapt.adapters.layers import find_linear_targets, merge_layers, replace_module

from .config import SaltConfig
from .layer import SaltLinear

if TYPE_CHECKING:
    from vadapt.contracts import Backbone


def inject_salt(backbone: Backbone, config: SaltConfig) -> None:
    """Replace every targeted ``nn.Linear`` of ``backbone.model`` by a :class:`SaltLinear` (one SVD each).

    Targets follow peft's rule (see :func:`vadapt.adapters.base.matches`); matched modules that are not an
    ``nn.Linear`` (e.g. SAM's ``patch_embed.proj`` convolution for the suffix ``proj``) are skipped with a
    warning, and it is an error when no Linear is left.
    """
    root_name, linear = find_linear_targets(backbone, config, "SALT")
    for name in linear:
        module = backbone.model.get_submodule(name)
        r = config.rank_for(name, min(module.weight.shape))
        try:
            wrapped = SaltLinear(module, r, config.lora_r, config.lora_scaling)
        except ValueError as exc:
            raise ValueError(f"SaltConfig (r / rank_pattern) does not fit {root_name}.{name}: {exc}") from exc
        replace_module(backbone.model, name, wrapped)


def merge_salt(backbone: Backbone) -> None:
    """Fold every :class:`SaltLinear` into a plain frozen ``nn.Linear`` (upstream module names come back)."""
    merge_layers(backbone, SaltLinear)
