"""The trainable networks of self-supervised depth (EndoDAC: Cui et al., 2024, arXiv:2405.08672, after Monodepth2:
Godard et al., 2019, arXiv:1806.01260): depth heads on a frozen backbone, and the two-frame pose network that
also predicts the camera intrinsics.

* :class:`DisparityHead`: EndoDAC's ``HeadDepth`` (conv 3x3 ``F -> F/2``, x2 bilinear upsampling, conv 3x3
  ``F/2 -> 32``, ReLU, conv 1x1 ``32 -> 1``), one per scale on Depth Anything's four DPT fusion outputs; the
  sigmoid is applied by the caller.
* :class:`PyramidDisparityDecoder`: for backbones without a DPT neck (EfficientNet, ...): Monodepth2's
  ``DepthDecoder`` pattern over the backbone's feature pyramid (skips added after a 1x1 projection), disparity at
  four scales.
* :class:`PoseNet`: EndoDAC's pose branch: a ResNet encoder on two stacked frames (6 channels), Monodepth2's
  ``PoseDecoder`` (axis-angle and translation, scaled by 0.001) and EndoDAC's ``IntrinsicsHead`` on the decoder's
  intermediate feature: ``f = (softplus(conv(pool(feat))) + 0.5) * (W, H)``, ``c = (conv(pool(feat)) + 0.5) * (W, H)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class DisparityHead(nn.Module):
    """EndoDAC's per-scale ``HeadDepth``: ``(B, F, h, w)`` -> ``(B, 1, 2h, 2w)`` disparity logits."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.conv2 = nn.Conv2d(features // 2, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.conv1(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.conv3(F.relu(self.conv2(x)))


class _ConvElu(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3), nn.ELU(inplace=True))


class PyramidDisparityDecoder(nn.Module):
    """A light decoder on a feature pyramid ``[(B, C_i, H/s_i, W/s_i)]`` (finest first) -> disparity logits
    ``(B, 1, H / 2^k, W / 2^k)`` for ``k = 0..3`` (finest first).

    Monodepth2's pattern (from the coarsest level to full resolution: 3x3 conv + ELU, x2 nearest upsampling, the
    backbone feature of that stride joined, 3x3 conv + ELU, a 3x3 disparity conv at the four finest levels), with
    one change: skip features are projected by a 1x1 conv and added (as in an FPN) instead of concatenated, so a
    320-channel EfficientNet stage costs ``320 x width`` weights, not ``9 x 320 x width``: the decoder stays a small
    share of a light backbone. ``channels[k]`` is the width at stride ``2^k`` (Monodepth2: 16, 32, 64, 128, 256).
    """

    def __init__(self, in_channels: Sequence[int], strides: Sequence[int],
                 channels: Sequence[int] = (16, 32, 64, 128, 256)) -> None:
        super().__init__()
        # upsamplings from the coarsest stride to stride 1, at least four (one per output scale; ViT maps all sit
        # at stride 14 or 16 and get no skip features)
        levels = max(4, math.ceil(math.log2(max(strides))))
        self.widths = [channels[min(k, len(channels) - 1)] for k in range(levels + 1)]  # width at stride 2^k
        self.skip_of = {s: i for i, s in enumerate(strides)}
        self.first = nn.Conv2d(in_channels[-1], self.widths[levels], 1)
        self.reduce = nn.ModuleList()
        self.lateral = nn.ModuleDict()
        self.fuse = nn.ModuleList()
        self.levels = list(reversed(range(levels)))  # strides 2^k, coarse to fine
        for k in self.levels:
            self.reduce.append(_ConvElu(self.widths[k + 1], self.widths[k]))
            if 2 ** k in self.skip_of:
                self.lateral[str(k)] = nn.Conv2d(in_channels[self.skip_of[2 ** k]], self.widths[k], 1)
            self.fuse.append(_ConvElu(self.widths[k], self.widths[k]))
        self.heads = nn.ModuleDict({str(k): nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(self.widths[k], 1, 3))
                                    for k in range(4)})

    def forward(self, feats: Sequence[torch.Tensor], size: tuple[int, int]) -> list[torch.Tensor]:
        x = self.first(feats[-1])
        outputs: dict[int, torch.Tensor] = {}
        for reduce, fuse, k in zip(self.reduce, self.fuse, self.levels):
            target = (-(-size[0] // 2 ** k), -(-size[1] // 2 ** k))
            x = F.interpolate(reduce(x), size=target, mode="nearest")
            if str(k) in self.lateral:
                x = x + self.lateral[str(k)](feats[self.skip_of[2 ** k]][..., : target[0], : target[1]])
            x = fuse(x)
            if str(k) in self.heads:
                outputs[k] = self.heads[str(k)](x)
        return [outputs[k] for k in sorted(outputs)]


def _two_frame_stem(weight: torch.Tensor) -> torch.Tensor:
    """A pretrained first-layer weight ``(C, 3, k, k)`` -> ``(C, 6, k, k)`` for two stacked frames: repeated and
    halved, as the official pose encoder (Monodepth2's ``resnet_multiimage_input``)."""
    return torch.cat([weight, weight], 1) / 2


class ResNetPairEncoder(nn.Module):
    """torchvision's ResNet (18, 34 or 50 layers) on two stacked frames ``(B, 6, H, W)`` in ``[0, 1]`` -> its last
    map ``(B, width, H/32, W/32)``; frames normalised with Monodepth2's ``(x - 0.45) / 0.225``. ``weights``: a
    torchvision ImageNet state-dict file (the official start; none can be downloaded offline), ``None``: random."""

    def __init__(self, layers: int = 18, weights: str | None = None) -> None:
        super().__init__()
        import torchvision

        builders = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34,
                    50: torchvision.models.resnet50}
        resnet = builders[layers](weights=None)
        if weights is not None:
            from vadapt.weights import load_strict, read_state_dict

            resnet.fc = nn.Identity()
            load_strict(resnet, {k: v for k, v in read_state_dict(weights).items() if not k.startswith("fc.")},
                        source=str(weights))
        stem = resnet.conv1.weight.detach()
        resnet.conv1 = nn.Conv2d(6, 64, 7, 2, 3, bias=False)
        with torch.no_grad():
            resnet.conv1.weight.copy_(_two_frame_stem(stem))
        resnet.fc = nn.Identity()
        self.resnet = resnet
        self.width = 2048 if layers == 50 else 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.resnet
        x = r.maxpool(r.relu(r.bn1(r.conv1((x - 0.45) / 0.225))))
        return r.layer4(r.layer3(r.layer2(r.layer1(x))))


class EfficientNetPairEncoder(nn.Module):
    """EfficientNet-Lite0 (vadapt's ``efficientnet_lite0`` backbone, all of it trainable) on two stacked frames
    ``(B, 6, H, W)`` in ``[0, 1]`` -> its stride-32 map ``(B, 320, ceil(H/32), ceil(W/32))``. ``weights``:
    ``"pretrained"`` (the ImageNet file of the pip package, available offline), a file, or ``None``. The offline
    stand-in for the official ImageNet ResNet-18: the only pretrained CNN this machine has."""

    def __init__(self, weights: str | None = "pretrained") -> None:
        super().__init__()
        import copy

        from vadapt.backbones import create_backbone

        backbone = create_backbone("efficientnet_lite0", weights=weights)
        stem = backbone.model.conv_stem
        six = copy.deepcopy(stem)  # keeps timm's Conv2dSame padding
        six.weight = nn.Parameter(_two_frame_stem(stem.weight.detach()))
        six.in_channels = 6
        backbone.model.conv_stem = six
        backbone.requires_grad_(True)
        self.backbone = backbone
        self.width = backbone.out_channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = -x.shape[-2] % 32, -x.shape[-1] % 32
        x = F.pad((x - 0.5) / 0.5, (0, pad_w, 0, pad_h))
        return self.backbone.forward_features(x)[-1]


#: pose-encoder names the depth task accepts
POSE_ENCODERS = ("resnet18", "resnet34", "resnet50", "efficientnet_lite0")


class PoseNet(nn.Module):
    """Two frames -> the relative pose and the camera intrinsics (EndoDAC's ``pose_encoder`` + ``pose`` +
    ``intrinsics_head``).

    ``forward(source, target)`` with frames ``(B, 3, H, W)`` in ``[0, 1]`` (stacked source first, as the official
    ``[frame f_i, frame 0]``) returns ``axis_angle`` ``(B, 3)`` and ``translation`` ``(B, 3)`` of the pose target ->
    source, and ``K`` ``(B, 3, 3)`` in pixels of ``(H, W)``.

    ``encoder``: ``resnet18`` (official; ``weights`` a torchvision ImageNet file, else random), ``resnet34``,
    ``resnet50``, or ``efficientnet_lite0`` (``weights`` default ``"pretrained"``: ImageNet, offline).
    """

    def __init__(self, encoder: str = "resnet18", weights: str | None = None) -> None:
        super().__init__()
        if encoder not in POSE_ENCODERS:
            raise ValueError(f"pose_encoder must be one of {list(POSE_ENCODERS)}, got {encoder!r}")
        if encoder == "efficientnet_lite0":
            self.encoder: nn.Module = EfficientNetPairEncoder(weights or "pretrained")
        else:
            self.encoder = ResNetPairEncoder(int(encoder.removeprefix("resnet")), weights)
        self.squeeze = nn.Conv2d(self.encoder.width, 256, 1)
        self.pose_conv1 = nn.Conv2d(256, 256, 3, padding=1)
        self.pose_conv2 = nn.Conv2d(256, 256, 3, padding=1)
        self.pose_out = nn.Conv2d(256, 6, 1)
        self.focal = nn.Conv2d(256, 2, 1, bias=False)
        self.offset = nn.Conv2d(256, 2, 1, bias=False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Two stacked frames ``(B, 6, H, W)`` -> the encoder's last map."""
        return self.encoder(x)

    def features(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The pose decoder's intermediate feature ``(B, 256, h, w)`` of a frame pair (both ``(B, 3, H, W)``)."""
        feat = F.relu(self.squeeze(self.encode(torch.cat([source, target], 1))))
        return self.pose_conv2(F.relu(self.pose_conv1(feat)))

    def pose(self, intermediate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Axis-angle and translation ``(B, 3)`` each (target -> source), scaled by 0.001 as the official decoder."""
        out = self.pose_out(F.relu(intermediate)).mean((2, 3)) * 0.001
        return out[:, :3], out[:, 3:]

    def intrinsics(self, intermediate: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """EndoDAC's ``IntrinsicsHead``: pooled feature -> ``K`` ``(B, 3, 3)`` in pixels of ``(height, width)``."""
        pooled = intermediate.mean((2, 3), keepdim=True)
        size = torch.tensor([width, height], dtype=pooled.dtype, device=pooled.device)
        focal = (F.softplus(self.focal(pooled).flatten(1)) + 0.5) * size
        centre = (self.offset(pooled).flatten(1) + 0.5) * size
        K = torch.zeros(pooled.shape[0], 3, 3, dtype=pooled.dtype, device=pooled.device)
        K[:, 0, 0], K[:, 1, 1] = focal[:, 0], focal[:, 1]
        K[:, 0, 2], K[:, 1, 2] = centre[:, 0], centre[:, 1]
        K[:, 2, 2] = 1.0
        return K

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        intermediate = self.features(source, target)
        axis_angle, translation = self.pose(intermediate)
        return axis_angle, translation, self.intrinsics(intermediate, *target.shape[-2:])
