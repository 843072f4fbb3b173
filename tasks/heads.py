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


class FeaturePyramid(nn.Module):
    """ViTDet / BEiT-style pyramid from single-stride ViT maps (Li et al. 2022, arXiv:2203.16527).

    ``k`` maps at stride ``s`` -> 4 maps at strides ``s/4, s/2, s, 2s``: two 2×2 transposed convs (BN, GELU
    between), one transposed conv, identity, 2×2 max-pool. With fewer than 4 maps the last one is reused.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(channels, channels, 2, 2), nn.BatchNorm2d(channels), nn.GELU(),
            nn.ConvTranspose2d(channels, channels, 2, 2),
        )
        self.up2 = nn.ConvTranspose2d(channels, channels, 2, 2)
        self.down2 = nn.MaxPool2d(2, ceil_mode=True)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        maps = (list(feats) + [feats[-1]] * 4)[:4]
        return [self.up4(maps[0]), self.up2(maps[1]), maps[2], self.down2(maps[3])]


class UPerNetHead(nn.Module):
    """UPerNet (Xiao et al. 2018): PPM on the coarsest map + FPN fusion, via segmentation_models_pytorch.

    Multi-stride backbones (Hiera, EfficientNet) feed their maps directly; single-stride ViTs first go through
    :class:`FeaturePyramid`. ``[(B, C_i, h_i, w_i)] -> (B, num_classes, h_0, w_0)`` at the finest stride.
    """

    def __init__(self, in_channels: list[int], strides: list[int], num_classes: int, channels: int = 256) -> None:
        super().__init__()
        from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder

        single_stride = len(set(strides)) == 1
        if single_stride and len(set(in_channels)) != 1:
            raise ValueError(f"single-stride maps must share a width for the pyramid, got {in_channels}")
        self.pyramid = FeaturePyramid(in_channels[0]) if single_stride else None
        widths = [in_channels[0]] * 4 if single_stride else list(in_channels)
        if len(widths) < 2:
            raise ValueError("UPerNet needs at least two feature maps")
        # smp skips the first two entries (its strides 1 and 2); we hand it our maps from index 2 on
        self.decoder = UPerNetDecoder([0, 0, *widths], encoder_depth=len(widths) + 1, decoder_channels=channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        maps = self.pyramid(feats) if self.pyramid is not None else list(feats)
        return self.classifier(self.decoder([None, None, *maps]))
