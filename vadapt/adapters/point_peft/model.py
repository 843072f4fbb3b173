"""Injecting Point-PEFT (Tang et al., AAAI 2024, arXiv:2310.03059) into a Point-MAE backbone's blocks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from vadapt.adapters.base import default_targets, find_targets
from vadapt.adapters.layers import replace_module

from .config import PointPEFTConfig
from .layer import FFNAdapter, PointPEFTBlock, PointPEFTShared

if TYPE_CHECKING:
    from vadapt.contracts import Backbone

#: attribute of the backbone that holds the shared state (group attention, point-prior bank)
SHARED_ATTR = "point_peft"
#: backbone parameters the official runner (``runner_cache_prompt.py``) also trains, by name suffix
OFFICIAL_BIAS_SUFFIXES: tuple[str, ...] = ("norm1.bias", "attn.proj.bias", "norm2.bias", "fc1.bias", "fc2.bias")


def _width(backbone: Backbone) -> int:
    dim = getattr(backbone, "embed_dim", None)
    if isinstance(dim, int):
        return dim
    norms = [m for m in backbone.blocks[0].modules() if isinstance(m, nn.LayerNorm)]
    if not norms:
        raise ValueError(f"cannot infer the token width of {backbone.name!r} (no embed_dim, no LayerNorm)")
    return int(norms[0].normalized_shape[0])


def inject_point_peft(backbone: Backbone, config: PointPEFTConfig) -> None:
    """Install :class:`PointPEFTShared` as ``backbone.point_peft``, wrap every block's FFN in
    :class:`FFNAdapter` and every block in :class:`PointPEFTBlock` (prompts in the first ``prompt_blocks``).

    Needs a point backbone: ``(B, p + G, C)`` token blocks called as ``block(x + pos)`` and the patch centres
    of the current forward in ``backbone.last_centres`` ``(B, G, 3)`` (``vadapt.backbones.point_mae``).
    """
    if backbone.block_layout != "tokens" or not hasattr(backbone, "last_centres"):
        raise ValueError(
            f"Point-PEFT adapts point-cloud transformers whose blocks take (B, N, C) tokens and which expose the "
            f"patch centres (backbone.last_centres); {backbone.name!r} does not"
        )
    if SHARED_ATTR in backbone._modules:
        raise ValueError(f"{backbone.name!r} already has Point-PEFT")
    blocks = backbone.blocks
    if config.prompt_blocks > len(blocks):
        raise ValueError(
            f"PointPEFTConfig.prompt_blocks={config.prompt_blocks}, but {backbone.name!r} has {len(blocks)} blocks"
        )
    dim = _width(backbone)
    device = next(backbone.parameters()).device
    shared = PointPEFTShared(backbone, dim, config).to(device)
    setattr(backbone, SHARED_ATTR, shared)
    targets = default_targets(backbone, "adapter_targets", None)
    for i, block in enumerate(blocks):
        for name in find_targets(block, targets, None, root_name=f"{backbone.name} block"):
            replace_module(block, name, FFNAdapter(block.get_submodule(name), shared, dim, config).to(device))
        wrapped = PointPEFTBlock(block, i, shared, dim, config, prompted=i < config.prompt_blocks)
        blocks[i] = wrapped.to(device)
    # new modules follow the backbone's mode (its frozen batch norms stay in eval)
    backbone.train(backbone.training)
    if config.tune_backbone_bias:
        unfreeze_official_backbone_params(backbone)


def unfreeze_official_backbone_params(backbone: Backbone) -> list[str]:
    """Train what the official runner trains besides its new modules: the block biases of
    :data:`OFFICIAL_BIAS_SUFFIXES`, the final norm, ``cls_token`` and ``cls_pos``. Returns their names."""
    names = []
    extra = {id(p) for p in backbone.norm.parameters()}
    for attr in ("cls_token", "cls_pos"):
        if isinstance(getattr(backbone, attr, None), nn.Parameter):
            extra.add(id(getattr(backbone, attr)))
    for name, param in backbone.named_parameters():
        if SHARED_ATTR + "." in name:
            continue
        plain = name.replace("base_layer.", "")
        if id(param) in extra or (".blocks." in plain and plain.endswith(OFFICIAL_BIAS_SUFFIXES)):
            if "adapter" not in plain and "out_transform" not in plain:
                param.requires_grad_(True)
                names.append(name)
    return names
