"""Depth Anything V1 (Yang et al., 2024, arXiv:2401.10891) and V2 (Yang et al., 2024, arXiv:2406.09414).

Both are a DINOv2 ViT/14 encoder (``pretrained``) and a DPT decoder (``depth_head``, Ranftl et al., 2021) trained
for relative (affine-invariant inverse) depth. Here the encoder is timm's DINOv2 ViT and the DPT head is our own,
written to the official module names, so an official file (``depth_anything_vits14.pth``,
``depth_anything_v2_vits.pth``, ...) loads strictly into ``self.model`` after :meth:`checkpoint_filter`.

What differs between V1 and V2 (read from the official ``depth_anything/dpt.py`` and ``depth_anything_v2/dpt.py``):

* the encoder blocks the DPT reads: V1 the last four (``get_intermediate_layers(x, 4)``: S/B 8-11, L 20-23), V2
  fixed ones (S/B ``[2, 5, 8, 11]``, L ``[4, 11, 17, 23]``, G ``[9, 19, 29, 39]``);
* V1 resizes the head's output once more to the input size (bilinear, ``align_corners=True``) before its final
  ReLU; V2 does not (its inputs are multiples of 14, so the head's output already has the input size).

The rest is the same in both: DPT ``features`` / projection ``out_channels`` per size (S 64 / [48, 96, 192, 384],
B 128 / [96, 192, 384, 768], L 256 / [256, 512, 1024, 1024]), the final norm applied to every intermediate
output, class token dropped (``use_clstoken=False``), no batch norm in the head (``use_bn=False``), and the
checkpoint keys (``pretrained.*``: facebookresearch DINOv2 names incl. ``mask_token``; ``depth_head.*``).

Deviations from the official code:

* Inputs of any size are padded (bottom/right) to a multiple of 14 (:class:`Backbone`) and the depth cropped back;
  the official models floor the patch grid (V1 then stretches the depth to the input size). For inputs that are
  multiples of 14, the output is the official one.
* ``use_clstoken`` and ``use_bn`` (both off in every released checkpoint) are not built; a file that has
  ``readout_projects`` or head batch norms fails the strict load with those keys listed.
* Attention runs through timm (``scaled_dot_product_attention``), equal to DINOv2's up to float rounding.
* Position embeddings are interpolated as DINOv2 does (bicubic with ``scale_factor`` from the grid + 0.1, no
  antialiasing), not with timm's ``dynamic_img_size`` resampling, so other input sizes match the official model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vadapt.weights import WeightsMismatchError, WeightsSource, unwrap_state_dict

from .base import Backbone, register_backbone, resolve_out_indices

#: DPT reads these blocks in V2, keyed by encoder depth (vits/vitb 12, vitl 24, vitg 40), as the official table
_V2_LAYERS = {12: (2, 5, 8, 11), 24: (4, 11, 17, 23), 40: (9, 19, 29, 39)}
_POS_OFFSET = 0.1  # DINOv2's ``interpolate_offset``
_HEAD_HIDDEN = 32  # channels between the two convolutions of ``output_conv2`` (official ``head_features_2``)


# ---- DPT head (official module names) ----------------------------------------------------------------------


class _ResidualConvUnit(nn.Module):
    """ReLU -> 3x3 conv -> ReLU -> 3x3 conv, plus the input: ``(B, F, h, w) -> (B, F, h, w)``."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class _FusionBlock(nn.Module):
    """DPT feature fusion: ``x (+ resConfUnit1(skip))`` -> ``resConfUnit2`` -> bilinear resize to ``size`` (twice
    the input when ``None``; ``align_corners=True``) -> 1x1 ``out_conv``. Channels stay ``features``."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = _ResidualConvUnit(features)
        self.resConfUnit2 = _ResidualConvUnit(features)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None = None, size: Sequence[int] | None = None
    ) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTHead(nn.Module):
    """The Depth Anything DPT decoder on four ViT maps ``(B, C, h, w)``.

    ``projects[i]`` (1x1 conv to ``out_channels[i]``) and ``resize_layers[i]`` (4x / 2x transposed conv, identity,
    stride-2 conv) make a pyramid at ``(4h, 4w), (2h, 2w), (h, w), (ceil(h/2), ceil(w/2))``; ``scratch.layerN_rn``
    (3x3, no bias) map it to ``features`` channels and ``scratch.refinenet4..1`` fuse it coarse to fine;
    ``scratch.output_conv1/2`` predict one channel.
    """

    def __init__(self, in_channels: int, features: int, out_channels: Sequence[int]) -> None:
        super().__init__()
        if len(out_channels) != 4:
            raise ValueError(f"out_channels must list 4 widths (one per DPT level), got {list(out_channels)}")
        c1, c2, _, c4 = out_channels
        self.projects = nn.ModuleList(nn.Conv2d(in_channels, c, 1) for c in out_channels)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(c1, c1, kernel_size=4, stride=4),
            nn.ConvTranspose2d(c2, c2, kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(c4, c4, kernel_size=3, stride=2, padding=1),
        ])
        self.scratch = nn.Module()
        for i, c in enumerate(out_channels, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(c, features, 3, padding=1, bias=False))
        for i in range(1, 5):
            setattr(self.scratch, f"refinenet{i}", _FusionBlock(features))
        self.scratch.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, _HEAD_HIDDEN, 3, padding=1),
            nn.ReLU(True),
            nn.Conv2d(_HEAD_HIDDEN, 1, 1),
            nn.ReLU(True),
        )

    def fuse(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Four maps ``(B, C, h, w)`` -> ``[path_1, path_2, path_3, path_4]``, each with ``features`` channels at
        ``(8h, 8w), (4h, 4w), (2h, 2w), (h, w)``."""
        s = self.scratch
        layers = [
            rn(resize(project(m)))
            for m, project, resize, rn in zip(
                maps, self.projects, self.resize_layers, (s.layer1_rn, s.layer2_rn, s.layer3_rn, s.layer4_rn)
            )
        ]
        path_4 = s.refinenet4(layers[3], size=layers[2].shape[2:])
        path_3 = s.refinenet3(path_4, layers[2], size=layers[1].shape[2:])
        path_2 = s.refinenet2(path_3, layers[1], size=layers[0].shape[2:])
        path_1 = s.refinenet1(path_2, layers[0])
        return [path_1, path_2, path_3, path_4]

    def predict(self, path_1: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """``path_1 (B, features, 8h, 8w)`` -> ``output_conv1`` -> bilinear resize to ``size`` (official: the
        14-multiple input size) -> ``output_conv2`` (ending in ReLU): depth ``(B, 1, *size)``."""
        out = self.scratch.output_conv1(path_1)
        out = F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=True)
        return self.scratch.output_conv2(out)


class DepthAnythingModel(nn.Module):
    """The official model's layout: ``pretrained`` (timm DINOv2 ViT) and ``depth_head`` (:class:`DPTHead`)."""

    def __init__(self, pretrained: nn.Module, depth_head: DPTHead) -> None:
        super().__init__()
        self.pretrained = pretrained
        self.depth_head = depth_head


# ---- backbone ----------------------------------------------------------------------------------------------


def default_out_indices(version: Literal[1, 2], depth: int) -> tuple[int, ...]:
    """The encoder blocks the DPT reads: V1 the last four, V2 the official table (evenly spaced ending with the last
    block for depths it does not list)."""
    if version == 1:
        return tuple(range(depth - 4, depth))
    if version == 2:
        return _V2_LAYERS.get(depth) or resolve_out_indices(None, depth)
    raise ValueError(f"version must be 1 or 2, got {version!r}")


class DepthAnythingBackbone(Backbone):
    """Depth Anything V1/V2 as a frozen backbone: ViT features, the DPT neck and the zero-shot relative depth.

    Args:
        arch: timm DINOv2 architecture (``vit_small_patch14_dinov2``, ``vit_base_...``, ``vit_large_...``).
        version: 1 or 2 (which blocks the DPT reads; see module docstring).
        features: DPT width (``dpt_channels``).
        dpt_out_channels: widths of the four projections.
        img_size: size of the stored position-embedding grid (518 for the official files).
        out_indices: the four blocks the DPT reads; default the version's rule.
        arch_kwargs: timm overrides (``embed_dim``, ``depth``, ``num_heads``, ``init_values``) for test models.
    """

    block_layout = "tokens"
    lora_targets = ("qkv",)
    adapter_targets = ("mlp",)
    stem_conv = "pretrained.patch_embed.proj"

    def __init__(
        self,
        arch: str,
        version: Literal[1, 2],
        features: int,
        dpt_out_channels: Sequence[int],
        img_size: int | tuple[int, int] = 518,
        out_indices: Sequence[int] | None = None,
        **arch_kwargs: Any,
    ) -> None:
        super().__init__()
        if version not in (1, 2):
            raise ValueError(f"version must be 1 or 2, got {version!r}")
        import timm

        vit = timm.create_model(
            arch, pretrained=False, num_classes=0, img_size=img_size, dynamic_img_size=True, **arch_kwargs
        )
        if vit.num_prefix_tokens != 1 or getattr(vit, "no_embed_class", False):
            raise ValueError(f"{arch} is not a DINOv2-layout ViT (one class token sharing the position embedding)")
        depth = len(vit.blocks)
        indices = default_out_indices(version, depth) if out_indices is None else out_indices
        self.out_indices = resolve_out_indices(indices, depth)
        if len(self.out_indices) != 4:
            raise ValueError(f"out_indices must name 4 blocks (the DPT has 4 levels), got {list(indices)}")
        self.version = version
        self.model = DepthAnythingModel(vit, DPTHead(vit.embed_dim, features, dpt_out_channels))
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.patch_size = self.pad_multiple = vit.patch_embed.patch_size[0]
        self.out_channels = [vit.embed_dim] * 4
        self.strides = [self.patch_size] * 4
        self.dpt_channels = features

    @property
    def blocks(self) -> nn.ModuleList:
        """timm's DINOv2 blocks, on ``(B, 1 + h*w, C)`` tokens (class token first)."""
        return self.model.pretrained.blocks

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, bands, 14h, 14w)`` -> tokens ``(B, 1 + h*w, C)`` with position embeddings interpolated as DINOv2's
        ``interpolate_pos_encoding`` does. Sets ``token_grid = (h, w)``."""
        vit = self.model.pretrained
        patches = vit.patch_embed(x)  # (B, h, w, C) with dynamic_img_size
        batch, h, w, dim = patches.shape
        self.token_grid = (h, w)
        gh, gw = vit.patch_embed.grid_size
        pos = vit.pos_embed[:, 1:]
        if (h, w) != (gh, gw):
            grid = pos.float().reshape(1, gh, gw, dim).permute(0, 3, 1, 2)
            scale = ((h + _POS_OFFSET) / gh, (w + _POS_OFFSET) / gw)
            grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
            if grid.shape[-2:] != (h, w):
                raise RuntimeError(f"position embeddings resampled to {tuple(grid.shape[-2:])}, expected {(h, w)}")
            pos = grid.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(patches.dtype)
        cls = vit.cls_token + vit.pos_embed[:, :1]
        tokens = torch.cat([cls.expand(batch, -1, -1), patches.reshape(batch, h * w, dim) + pos], dim=1)
        return vit.norm_pre(vit.patch_drop(tokens))

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, bands, 14h, 14w)`` -> the four maps the DPT reads, ``(B, embed_dim, h, w)`` each: the outputs of
        ``out_indices`` blocks after the final norm, class token dropped (official ``get_intermediate_layers``)."""
        vit = self.model.pretrained
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        outs = self.run_blocks(self._embed(x), self.out_indices)
        return [
            vit.norm(out)[:, self.num_prefix_tokens :].transpose(1, 2).reshape(out.shape[0], -1, h, w)
            for out in outs
        ]

    def dpt_features(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The frozen DPT neck on :meth:`forward_features`' four maps ``(B, embed_dim, h, w)`` -> ``[path_1, path_2,
        path_3, path_4]``, finest first, each ``(B, dpt_channels, .)`` at ``(8h, 8w), (4h, 4w), (2h, 2w), (h, w)``."""
        if len(maps) != 4:
            raise ValueError(f"dpt_features takes the 4 maps of forward_features, got {len(maps)}")
        return self.model.depth_head.fuse(maps)

    def relative_depth(self, x: torch.Tensor) -> torch.Tensor:
        """The official zero-shot prediction: ``(B, bands, H, W)`` normalised input -> relative inverse depth
        ``(B, 1, H, W)`` (non-negative, larger = nearer). The input is padded to a multiple of 14 and the depth
        cropped back (see module docstring)."""
        height, width = x.shape[-2:]
        maps = self(x)  # validates the bands and pads to the patch
        h, w = maps[0].shape[-2:]
        path_1 = self.dpt_features(maps)[0]
        depth = self.model.depth_head.predict(path_1, (h * self.patch_size, w * self.patch_size))
        return depth[..., :height, :width]

    def checkpoint_filter(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """An official Depth Anything state dict -> ``self.model``'s keys: ``pretrained.*`` (facebookresearch
        DINOv2 names) through timm's ``checkpoint_filter_fn`` (drops ``mask_token``, resamples ``pos_embed`` to
        ``img_size``), ``depth_head.*`` unchanged, any other key kept so the strict load lists it."""
        from timm.models.vision_transformer import checkpoint_filter_fn

        state_dict = unwrap_state_dict(state_dict)
        encoder = {k[len("pretrained."):]: v for k, v in state_dict.items() if k.startswith("pretrained.")}
        head = {k: v for k, v in state_dict.items() if k.startswith("depth_head.")}
        for prefix, part in (("pretrained.", encoder), ("depth_head.", head)):
            if not part:
                sample = ", ".join(list(state_dict)[:4])
                raise WeightsMismatchError(
                    f"not a Depth Anything checkpoint: no '{prefix}*' keys (found e.g. {sample}); a plain DINOv2 "
                    "file loads into the vit_*_patch14_dinov2 backbones instead"
                )
        rest = {k: v for k, v in state_dict.items() if not k.startswith(("pretrained.", "depth_head."))}
        encoder = checkpoint_filter_fn(encoder, self.model.pretrained)
        return {**{f"pretrained.{k}": v for k, v in encoder.items()}, **head, **rest}


# ---- registry ----------------------------------------------------------------------------------------------

_V1_URL = "https://huggingface.co/spaces/LiheYoung/Depth-Anything/resolve/main/checkpoints/depth_anything_{}14.pth"
_SIZES = {  # short name: (timm arch, DPT features, DPT out_channels, V2 hub name)
    "s": ("vit_small_patch14_dinov2", 64, (48, 96, 192, 384), "Small"),
    "b": ("vit_base_patch14_dinov2", 128, (96, 192, 384, 768), "Base"),
    "l": ("vit_large_patch14_dinov2", 256, (256, 512, 1024, 1024), "Large"),
}

for _short, (_arch, _features, _channels, _hub) in _SIZES.items():
    register_backbone(
        f"depth_anything_v1_vit{_short}14",
        family="depth_anything",
        builder=DepthAnythingBackbone,
        # the .pth files are in the LiheYoung/Depth-Anything Space; the model repos LiheYoung/depth_anything_vit?14
        # hold the same state dict as pytorch_model.bin (pass its path as weights)
        weights=WeightsSource(f"depth_anything_vit{_short}14.pth", url=_V1_URL.format(f"vit{_short}")),
        description=f"Depth Anything V1 ViT-{_short.upper()}/14 + DPT (relative depth)",
        arch=_arch, version=1, features=_features, dpt_out_channels=_channels, img_size=518,
    )
    register_backbone(
        f"depth_anything_v2_vit{_short}",
        family="depth_anything",
        builder=DepthAnythingBackbone,
        weights=WeightsSource(f"depth_anything_v2_vit{_short}.pth", hub_id=f"depth-anything/Depth-Anything-V2-{_hub}"),
        description=f"Depth Anything V2 ViT-{_short.upper()}/14 + DPT (relative depth)",
        arch=_arch, version=2, features=_features, dpt_out_channels=_channels, img_size=518,
    )

# Tiny variants (random init) for tests. Depth 8 (not 4) so the V1 (last four: 4-7) and V2 (evenly spaced: 1, 3,
# 5, 7) rules pick different blocks; layer scale 1 (not timm's 1e-5) so random blocks change the output.
for _version in (1, 2):
    register_backbone(
        f"depth_anything_v{_version}_test", family="depth_anything", builder=DepthAnythingBackbone, tiny=True,
        description=f"tiny Depth Anything V{_version} (ViT/14 + DPT) for tests",
        arch="vit_small_patch14_dinov2", version=_version, features=16, dpt_out_channels=(8, 16, 32, 32),
        img_size=56, embed_dim=32, depth=8, num_heads=2, init_values=1.0,
    )
