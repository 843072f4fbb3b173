"""CLIP ViT visual towers from open_clip (Radford et al., 2021, arXiv:2103.00020; LAION-2B weights).

Only the vision tower is built (open_clip's ``VisionTransformer`` from the model config; no text tower).
open_clip's own forward pools, so dense features come from our forward: ``conv1`` -> tokens -> class token
-> position embedding (resampled to the actual grid) -> ``ln_pre`` -> the ``out_indices`` residual blocks
-> class token dropped and ``ln_post`` applied to each selected output -> maps ``(B, width, H/p, W/p)`` at
stride ``p``. ``ln_post`` is the tower's final norm (CLIP applies it before pooling); applying it to every
level, as timm does with ``norm`` for ViTs, keeps the levels on one scale. The projection ``proj`` is kept
(so checkpoints load strictly) but unused.

Weights: open_clip's ``open_clip_pytorch_model.bin`` (a full CLIP state dict). ``checkpoint_filter`` keeps
``visual.*`` without the prefix, drops the text tower and resamples ``positional_embedding`` to the grid of
``img_size``; any other key is left in so the strict load names it.

:class:`OpenClipTextTower` builds the text transformer instead, for Any2Point's CLIP variant (1D positions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from vadapt.bands import RGB
from vadapt.weights import WeightsSource, strip_prefix, unwrap_state_dict

from .base import Backbone, register_backbone, resolve_out_indices

# open_clip.constants (literals here so that importing this module does not import open_clip)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)

#: keys of a full CLIP state dict that belong to the text tower or the contrastive head
TEXT_KEYS = ("positional_embedding", "text_projection", "logit_scale", "logit_bias", "attn_mask")
TEXT_PREFIXES = ("token_embedding.", "transformer.", "ln_final.")


class OpenClipViTBackbone(Backbone):
    """The visual tower of an open_clip ViT as a frozen multi-level feature extractor (module docstring)."""

    stem_conv = "conv1"
    rgb_mean = OPENAI_CLIP_MEAN
    rgb_std = OPENAI_CLIP_STD
    block_layout = "tokens"
    # Each block's nn.MultiheadAttention is swapped for FusedQKVAttention (same maths, same weights), whose
    # fused ``qkv`` and ``out_proj`` are plain Linears that peft adapts like any ViT's.
    lora_targets = ("qkv",)
    adapter_targets = ("mlp",)
    num_prefix_tokens = 1  # the class token

    def __init__(
        self,
        arch: str = "ViT-B-16",
        img_size: int | tuple[int, int] | None = None,
        out_indices: Sequence[int] | None = None,
        quick_gelu: bool = False,
        rgb_mean: Sequence[float] | None = None,
        rgb_std: Sequence[float] | None = None,
        **vision_cfg: Any,
    ) -> None:
        """
        Args:
            arch: open_clip model config name (``ViT-B-16``, ``ViT-L-14``); its ``vision_cfg`` is used.
            img_size: the explicit position-embedding size (weights are resampled to it when they load);
                default the config's ``image_size``.
            out_indices: blocks whose outputs become feature maps; default 4 evenly spaced ending with the last.
            quick_gelu: OpenAI's original weights use QuickGELU; the LAION ones use nn.GELU.
            rgb_mean, rgb_std: normalisation the weights expect (default OpenAI CLIP's).
            vision_cfg: overrides of the config's ``vision_cfg`` (``width``, ``layers``, ``head_width``, ...).
        """
        super().__init__()
        import open_clip
        from open_clip.model import _build_vision_tower

        config = open_clip.get_model_config(arch)
        if config is None:
            raise ValueError(f"open_clip has no model config {arch!r}")
        cfg = {**config["vision_cfg"], **vision_cfg}
        if img_size is not None:
            cfg["image_size"] = img_size
        if isinstance(cfg.get("layers"), (tuple, list)) or cfg.get("timm_model_name"):
            raise ValueError(f"{arch} is not a plain open_clip VisionTransformer")
        quick_gelu = quick_gelu or config.get("quick_gelu", False)
        self.model = _build_vision_tower(config["embed_dim"], cfg, quick_gelu=quick_gelu)
        for block in self.model.transformer.resblocks:
            block.attn = FusedQKVAttention.from_multihead(block.attn)
        if rgb_mean is not None:
            self.rgb_mean = tuple(rgb_mean)
        if rgb_std is not None:
            self.rgb_std = tuple(rgb_std)

        self.out_indices = resolve_out_indices(out_indices, len(self.model.transformer.resblocks))
        patch = self.model.patch_size
        if patch[0] != patch[1]:
            raise ValueError(f"non-square patches {patch} are not supported")
        self.patch_size = self.pad_multiple = patch[0]
        width = self.model.conv1.out_channels
        self.out_channels = [width] * len(self.out_indices)
        self.strides = [self.patch_size] * len(self.out_indices)

    @property
    def blocks(self) -> nn.ModuleList:
        """open_clip's ``transformer.resblocks``, on ``(B, 1 + h*w, C)`` tokens, class token first (``(1 + h*w, B, C)``
        for a sequence-first transformer)."""
        return self.model.transformer.resblocks

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, bands, H, W)`` padded to the patch -> one map ``(B, width, H/p, W/p)`` per ``out_indices`` block: its
        output through ``ln_post``, class token dropped. Sets ``token_grid``."""
        from timm.layers import resample_abs_pos_embed

        m = self.model
        x = m.conv1(x)  # (B, C, h, w)
        batch, width, h, w = x.shape
        self.token_grid = (h, w)
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, C)
        cls = m.class_embedding.to(x.dtype).view(1, 1, -1).expand(batch, -1, -1)
        x = torch.cat([cls, x], dim=1)
        pos = m.positional_embedding
        if (h, w) != tuple(m.grid_size):
            pos = resample_abs_pos_embed(pos[None], [h, w], old_size=list(m.grid_size), num_prefix_tokens=1)[0]
        x = m.ln_pre(x + pos.to(x.dtype))  # patch dropout (training-only, off in CLIP configs) is skipped
        batch_first = getattr(m.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)  # blocks built for (N, B, C)
        outs = self.run_blocks(x, self.out_indices)
        maps = []
        for out in outs:
            if not batch_first:
                out = out.transpose(0, 1)
            out = m.ln_post(out)[:, 1:]
            maps.append(out.transpose(1, 2).reshape(batch, width, h, w))
        return maps

    def checkpoint_filter(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A full open_clip CLIP state dict -> ``self.model``'s keys (see the module docstring): ``visual.*`` without
        the prefix and with fused ``qkv`` names, text tower dropped, ``positional_embedding`` resampled to the
        ``img_size`` grid."""
        from timm.layers import resample_abs_pos_embed

        state_dict = unwrap_state_dict(state_dict)
        if state_dict and all(k.startswith("module.") for k in state_dict):  # open_clip training checkpoints
            state_dict = strip_prefix(state_dict, "module.")
        out = {}
        for key, value in state_dict.items():
            if key.startswith("visual."):
                out[_to_fused_qkv_key(key[len("visual."):])] = value
            elif key in TEXT_KEYS or key.startswith(TEXT_PREFIXES):
                continue
            else:
                out[key] = value  # unknown: the strict load reports it
        pos = out.get("positional_embedding")
        own = self.model.positional_embedding
        if isinstance(pos, torch.Tensor) and pos.ndim == 2 and pos.shape[1] == own.shape[1] and pos.shape != own.shape:
            side = math.isqrt(pos.shape[0] - 1)
            if side * side == pos.shape[0] - 1:  # open_clip grids are square; anything else fails the load
                out["positional_embedding"] = resample_abs_pos_embed(
                    pos[None].float(), list(self.model.grid_size), old_size=[side, side], num_prefix_tokens=1
                )[0].to(pos.dtype)
        return out


class OpenClipTextTower(Backbone):
    """The text transformer of an open_clip CLIP model, frozen, as the 1D base model of Any2Point's CLIP variant.

    Built from the model config's ``text_cfg`` (``ViT-L-14``: width 768, 12 blocks, 12 heads, 77 positions);
    ``model`` is open_clip's ``TextTransformer`` with each block's ``nn.MultiheadAttention`` swapped for
    :class:`FusedQKVAttention` (same weights). Any2Point runs the blocks on point tokens and reads the 77-row
    ``model.positional_embedding``; the token embedding and ``text_projection`` are kept so CLIP files load
    strictly, but unused. Not a registry entry of its own: it has no image input (``set_bands`` is a no-op for
    RGB, an error otherwise).

    Args:
        arch: open_clip model config name (``ViT-L-14``).
        quick_gelu: OpenAI's original weights use QuickGELU (as in Any2Point's ``ViT-L-14.pt``).
        text_cfg: overrides of the config's ``text_cfg`` (``width``, ``layers``, ``heads``, ``vocab_size``, ...).
    """

    block_layout = "tokens"
    lora_targets = ("qkv",)
    adapter_targets = ("mlp",)

    def __init__(self, arch: str = "ViT-L-14", quick_gelu: bool = False, **text_cfg: Any) -> None:
        super().__init__()
        import open_clip
        from open_clip.model import _build_text_tower

        config = open_clip.get_model_config(arch)
        if config is None:
            raise ValueError(f"open_clip has no model config {arch!r}")
        cfg = {**config["text_cfg"], **text_cfg}
        if cfg.get("hf_model_name"):
            raise ValueError(f"{arch}'s text tower is a Hugging Face model, not an open_clip TextTransformer")
        quick_gelu = quick_gelu or config.get("quick_gelu", False)
        self.model = _build_text_tower(config["embed_dim"], cfg, quick_gelu=quick_gelu)
        for block in self.model.transformer.resblocks:
            block.attn = FusedQKVAttention.from_multihead(block.attn)
        self.out_channels = [self.model.width]

    @property
    def blocks(self) -> nn.ModuleList:
        """The text transformer's ``resblocks`` (Any2Point calls them on point tokens ``(B, 1 + G, C)``, without the
        causal mask)."""
        return self.model.transformer.resblocks

    def checkpoint_filter(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A full CLIP state dict -> the text tower's keys (the visual tower and the logit scale dropped)."""
        state_dict = unwrap_state_dict(state_dict)
        if state_dict and all(k.startswith("module.") for k in state_dict):
            state_dict = strip_prefix(state_dict, "module.")
        drop = ("logit_scale", "logit_bias", "attn_mask")
        return {
            _to_fused_qkv_key(k): v for k, v in state_dict.items() if not k.startswith("visual.") and k not in drop
        }

    def set_bands(self, bands: Sequence[str], init: Any = "copy") -> None:
        """A no-op for RGB (``create_backbone``'s default); other bands raise ``ValueError`` (no image input)."""
        if tuple(bands) != RGB:
            raise ValueError("a CLIP text tower has no image bands to set")


class FusedQKVAttention(nn.Module):
    """Self-attention with the call signature of ``nn.MultiheadAttention`` and ``qkv`` / ``out_proj`` Linears.

    ``nn.MultiheadAttention`` keeps its fused projection as a bare ``in_proj_weight`` and reads ``out_proj``'s
    weight directly, so peft can only adapt it by merging into the frozen weight in place at every forward
    (the frozen weight drifts by rounding). This module computes the same attention with ordinary Linears.
    Shapes: ``(B, N, C) -> (B, N, C)`` (``(N, B, C)`` if the original was not batch-first).
    """

    def __init__(self, dim: int, num_heads: int, batch_first: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.batch_first = batch_first
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    @classmethod
    def from_multihead(cls, mha: nn.MultiheadAttention) -> FusedQKVAttention:
        """A module computing what ``mha`` computes, its weights copied into ``qkv`` / ``out_proj``. Raises
        ``ValueError`` unless ``mha`` is plain self-attention with one fused, biased input projection (no ``bias_k``
        / ``bias_v``)."""
        if not mha._qkv_same_embed_dim or mha.in_proj_bias is None or mha.bias_k is not None:
            raise ValueError("only plain self-attention nn.MultiheadAttention (fused, with bias) is supported")
        new = cls(mha.embed_dim, mha.num_heads, mha.batch_first)
        with torch.no_grad():
            new.qkv.weight.copy_(mha.in_proj_weight)
            new.qkv.bias.copy_(mha.in_proj_bias)
            new.out_proj.load_state_dict(mha.out_proj.state_dict())
        return new

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                need_weights: bool = False, attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        """``query`` ``(B, N, C)`` (``(N, B, C)`` if not batch-first) -> ``(out, None)`` with ``out`` of the same shape,
        the tuple ``nn.MultiheadAttention`` returns.

        ``key`` / ``value`` must be ``None`` or ``query`` itself (else ``ValueError``); ``need_weights`` is ignored
        and no weights are returned. ``attn_mask`` goes to ``scaled_dot_product_attention`` as it is: a float mask is
        added to the logits as in ``nn.MultiheadAttention``, but a boolean mask there means the opposite (``True`` =
        may attend).
        """
        import torch.nn.functional as F

        if key is not None and key is not query or value is not None and value is not query:
            raise ValueError("FusedQKVAttention does self-attention only")
        x = query if self.batch_first else query.transpose(0, 1)
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = self.out_proj(out.transpose(1, 2).reshape(batch, tokens, dim))
        return (out if self.batch_first else out.transpose(0, 1)), None


def _to_fused_qkv_key(key: str) -> str:
    """open_clip's ``...attn.in_proj_weight`` / ``in_proj_bias`` -> ``...attn.qkv.weight`` / ``qkv.bias``."""
    if key.endswith(".attn.in_proj_weight"):
        return key[: -len("in_proj_weight")] + "qkv.weight"
    if key.endswith(".attn.in_proj_bias"):
        return key[: -len("in_proj_bias")] + "qkv.bias"
    return key


HF_WEIGHTS = "open_clip_pytorch_model.bin"  # open_clip.constants.HF_WEIGHTS_NAME

register_backbone(
    "clip_vit_b16",
    family="clip",
    builder=OpenClipViTBackbone,
    weights=WeightsSource(HF_WEIGHTS, hub_id="laion/CLIP-ViT-B-16-laion2B-s34B-b88K"),
    description="CLIP ViT-B/16 visual tower (open_clip), LAION-2B weights (laion2b_s34b_b88k)",
    arch="ViT-B-16",
    img_size=224,
)
register_backbone(
    "clip_vit_l14",
    family="clip",
    builder=OpenClipViTBackbone,
    weights=WeightsSource(HF_WEIGHTS, hub_id="laion/CLIP-ViT-L-14-laion2B-s32B-b82K"),
    description="CLIP ViT-L/14 visual tower (open_clip), LAION-2B weights (laion2b_s32b_b82k)",
    arch="ViT-L-14",
    img_size=224,
    # open_clip's pretrained table: these weights were trained with Inception normalisation, not OpenAI's
    rgb_mean=INCEPTION_MEAN,
    rgb_std=INCEPTION_STD,
)

# Tiny variant of the same architecture (random init) for tests.
register_backbone(
    "clip_test", family="clip", builder=OpenClipViTBackbone, tiny=True,
    description="tiny CLIP ViT/16 visual tower for tests",
    arch="ViT-B-16", img_size=64, width=32, layers=4, head_width=16, patch_size=16,
)
