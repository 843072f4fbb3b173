"""Fold inference-mode batch norms into the convolutions that feed them.

A frozen ``BatchNorm2d`` after a ``Conv2d`` is an affine map per channel, so it can be folded into the
convolution's weight and bias (``torch.nn.utils.fusion.fuse_conv_bn_weights``) and dropped: ~10% less time on
convnets such as EfficientNet (BENCHMARKS.md section 6). Which batch norm follows which convolution is found by
running the model once with hooks (a batch norm whose input *is* a convolution's output); torch.fx cannot do
this here because the backbones branch on input sizes. The outputs before and after are compared and the
folding is undone if they differ (as they would if another module also read a folded convolution's output).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights


def conv_bn_pairs(model: nn.Module, *example: torch.Tensor) -> list[tuple[str, str]]:
    """``(conv name, batch-norm name)`` pairs where the batch norm's input is the convolution's output."""
    names = {module: name for name, module in model.named_modules()}
    outputs: dict[int, tuple[nn.Module, torch.Tensor]] = {}
    pairs: list[tuple[str, str]] = []

    def after_conv(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        outputs[id(output)] = (module, output)  # keeping the tensor keeps its id unique

    def before_bn(module: nn.Module, args: tuple) -> None:
        found = outputs.get(id(args[0])) if args else None
        if found is not None and found[1] is args[0]:
            pairs.append((names[found[0]], names[module]))

    hooks = []
    for module in model.modules():
        if type(module) is nn.Conv2d:
            hooks.append(module.register_forward_hook(after_conv))
        elif isinstance(module, nn.BatchNorm2d) and not module.training and module.track_running_stats:
            hooks.append(module.register_forward_pre_hook(before_bn))
    try:
        with torch.inference_mode():
            model(*example)
    finally:
        for hook in hooks:
            hook.remove()
    # a module called more than once may meet different partners: fold only one-to-one pairs
    convs = [c for c, _ in pairs]
    bns = [b for _, b in pairs]
    return sorted({(c, b) for c, b in pairs if convs.count(c) == 1 and bns.count(b) == 1})


def _without_norm(bn: nn.BatchNorm2d) -> nn.Module:
    """What remains of a batch norm once its affine map is folded: timm's ``BatchNormAct2d`` keeps its
    dropout and activation; a plain batch norm becomes the identity."""
    rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if isinstance(m, nn.Module)]
    return nn.Sequential(*rest) if rest else nn.Identity()


def fold_batch_norms(model: nn.Module, *example: torch.Tensor, rtol: float = 1e-4) -> int:
    """Fold every batch norm that directly follows a convolution into it, in place, if the model's output on
    ``example`` stays the same (within ``rtol`` of its largest value); returns how many were folded."""
    with torch.inference_mode():
        reference = model(*example).float()
    undo = []
    for conv_name, bn_name in conv_bn_pairs(model, *example):
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        parent_name, _, attr = bn_name.rpartition(".")
        parent = model.get_submodule(parent_name)
        undo.append((conv, conv.weight, conv.bias, parent, attr, bn))
        conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                      bn.eps, bn.weight, bn.bias)
        setattr(parent, attr, _without_norm(bn))
    with torch.inference_mode():
        folded = model(*example).float()
    if (folded - reference).abs().max() > rtol * (1 + reference.abs().max()):
        for conv, weight, bias, parent, attr, bn in undo:  # some conv output has another reader: put it back
            conv.weight, conv.bias = weight, bias
            setattr(parent, attr, bn)
        return 0
    return len(undo)
