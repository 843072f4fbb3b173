"""Injecting LoRA / DoRA into a backbone with peft, and merging it back into plain weights.

peft does the layers (``Linear``, ``Conv2d``, ``MultiheadAttention``, fused ``qkv`` linears alike); we only
pick targets (with a helpful error), inject into ``backbone.model`` in place so module names stay the
upstream ones (plus peft's ``base_layer``), and unload after merging.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vadapt.adapters.base import default_targets, find_targets

from .config import LoraConfig

if TYPE_CHECKING:
    from vadapt.contracts import Backbone


def inject_lora(backbone: Backbone, config: LoraConfig) -> None:
    """Add peft LoRA / DoRA layers to ``backbone.model`` in place (default targets ``backbone.lora_targets``); module
    names stay upstream's plus peft's ``base_layer``. Raises ``ValueError`` listing the module names there when the
    targets match nothing."""
    import peft

    targets = default_targets(backbone, "lora_targets", config.target_modules)
    find_targets(backbone.model, targets, config.exclude_modules, root_name=backbone.name or "backbone")
    peft_config = peft.LoraConfig(
        r=config.r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        use_dora=config.use_dora,
        target_modules=targets,
        exclude_modules=config.exclude_modules,
        bias="none",
    )
    peft.inject_adapter_in_model(peft_config, backbone.model, adapter_name="default")


def merge_lora(backbone: Backbone) -> None:
    """Fold every LoRA / DoRA update into its base weight and put the plain upstream layer back."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    tuned = [(name, m) for name, m in backbone.model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, module in tuned:
        module.merge()
        parent_name, _, attr = name.rpartition(".")
        parent = backbone.model.get_submodule(parent_name) if parent_name else backbone.model
        setattr(parent, attr, module.get_base_layer())
    for p in backbone.parameters():
        p.requires_grad_(False)
