"""Light decode heads over a backbone's multi-scale feature list.

Both are a handful of convolutions, written here because no maintained package offers a head that takes an
arbitrary list of ``(B, C_i, H/s_i, W/s_i)`` maps from any backbone; heavier heads (UPerNet) come with the
segmentation task.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LinearHead(nn.Module):
    """Linear probe: every map resized to the finest stride, concatenated, batch-normed, one 1×1 conv.

    ``[(B, C_i, h_i, w_i)] -> (B, num_classes, h_0, w_0)`` with ``(h_0, w_0)`` the finest map's size.
    """

    def __init__(self, in_channels: list[int], num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(sum(in_channels))
        self.classifier = nn.Conv2d(sum(in_channels), num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = max((f.shape[-2:] for f in feats), key=lambda s: s[0] * s[1])
        x = torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats], dim=1)
        return self.classifier(self.norm(x))


class FPNHead(nn.Module):
    """FPN-style fusion (Kirillov et al. 2019, panoptic FPN's semantic branch, simplified).

    Each map -> 1×1 lateral conv to ``channels`` -> resized to the finest map and summed -> 3×3 conv, BN,
    ReLU -> 1×1 classifier. ``[(B, C_i, h_i, w_i)] -> (B, num_classes, h_0, w_0)``.
    """

    def __init__(self, in_channels: list[int], num_classes: int, channels: int = 64) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = max((f.shape[-2:] for f in feats), key=lambda s: s[0] * s[1])
        x = sum(
            F.interpolate(lat(f), size=size, mode="bilinear", align_corners=False)
            for lat, f in zip(self.laterals, feats)
        )
        return self.classifier(self.fuse(x))
