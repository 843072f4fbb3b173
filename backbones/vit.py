"""Plain ViTs from timm: DINOv2 (Oquab et al., 2023, arXiv:2304.07193) and supervised ViT-B/16.

Features are the outputs of ``out_indices`` blocks (after the final norm, prefix tokens dropped) as maps
``(B, embed_dim, H/p, W/p)``, all at stride ``p`` (14 or 16). Position embeddings are resampled to the grid
of ``img_size`` when weights load (timm's ``checkpoint_filter_fn``) and, for other input sizes, on the fly
(timm ``dynamic_img_size``), so any input size works after padding to the patch.

Weights: the official DINOv2 files (``dinov2_vitb14_pretrain.pth``, facebookresearch key format, converted
by timm's filter) or timm's own ``model.safetensors``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from vadapt.weights import WeightsSource, unwrap_state_dict

from .base import Backbone, register_backbone, resolve_out_indices


class TimmViTBackbone(Backbone):
    """A timm ``VisionTransformer`` as a frozen multi-level feature extractor."""

    stem_conv = "patch_embed.proj"

    def __init__(
        self,
        arch: str,
        img_size: int | tuple[int, int] = 224,
        out_indices: Sequence[int] | None = None,
        **arch_kwargs: Any,
    ) -> None:
        super().__init__()
        import timm

        self.model = timm.create_model(
            arch, pretrained=False, num_classes=0, img_size=img_size, dynamic_img_size=True, **arch_kwargs
        )
        self.out_indices = resolve_out_indices(out_indices, len(self.model.blocks))
        self.num_prefix_tokens = self.model.num_prefix_tokens
        self.patch_size = self.pad_multiple = self.model.patch_embed.patch_size[0]
        self.out_channels = [self.model.embed_dim] * len(self.out_indices)
        self.strides = [self.patch_size] * len(self.out_indices)

    @property
    def blocks(self) -> nn.ModuleList:
        """timm's transformer blocks, on ``(B, P + h*w, C)`` tokens with ``P = num_prefix_tokens`` (class token,
        registers) first."""
        return self.model.blocks

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, bands, H, W)`` padded to the patch -> one map ``(B, embed_dim, H/p, W/p)`` per ``out_indices`` block:
        its output after the final norm, prefix tokens dropped. Sets ``token_grid``."""
        m = self.model
        tokens = m.patch_embed(x)  # (B, h, w, C) with dynamic_img_size
        h, w = self.token_grid = tuple(tokens.shape[1:3])
        tokens = m.norm_pre(m.patch_drop(m._pos_embed(tokens)))
        outs = self.run_blocks(tokens, self.out_indices)
        maps = []
        for out in outs:
            out = m.norm(out)[:, m.num_prefix_tokens :]
            maps.append(out.transpose(1, 2).reshape(out.shape[0], -1, h, w))
        return maps

    def checkpoint_filter(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """An official DINOv2 ``.pth`` or timm ``model.safetensors`` state dict -> ``self.model``'s keys through timm's
        ``checkpoint_filter_fn`` (which also resamples ``pos_embed`` to ``img_size``); the classifier ``head.*`` is
        dropped."""
        from timm.models.vision_transformer import checkpoint_filter_fn

        state_dict = unwrap_state_dict(state_dict)
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("head.")}  # classifier: unused
        return checkpoint_filter_fn(state_dict, self.model)


_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/{0}/{0}_pretrain.pth"

for _size, _short in (("small", "s"), ("base", "b"), ("large", "l"), ("giant", "g")):
    register_backbone(
        f"vit_{_size}_patch14_dinov2",
        family="dinov2",
        builder=TimmViTBackbone,
        weights=WeightsSource(
            f"dinov2_vit{_short}14_pretrain.pth", url=_DINOV2_URL.format(f"dinov2_vit{_short}14")
        ),
        description=f"DINOv2 ViT-{_short.upper()}/14 (timm), official LVD-142M weights",
        arch=f"vit_{_size}_patch14_dinov2",
        img_size=518,
    )

register_backbone(
    "vit_base_patch16_224",
    family="vit",
    builder=TimmViTBackbone,
    weights=WeightsSource("model.safetensors", hub_id="timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"),
    description="ViT-B/16 (timm), AugReg ImageNet-21k weights",
    arch="vit_base_patch16_224",
    img_size=224,
)

# Tiny variants of the same architectures (random init) for tests.
register_backbone(
    "dinov2_test", family="dinov2", builder=TimmViTBackbone, tiny=True,
    description="tiny DINOv2-architecture ViT (patch 14) for tests",
    arch="vit_small_patch14_dinov2", img_size=56, embed_dim=32, depth=4, num_heads=2,
    init_values=1.0,  # layer scale 1 (not timm's 1e-5) so random blocks change the output measurably
)
register_backbone(
    "vit_patch16_test", family="vit", builder=TimmViTBackbone, tiny=True,
    description="tiny ViT/16 for tests",
    arch="vit_base_patch16_224", img_size=64, embed_dim=32, depth=4, num_heads=2,
)
