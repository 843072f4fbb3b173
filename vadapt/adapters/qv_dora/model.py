"""Injecting QV-DoRA into the fused ``qkv`` Linears a config names, and folding it back into plain Linears."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vadapt.adapters.layers import find_linear_targets, merge_layers, replace_module

from .config import QVDoraConfig
from .layer import QVDoraLinear

if TYPE_CHECKING:
    from vadapt.contracts import Backbone


def inject_qv_dora(backbone: Backbone, config: QVDoraConfig) -> None:
    """Replace every targeted fused ``qkv`` ``nn.Linear`` of ``backbone.model`` by a :class:`QVDoraLinear`.

    Targets follow peft's rule (see :func:`vadapt.adapters.base.matches`), default ``backbone.lora_targets``.
    Matched modules that are not an ``nn.Linear`` are skipped with a warning (an error when none is left); a
    Linear whose ``out_features`` is not divisible by 3 is an error naming the module and its shape.
    """
    root_name, linear = find_linear_targets(backbone, config, "QV-DoRA")
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
    merge_layers(backbone, QVDoraLinear)
