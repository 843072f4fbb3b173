"""Injecting EndoDAC (DV-LoRA + Convolutional Necks) into a backbone, switching its phases and merging DV-LoRA."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from torch import nn

from vadapt.adapters.base import default_targets, find_targets
from vadapt.adapters.layers import first_width, merge_layers, replace_module

from .config import MLP_TARGETS, DVLoraConfig
from .layer import ConvNeck, DVLoraConv2d, DVLoraLinear, NeckedBlock, TokenGrid, is_pointwise_conv

if TYPE_CHECKING:
    from vadapt.contracts import Backbone


def dv_lora_vector_phase(config: DVLoraConfig, step: int) -> bool:
    """Whether optimisation step ``step`` (0-based) is in the vector phase: ``step >= warm_up_steps`` (the official
    ``set_train``); always ``False`` for plain LoRA (``vectors=False``)."""
    return config.vectors and step >= config.warm_up_steps


def set_dv_lora_phase(module: nn.Module, vectors: bool) -> None:
    """Put every DV-LoRA layer under ``module`` in the warm-up (``vectors=False``: ``A``, ``B`` train, ``U``, ``V``
    frozen) or the vector phase (``U``, ``V`` train, ``A``, ``B`` frozen), and make every neck trainable (as the
    official ``mark_only_part_as_trainable``). Plain-LoRA layers keep ``A``, ``B`` trainable.

    A switch replaces the factors that start training by new ``nn.Parameter`` objects (the frozen ones become
    buffers, see :mod:`.layer`): hand ``[p for p in task.parameters() if p.requires_grad]`` to the optimizer
    afterwards (e.g. as its param group's ``params``, which keeps the LR schedule). Calling it with the current
    phase changes nothing.
    """
    for m in module.modules():
        if isinstance(m, DVLoraLinear):
            m.set_phase(vectors)
        elif isinstance(m, NeckedBlock):
            m.adapter.requires_grad_(True)


def _targets(backbone: Backbone, config: DVLoraConfig) -> tuple[list[str], list[str]]:
    """(names of the Linear / 1x1-conv targets, names of the matched modules that are neither)."""
    layout = backbone.block_layout
    if config.target_modules:
        targets = config.target_modules
    elif layout == "tokens":
        targets = list(MLP_TARGETS)
    elif layout == "conv":
        targets = default_targets(backbone, "lora_targets", None)
    else:
        raise ValueError(
            f"DVLoraConfig has no default target_modules for {layout!r} layout backbones ({backbone.name!r}); set "
            f"target_modules to the MLP Linears (EndoDAC adapts fc1 / fc2 of every ViT block)"
        )
    names = find_targets(backbone.model, targets, config.exclude_modules, root_name=backbone.name or "backbone")
    modules = {n: backbone.model.get_submodule(n) for n in names}
    usable = [n for n, m in modules.items() if isinstance(m, nn.Linear) or is_pointwise_conv(m)]
    skipped = [n for n in names if n not in usable]
    if not usable:
        raise ValueError(
            f"DV-LoRA adapts nn.Linear and 1x1 stride-1 nn.Conv2d modules, but target_modules={targets!r} matched "
            f"only other modules of the {backbone.name or 'backbone'}: {skipped[:8]}"
        )
    if skipped:
        warnings.warn(f"DV-LoRA skips matched modules that are neither nn.Linear nor 1x1 convolutions: {skipped[:8]}",
                      stacklevel=3)
    return usable, skipped


def _neck_indices(config: DVLoraConfig, depth: int, name: str) -> list[int]:
    bad = [i for i in config.neck_blocks if not -depth <= i < depth]
    if bad:
        raise ValueError(
            f"DVLoraConfig.neck_blocks has {bad}, but {name!r} has {depth} blocks (valid: {-depth} .. {depth - 1})"
        )
    indices = [i % depth for i in config.neck_blocks]
    if len(set(indices)) != len(indices):
        raise ValueError(f"DVLoraConfig.neck_blocks names a block twice: {config.neck_blocks}")
    return sorted(indices)


def inject_dv_lora(backbone: Backbone, config: DVLoraConfig) -> None:
    """Wrap the targeted Linears / 1x1 convolutions of ``backbone.model`` in :class:`DVLoraLinear` /
    :class:`DVLoraConv2d` and the blocks ``config.neck_blocks`` in :class:`NeckedBlock`, in place, in the warm-up
    phase (:func:`dv_lora_vector_phase` at step 0).

    Each neck is sized from its block's output width, read from the block's last Linear (``"tokens"``, ``"grid"``:
    the MLP's output, the embedding width) or last Conv2d (``"conv"``: the projection) with the shared
    :func:`~vadapt.adapters.layers.first_width`, as the other block adapters do; we prefer this to a dummy forward,
    which would update frozen batch-norm statistics if run in train mode, fire other adapters' hooks and need a
    real input size. :class:`ConvNeck` checks the width again at every forward (a clear error where a block's last
    layer is not its output). Blocks are replaced at their path in the backbone (found by identity), so backbones
    whose ``blocks`` is a fresh list (EfficientNet) work too.
    """
    layout = backbone.block_layout
    blocks = list(backbone.blocks)
    indices = _neck_indices(config, len(blocks), backbone.name)
    if any(isinstance(m, (DVLoraLinear, NeckedBlock)) for m in backbone.modules()):
        raise ValueError(f"{backbone.name!r} already has a DV-LoRA adapter")
    widths = {i: first_width(blocks[i], layout)[1] for i in indices}  # before wrapping anything
    names, _ = _targets(backbone, config)
    vector_phase = dv_lora_vector_phase(config, 0)
    for name in names:
        module = backbone.model.get_submodule(name)
        layer = DVLoraLinear if isinstance(module, nn.Linear) else DVLoraConv2d
        replace_module(backbone.model, name, layer(module, config.r, config.scaling, config.vectors, vector_phase))

    paths = {id(m): n for n, m in backbone.named_modules()}
    grid = TokenGrid(backbone) if layout == "tokens" else None
    prefix = backbone.num_prefix_tokens if layout == "tokens" else 0
    for i in indices:
        block = blocks[i]
        neck = ConvNeck(widths[i], config.neck_reduction)
        reference = next((p for p in block.parameters() if p.is_floating_point()), None)
        if reference is not None:  # live beside the block (device, and dtype of a half-precision backbone)
            neck.to(device=reference.device, dtype=reference.dtype)
        replace_module(backbone, paths[id(block)], NeckedBlock(block, neck, layout, prefix, grid))
    set_dv_lora_phase(backbone, vector_phase)


def merge_dv_lora(backbone: Backbone) -> None:
    """Fold every DV-LoRA layer into a plain frozen copy of its base layer (``W + Delta W``; upstream names come
    back). The Convolutional Necks are extra computation that no weight can absorb: they stay, frozen, in their
    :class:`NeckedBlock` wrappers. This is why the registered method has no ``merge`` (``merge_adapter`` refuses):
    an exported "merged" backbone must be the upstream architecture, which a model with necks is not. Use this
    function to drop the low-rank branch at inference when the necks may stay."""
    merge_layers(backbone, DVLoraLinear)
