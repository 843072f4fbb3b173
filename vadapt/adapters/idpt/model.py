"""Injecting IDPT (Zha et al., ICCV 2023, arXiv:2304.07221) into a token-layout point-cloud backbone."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from .config import IDPTConfig
from .layer import DGCNNPrompt, IDPTBlock, LastPositions

if TYPE_CHECKING:
    from vadapt.contracts import Backbone


def _token_width(backbone: nn.Module, block: nn.Module) -> int:
    dim = getattr(backbone, "embed_dim", None)
    if isinstance(dim, int) and dim > 0:
        return dim
    norms = [m for m in block.modules() if isinstance(m, nn.LayerNorm)]
    if not norms:
        raise ValueError(f"cannot infer the token width of {getattr(backbone, 'name', '')!r} (no LayerNorm)")
    return int(norms[0].normalized_shape[0])


def inject_idpt(backbone: Backbone, config: IDPTConfig) -> None:
    """Wrap the prompted (last) block in an :class:`IDPTBlock` and make the backbone pool ``[cls, prompt, max]``.

    After injection ``backbone.forward_features(points)`` returns ``(B, P + 1 + G, C)`` tokens (``P`` prefix
    tokens, then the prompt), ``backbone.num_prefix_tokens`` is ``P + 1`` and ``backbone.pool(tokens)`` returns
    ``(B, (P + 2) C)`` (``3C`` for Point-MAE), so a head must be sized ``(num_prefix_tokens + 1) * C``.
    Trainable afterwards: the prompt module, ``prompt_pos`` if ``config.train_prompt_pos``, and the backbone's
    ``cls_token`` / ``cls_pos`` if ``config.train_cls_tokens``; everything else stays frozen.
    """
    name = getattr(backbone, "name", "") or type(backbone).__name__
    if getattr(backbone, "block_layout", None) != "tokens":
        raise ValueError(f"IDPT inserts a prompt token into a (B, N, C) sequence, but {name!r} blocks take "
                         f"{getattr(backbone, 'block_layout', None)!r} layout input")
    if not hasattr(backbone, "last_pos"):
        raise ValueError(f"IDPT needs a backbone that records the block position embeddings (last_pos); "
                         f"{name!r} does not")
    blocks = backbone.blocks
    n = len(blocks)
    if any(isinstance(b, IDPTBlock) for b in blocks):
        raise ValueError(f"{name!r} already has an IDPT prompt block")
    if not -n <= config.prompt_block < n:
        raise ValueError(f"IDPTConfig.prompt_block={config.prompt_block}, but {name!r} has {n} blocks")
    index = config.prompt_block % n
    if index != n - 1:
        raise ValueError(
            f"IDPTConfig.prompt_block={config.prompt_block}: only the last block ({n - 1} or -1) can be prompted, "
            f"because {name!r} adds one position tensor of the original sequence length to every block input"
        )
    if getattr(backbone, "num_classes", 0):
        raise ValueError(f"{name!r} was built with its own {backbone.num_classes}-class head on [cls, max] (2C); "
                         f"IDPT pools [cls, prompt, max] (3C): build it with num_classes=0 and a task head")
    num_group = getattr(backbone, "num_group", None)
    if isinstance(num_group, int) and config.k > num_group:
        raise ValueError(f"IDPTConfig.k={config.k} exceeds the {num_group} patch tokens of {name!r}; "
                         f"lower k (the official uses 20 with 64 or 128 tokens)")
    dim = _token_width(backbone, blocks[index])
    prefix = int(backbone.num_prefix_tokens)
    prompt = DGCNNPrompt(dim, config.k, config.edgeconv_dims, config.negative_slope)
    device = next(blocks[index].parameters()).device
    wrapped = IDPTBlock(blocks[index], prompt, dim, prefix, LastPositions(backbone), config.train_prompt_pos,
                        config.prompt_pos_seed).to(device)
    blocks[index] = wrapped
    backbone.num_prefix_tokens = prefix + 1  # the backbone's pool then reads [cls, prompt, max over patches]
    if config.train_cls_tokens:
        for attr in ("cls_token", "cls_pos"):
            param = getattr(backbone, attr, None)
            if isinstance(param, nn.Parameter):
                param.requires_grad_(True)
    backbone.train(backbone.training)  # new batch norms follow the backbone's mode, frozen ones stay in eval
