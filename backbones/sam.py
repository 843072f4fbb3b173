"""SAM image encoders: the ViT-B/L/H of Segment Anything (Kirillov et al., 2023, arXiv:2304.02643).

The upstream ``segment_anything.modeling.ImageEncoderViT`` (a ViTDet-style plain ViT: windowed attention
with a few global blocks, decomposed relative position embeddings, and a conv neck to 256 channels) is
built with the hyper-parameters of ``segment_anything/build_sam.py``. The feature is the neck output
``(B, out_chans, H/16, W/16)``; ``out_indices`` may add raw block outputs ``(B, embed_dim, H/16, W/16)``
in front of it.

Sizes: the official weights are trained at 1024 px (a 64 x 64 grid). ``img_size`` is the size the model's
absolute position embedding and global-attention relative position tables are built for; when weights load
they are resampled to it (``pos_embed`` bicubic, ``rel_pos_*`` by 1-D linear interpolation as SAM's own
``get_rel_pos``). Inputs of other sizes resample ``pos_embed`` on the fly; SAM interpolates the relative
tables itself and pads windows itself, so odd and non-square grids work after padding to the patch.

Weights: the official full-SAM files (``sam_vit_b_01ec64.pth``, ...), keys ``image_encoder.*`` (kept),
``prompt_encoder.*`` and ``mask_decoder.*`` (dropped). A file holding only the image encoder's keys works too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vadapt.weights import WeightsSource, unwrap_state_dict

from .base import Backbone, register_backbone

#: parts of a full SAM checkpoint that are not the image encoder (dropped when loading)
_SAM_OTHER_PARTS = ("prompt_encoder.", "mask_decoder.")
_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/{}"


class SamBackbone(Backbone):
    """SAM's ``ImageEncoderViT`` as a frozen feature extractor (see module docstring)."""

    stem_conv = "patch_embed.proj"
    block_layout = "grid"  # SAM blocks take (B, H, W, C)

    def __init__(
        self,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
        img_size: int = 1024,
        patch_size: int = 16,
        window_size: int = 14,
        out_chans: int = 256,
        mlp_ratio: float = 4.0,
        out_indices: Sequence[int] = (),
    ) -> None:
        super().__init__()
        from functools import partial

        from segment_anything.modeling import ImageEncoderViT

        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} must be a multiple of the patch size {patch_size}")
        self.model = ImageEncoderViT(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            out_chans=out_chans,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=window_size,
            global_attn_indexes=tuple(global_attn_indexes),
        )
        if not all(-depth <= i < depth for i in out_indices):
            raise ValueError(f"out_indices {tuple(out_indices)} out of range for {depth} blocks")
        self.out_indices = tuple(sorted({i % depth for i in out_indices}))
        self.img_size = img_size
        self.patch_size = self.pad_multiple = patch_size
        self.out_channels = [embed_dim] * len(self.out_indices) + [out_chans]
        self.strides = [patch_size] * (len(self.out_indices) + 1)

    @property
    def blocks(self) -> nn.ModuleList:
        """The ``ImageEncoderViT`` blocks (windowed, or global at ``global_attn_indexes``); each maps a ``(B, h, w, C)``
        grid to the same shape."""
        return self.model.blocks

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, bands, H, W)`` padded to the patch -> a raw block map ``(B, embed_dim, H/p, W/p)`` per ``out_indices``
        entry, then the neck output ``(B, out_chans, H/p, W/p)`` last."""
        m = self.model
        x = m.patch_embed(x)  # (B, h, w, C)
        if m.pos_embed is not None:
            x = x + _resample_pos_embed(m.pos_embed, x.shape[1:3])
        last = len(m.blocks) - 1
        wanted = sorted(set(self.out_indices) | {last})
        outs = dict(zip(wanted, self.run_blocks(x, wanted)))
        maps = [outs[i].permute(0, 3, 1, 2) for i in self.out_indices]
        maps.append(m.neck(outs[last].permute(0, 3, 1, 2)))
        return maps

    def checkpoint_filter(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """An official SAM file (or an image-encoder-only state dict) -> ``self.model``'s keys: ``image_encoder.``
        stripped, prompt encoder and mask decoder dropped, ``pos_embed`` / ``rel_pos_*`` of another size resampled to
        this ``img_size``. Other keys are kept so that the strict load names them."""
        state_dict = unwrap_state_dict(state_dict)
        if any(k.startswith("image_encoder.") for k in state_dict):
            # a full SAM checkpoint: keep the image encoder, drop the prompt encoder and mask decoder;
            # anything else stays so that load_strict names it
            state_dict = {
                k.removeprefix("image_encoder."): v
                for k, v in state_dict.items()
                if not k.startswith(_SAM_OTHER_PARTS)
            }
        own = self.model.state_dict()
        out = {}
        for key, value in state_dict.items():
            target = own.get(key)
            if target is not None and value.shape != target.shape and value.ndim == target.ndim:
                if key == "pos_embed" and value.shape[-1] == target.shape[-1]:
                    value = _resample_pos_embed(value, target.shape[1:3])
                elif key.endswith(("rel_pos_h", "rel_pos_w")) and value.shape[1] == target.shape[1]:
                    value = _resample_rel_pos(value, target.shape[0])
            out[key] = value
        return out


def _resample_pos_embed(pos_embed: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bicubic resampling of a ``(1, H, W, C)`` absolute position embedding to ``size`` (timm's helper)."""
    if tuple(pos_embed.shape[1:3]) == tuple(size):
        return pos_embed
    from timm.layers import resample_abs_pos_embed_nhwc

    return resample_abs_pos_embed_nhwc(pos_embed, [int(s) for s in size])


def _resample_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """1-D linear resampling of a ``(2S - 1, head_dim)`` relative position table, as SAM's ``get_rel_pos``."""
    resized = F.interpolate(rel_pos.float().T[None], size=length, mode="linear")
    return resized[0].T.to(rel_pos.dtype).contiguous()


_SAM_ARCHS = {
    # size: (embed_dim, depth, num_heads, global_attn_indexes, weights file), as segment_anything/build_sam.py
    "b": (768, 12, 12, (2, 5, 8, 11), "sam_vit_b_01ec64.pth"),
    "l": (1024, 24, 16, (5, 11, 17, 23), "sam_vit_l_0b3195.pth"),
    "h": (1280, 32, 16, (7, 15, 23, 31), "sam_vit_h_4b8939.pth"),
}

for _size, (_dim, _depth, _heads, _global, _file) in _SAM_ARCHS.items():
    register_backbone(
        f"sam_vit_{_size}",
        family="sam",
        builder=SamBackbone,
        weights=WeightsSource(_file, url=_SAM_URL.format(_file)),
        description=f"Segment Anything ViT-{_size.upper()} image encoder, official SA-1B weights (1024 px)",
        embed_dim=_dim,
        depth=_depth,
        num_heads=_heads,
        global_attn_indexes=_global,
        img_size=1024,
    )

# Tiny variant of the same architecture (random init) for tests.
register_backbone(
    "sam_test", family="sam", builder=SamBackbone, tiny=True,
    description="tiny SAM-architecture image encoder for tests",
    embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=4, out_chans=32, img_size=64,
)


def build_sam_prompt_decoder(backbone: SamBackbone, weights: str | None = None) -> tuple[nn.Module, nn.Module]:
    """SAM's ``PromptEncoder`` and ``MaskDecoder`` sized for ``backbone`` (as ``segment_anything/build_sam.py``).

    ``weights`` is ``None`` (random init), ``"pretrained"`` or a path to a full SAM checkpoint; its
    ``prompt_encoder.*`` and ``mask_decoder.*`` keys are loaded strictly (missing keys are an error: a file
    holding only the image encoder cannot give the decoder).
    """
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    from vadapt.weights import load_strict, read_state_dict, resolve_weights

    from .base import BACKBONES

    dim = backbone.out_channels[-1]
    grid = backbone.img_size // backbone.patch_size
    prompt_encoder = PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                   input_image_size=(backbone.img_size, backbone.img_size), mask_in_chans=16)
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=8 * dim, num_heads=8),
        transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=dim,
    )  # official SAM: dim 256, mlp_dim 2048, iou_head_hidden_dim 256
    entry = BACKBONES.get(backbone.name) if backbone.name else None
    path = resolve_weights(weights, entry.weights if entry else None, backbone.name or "sam")
    if path is not None:
        state = unwrap_state_dict(read_state_dict(str(path)))
        for prefix, module in (("prompt_encoder.", prompt_encoder), ("mask_decoder.", mask_decoder)):
            part = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            load_strict(module, part, source=f"{path} ({prefix}*)")
    return prompt_encoder, mask_decoder
