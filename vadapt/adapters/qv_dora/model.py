"""Injecting QV-DoRA into the fused ``qkv`` Linears a config names, and folding it back into plain Linears."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from torch import nn

from vadapt.adapters.base import default_targets, find_targets
from vadapt.adapters.layers import replace_module

from .config import QVDoraConfig
from .layer import QVDoraLinear

if TYPE_CHECKING:
    from vadapt.backbones import Backbone


def inject_qv_dora(backbone: Backbone, config: QVDoraConfig) -> None:
    """Replace every targeted fused ``qkv`` ``nn.Linear`` of ``backbone.model`` by a :class:`QVDoraLinear`.

    Targets follow peft's rule (see :func:`vadapt.adapters.base.matches`), default ``backbone.lora_targets``.
    Matched modules that are not an ``nn.Linear`` are skipped with a warning (an error when none is left); a
    Linear whose ``out_features`` is not divisible by 3 is an error naming the module and its shape.
    """
    targets = default_targets(backbone, "lora_targets", config.target_modules)
    root_name = backbone.name or "backbone"
    names = find_targets(backbone.model, targets, config.exclude_modules, root_name=root_name)
    linear = [n for n in names if isinstance(backbone.model.get_submodule(n), nn.Linear)]
    skipped = [n for n in names if n not in linear]
    if not linear:
        raise ValueError(
            f"QV-DoRA adapts fused qkv nn.Linear modules, but target_modules={targets!r} matched only other "
            f"modules of the {root_name}: {skipped[:8]}"
        )
    if skipped:
        warnings.warn(f"QV-DoRA skips matched modules that are not nn.Linear: {skipped[:8]}", stacklevel=2)
    for name in linear:
        module = backbone.model.get_submodule(name)
        if module.out_features % 3:
            raise ValueError(
                f"QV-DoRA target {root_name}.{name} is not a fused qkv projection: its out_features "
                f"({module.out_features}, weight shape {tuple(module.weight.shape)}) is not divisible by 3; "
                f"set target_modules to the fused qkv Linears only"
            )
        wrapped = QVDoraLinear(module, config.r, config.scaling, config.slices, config.use_dora)
        replace_module(backbone.model, name, wrapped)


def merge_qv_dora(backbone: Backbone) -> None:
    """Fold every :class:`QVDoraLinear` into a plain frozen fused ``nn.Linear`` (upstream names come back)."""
    wrapped = [(name, m) for name, m in backbone.model.named_modules() if isinstance(m, QVDoraLinear)]
    for name, module in wrapped:
        replace_module(backbone.model, name, module.merge())
    for p in backbone.parameters():
        p.requires_grad_(False)
