"""PeftCD's light change decoders and its bi-temporal layer exchange (Dong et al., IEEE JSTARS 2026,
arXiv:2509.09572, https://github.com/dyzy41/PeftCD).

PeftCD does not fuse the two dates by difference or concatenation: after the shared encoder, whole feature
levels are *swapped* between the two branches (:func:`exchange_levels`), and each branch is then decoded on
its own by one shared decoder into change logits. The exchange is the only place where the dates meet, and it
is what lets a per-branch decoder see both. The official code has one decoder per backbone kind, both here:

* :class:`PyramidChangeDecoder` (official ``SAM2CD``): multi-stride maps (Hiera, EfficientNet) -> FPN ->
  top-down decoding with residual bottleneck blocks -> 3×3 conv + 1×1 classifier at the finest stride;
* :class:`DepthFusionChangeDecoder` (official ``DINO3CD`` / ``VFMDecoder.SSBiFPNDecoder``): maps of one
  stride (plain ViTs) -> per-pixel softmax weighting over the levels -> depthwise ASPP -> two ×2 upsampling
  refinements -> depthwise-separable head at a quarter of the patch stride.

Both take ``[(B, C_i, h_i, w_i)]`` and return ``(B, num_classes, h, w)`` logits at their output stride; the
task upsamples them to the input. Deviations from the official modules are listed in each class.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def exchange_levels(
    feats_a: Sequence[torch.Tensor], feats_b: Sequence[torch.Tensor], levels: Sequence[int]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """PeftCD's layer exchange: the maps of ``levels`` trade places between the branches, the others stay.

    ``([a_0, a_1, a_2, a_3], [b_0, b_1, b_2, b_3], levels=(0, 2)) -> ([b_0, a_1, b_2, a_3], [a_0, b_1, a_2, b_3])``
    (the official default: every other level from the first, ``utils/exchange.py`` ``LAYER`` mode).
    """
    out_a, out_b = list(feats_a), list(feats_b)
    for i in levels:
        out_a[i], out_b[i] = feats_b[i], feats_a[i]
    return out_a, out_b


def _resize(x: torch.Tensor, size: Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False if mode == "bilinear" else None)


class ResidualBottleneck(nn.Module):
    """``relu(x + BN(1×1(relu(BN(3×3(relu(BN(1×1 x))))))))`` at constant width (ResNet bottleneck, expansion 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class PyramidChangeDecoder(nn.Module):
    """PeftCD's SAM 2 decoder for multi-stride maps (finest first).

    FPN (1×1 laterals, nearest top-down sums, 3×3 smoothing) to ``channels``; then from the coarsest level down:
    ``x = blocks_i(map_i + up(x))`` with ``blocks_per_level`` residual bottlenecks per level; then a 3×3
    conv-BN-ReLU and a 1×1 classifier. ``[(B, C_i, h_i, w_i)] -> (B, num_classes, h_0, w_0)``.

    Deviations from the official ``SAM2CD``: the 3×3 conv and the classifier run at the finest map (stride 4)
    instead of after one more ×2 upsampling (the 1×1 classifier commutes with the final bilinear resize, the
    3×3 conv does not; 4× less memory); the top-down decoding resizes to each level's size rather than by ×2,
    so any strides work.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 256,
                 blocks_per_level: int = 2) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.smooth = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)
        self.refine = nn.ModuleList(
            nn.Sequential(*(ResidualBottleneck(channels) for _ in range(blocks_per_level))) for _ in in_channels
        )
        self.head = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, num_classes, 1),
        )

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        laterals = [lateral(f) for lateral, f in zip(self.laterals, feats)]
        for i in range(len(laterals) - 2, -1, -1):
            laterals[i] = laterals[i] + _resize(laterals[i + 1], laterals[i].shape[-2:], "nearest")
        maps = [smooth(x) for smooth, x in zip(self.smooth, laterals)]
        x = self.refine[-1](maps[-1])
        for i in range(len(maps) - 2, -1, -1):
            x = self.refine[i](maps[i] + _resize(x, maps[i].shape[-2:]))
        return self.head(x)


def _separable(channels: int, dilation: int = 1) -> nn.Sequential:
    """Depthwise 3×3 (dilated) -> BN -> GELU -> pointwise 1×1 -> BN -> GELU."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, groups=channels, bias=False),
        nn.BatchNorm2d(channels), nn.GELU(),
        nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.GELU(),
    )


def _pointwise(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.GELU())


class DepthFusionChangeDecoder(nn.Module):
    """PeftCD's DINOv3 decoder for several maps of one stride (plain ViT layers).

    Each map -> 1×1 conv-BN-GELU to ``channels``; a 1×1 score per map, squashed by a sigmoid, softmaxed over
    the maps at every pixel, weighs their sum; a separable conv; depthwise ASPP (dilations ``rates``, concat,
    1×1); twice (×2 bilinear upsampling + separable conv); a separable conv; head = separable conv + 1×1
    classifier. ``[(B, C_i, h, w)] -> (B, num_classes, 4h, 4w)``.

    Deviations from the official ``SSBiFPNDecoder``: the head runs at 4× the feature grid (stride 4 for
    patch 16, 3.5 for patch 14) instead of after two more ×2 upsamplings to the full input (16× less memory;
    the logits are resized bilinearly instead); its image-detail branch, never called by the official model
    but counted in its parameters (141,440), is left out; maps of different sizes are resized to the largest.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 256,
                 rates: Sequence[int] = (1, 2, 4, 8)) -> None:
        super().__init__()
        self.project = nn.ModuleList(_pointwise(c, channels) for c in in_channels)
        self.score = nn.ModuleList(nn.Conv2d(channels, 1, 1) for _ in in_channels)
        self.fuse = _separable(channels)
        self.context = nn.ModuleList(_separable(channels, r) for r in rates)
        self.context_proj = _pointwise(channels * len(rates), channels)
        self.up = nn.ModuleList(_separable(channels) for _ in range(3))
        self.head = nn.Sequential(_separable(channels), nn.Conv2d(channels, num_classes, 1))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        size = max((f.shape[-2:] for f in feats), key=lambda s: s[0] * s[1])
        xs = torch.stack([proj(_resize(f, size)) for proj, f in zip(self.project, feats)], 1)  # (B, L, C, h, w)
        scores = torch.stack([torch.sigmoid(s(xs[:, i])) for i, s in enumerate(self.score)], 1)  # (B, L, 1, h, w)
        x = self.fuse((scores.softmax(1) * xs).sum(1))
        x = self.context_proj(torch.cat([branch(x) for branch in self.context], 1))
        for refine in self.up[:2]:
            x = refine(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
        return self.head(self.up[2](x))
