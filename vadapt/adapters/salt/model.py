"""Injecting SALT into the ``nn.Linear`` modules a config names, and folding it back into plain Linears."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from torch import nn

from vadapt.adapters.base import default_targets, find_targets
from vadapt.adapters.layers import replace_module

from .config import SaltConfig
from .layer import SaltLinear

if TYPE_CHECKING:
    from vadapt.backbones import Backbone


def inject_salt(backbone: Backbone, config: SaltConfig) -> None:
    """Replace every targeted ``nn.Linear`` of ``backbone.model`` by a :class:`SaltLinear` (one SVD each).

    Targets follow peft's rule (see :func:`vadapt.adapters.base.matches`); matched modules that are not an
    ``nn.Linear`` (e.g. SAM's ``patch_embed.proj`` convolution for the suffix ``proj``) are skipped with a
    warning, and it is an error when no Linear is left.
    """
    targets = default_targets(backbone, "lora_targets", config.target_modules)
    root_name = backbone.name or "backbone"
    names = find_targets(backbone.model, targets, config.exclude_modules, root_name=root_name)
    linear = [n for n in names if isinstance(backbone.model.get_submodule(n), nn.Linear)]
    skipped = [n for n in names if n not in linear]
    if not linear:
        raise ValueError(
            f"SALT adapts nn.Linear modules, but target_modules={targets!r} matched only other modules of the "
            f"{root_name}: {skipped[:8]}"
        )
    if skipped:
        warnings.warn(f"SALT skips matched modules that are not nn.Linear: {skipped[:8]}", stacklevel=2)
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
    salted = [(name, m) for name, m in backbone.model.named_modules() if isinstance(m, SaltLinear)]
    for name, module in salted:
        replace_module(backbone.model, name, module.merge())
    for p in backbone.parameters():
        p.requires_grad_(False)
