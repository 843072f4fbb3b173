"""SAM 2 / SAM 2.1 image encoders: Hiera-T/S/B+/L with an FPN neck (Ravi et al., 2024, arXiv:2408.00714).

The encoder is built from the sam2 package's own YAML configs (``sam2/configs/sam2/sam2_hiera_*.yaml``,
``sam2/configs/sam2.1/sam2.1_hiera_*.yaml``, entry ``model.image_encoder``) with ``hydra.utils.instantiate``,
so ``self.model`` is sam2's ``ImageEncoder`` (``trunk`` = Hiera, ``neck`` = FpnNeck) and its keys are the
checkpoint's ``image_encoder.*`` keys.

Features are the neck's ``backbone_fpn`` maps (``d_model`` = 256 channels for the real configs), high
resolution first, at their true strides: the trunk's stage strides (4, 8, 16, 32) minus the ``scalp`` lowest
resolutions (the real configs have ``scalp: 1``, giving strides 4, 8, 16). The neck's sine position encodings
(``vision_pos_enc``, used only by SAM 2's memory attention) are not computed.

Sizes: Hiera resamples its background position embedding to every input, and tiles a window embedding over
the stride-4 grid, so inputs are padded to ``4 * lcm(window_spec[0], q_stride ** q_pool)`` pixels (32 for all
real configs); any odd or non-square size works.

Weights: the official files (``sam2_hiera_tiny.pt``, ``sam2.1_hiera_large.pt``, ...), holding
``{"model": state_dict}`` with the image encoder under ``image_encoder.*``; the memory and mask-decoder
parts are dropped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vadapt.weights import WeightsSource, unwrap_state_dict

from .base import Backbone, register_backbone

#: top-level modules / parameters of ``SAM2Base`` that are not the image encoder (dropped when loading)
_SAM2_OTHER_PARTS = frozenset({
    "memory_attention", "memory_encoder", "sam_mask_decoder", "sam_prompt_encoder", "obj_ptr_proj",
    "obj_ptr_tpos_proj", "mask_downsample", "maskmem_tpos_enc", "no_mem_embed", "no_mem_pos_enc",
    "no_obj_ptr", "no_obj_embed_spatial",
})


def _sam2_config_dir() -> Path:
    """The ``configs`` folder inside the installed sam2 package, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("sam2")
    if spec is None or spec.origin is None:
        raise ImportError("The sam2 package is not installed (pip install sam2)")
    return Path(spec.origin).parent / "configs"


def load_image_encoder_config(config: str, overrides: dict[str, Any] | None = None) -> Any:
    """``model.image_encoder`` of a sam2 YAML config (path relative to ``sam2/configs``), with overrides."""
    from omegaconf import OmegaConf

    path = _sam2_config_dir() / config
    if not path.is_file():
        raise FileNotFoundError(f"sam2 config {config!r} not found at {path}")
    cfg = OmegaConf.load(path).model.image_encoder
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.create(overrides))
    return cfg


class Sam2HieraBackbone(Backbone):
    """SAM 2's Hiera ``ImageEncoder`` as a frozen multi-scale feature extractor (see module docstring)."""

    stem_conv = "trunk.patch_embed.proj"
    block_layout = "grid"  # Hiera blocks take (B, H, W, C)

    def __init__(self, config: str, overrides: dict[str, Any] | None = None, img_size: int | None = None) -> None:
        """``img_size`` is accepted for a uniform task config and ignored: Hiera resamples its position
        embedding to every input size by itself, so there is nothing to size in advance."""
        super().__init__()
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        if img_size is not None:
            import warnings

            warnings.warn(f"img_size={img_size} is ignored by SAM 2 backbones (Hiera adapts to any input size)",
                          stacklevel=2)

        cfg = load_image_encoder_config(config, overrides)
        # The neck's sine position encoding is never called here; don't let it pre-fill a CUDA cache.
        OmegaConf.update(cfg, "neck.position_encoding.warmup_cache", False, force_add=True)
        self.model = instantiate(cfg, _convert_="all")
        self.config = config

        trunk, neck = self.model.trunk, self.model.neck
        # Hiera collects the output of every stage end (or only the last one without return_interm_layers)
        ends = list(trunk.stage_ends)
        self.trunk_out_indices = ends if trunk.return_interm_layers else ends[-1:]
        q_stride = trunk.q_stride[0] if trunk.q_stride else 1
        patch_stride = trunk.patch_embed.proj.stride[0]
        stage_strides = [
            patch_stride * q_stride ** sum(b <= end for b in trunk.q_pool_blocks)
            for end in self.trunk_out_indices
        ]
        levels = len(stage_strides) - self.model.scalp
        neck_stride = neck.convs[0].conv.stride[0]
        self.strides = [s * neck_stride for s in stage_strides[:levels]]
        self.out_channels = [neck.d_model] * levels
        self.patch_size = patch_stride
        # stride-4 grid: a multiple of the first window (window pos-embed tiling) and even at every q-pooling
        pooling = q_stride ** len(trunk.q_pool_blocks)
        self.pad_multiple = patch_stride * math.lcm(trunk.window_spec[0], pooling)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.trunk.blocks

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        trunk = self.model.trunk
        x = trunk.patch_embed(x)  # (B, h, w, C)
        x = x + trunk._get_pos_embed(x.shape[1:3])
        feats = [f.permute(0, 3, 1, 2) for f in self.run_blocks(x, self.trunk_out_indices)]
        feats = self._fpn(feats)
        if self.model.scalp > 0:
            feats = feats[: -self.model.scalp]  # as ImageEncoder.forward: drop the lowest resolutions
        return feats

    def _fpn(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """``FpnNeck.forward`` without the position encodings (identical feature maps)."""
        neck = self.model.neck
        out: list[torch.Tensor] = [xs[0]] * len(neck.convs)
        n = len(neck.convs) - 1
        prev = None
        for i in range(n, -1, -1):
            lateral = neck.convs[n - i](xs[i])
            if i in neck.fpn_top_down_levels and prev is not None:
                top_down = F.interpolate(
                    prev.to(dtype=torch.float32),
                    scale_factor=2.0,
                    mode=neck.fpn_interp_model,
                    align_corners=None if neck.fpn_interp_model == "nearest" else False,
                    antialias=False,
                )
                prev = lateral + top_down
                if neck.fuse_type == "avg":
                    prev = prev / 2
            else:
                prev = lateral
            out[i] = prev
        return out

    def checkpoint_filter(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state_dict = unwrap_state_dict(state_dict)
        if not any(k.startswith("image_encoder.") for k in state_dict):
            return state_dict  # already an image-encoder-only state dict
        # keep the image encoder, drop the known SAM 2 parts; anything else stays so load_strict names it
        return {
            k.removeprefix("image_encoder."): v
            for k, v in state_dict.items()
            if k.split(".", 1)[0] not in _SAM2_OTHER_PARTS
        }


_SAM2_URLS = {
    "sam2": "https://dl.fbaipublicfiles.com/segment_anything_2/072824/{}",
    "sam2.1": "https://dl.fbaipublicfiles.com/segment_anything_2/092824/{}",
}
_SAM2_SIZES = {"t": "tiny", "s": "small", "b+": "base_plus", "l": "large"}

for _version, _url in _SAM2_URLS.items():
    for _short, _long in _SAM2_SIZES.items():
        _file = f"{_version}_hiera_{_long}.pt"
        register_backbone(
            f"{_version}_hiera_{_short}",
            family="sam2",
            builder=Sam2HieraBackbone,
            weights=WeightsSource(_file, url=_url.format(_file)),
            description=f"SAM {_version[3:]} Hiera-{_short.upper()} image encoder (trunk + FPN neck), "
            "official SA-V / SA-1B weights",
            config=f"{_version}/{_version}_hiera_{_short}.yaml",
        )

# Tiny variant of the same classes (random init) for tests: Hiera with 1, 1, 2, 1 blocks per stage
# (a global-attention block must not be a q-pooling stage start: upstream divides by its window size 0).
register_backbone(
    "sam2_test", family="sam2", builder=Sam2HieraBackbone, tiny=True,
    description="tiny SAM 2-architecture Hiera image encoder for tests",
    config="sam2.1/sam2.1_hiera_t.yaml",
    overrides={
        "trunk": {
            "embed_dim": 16, "num_heads": 1, "stages": [1, 1, 2, 1], "global_att_blocks": [3],
            "window_spec": [4, 2, 4, 2], "window_pos_embed_bkg_spatial_size": [4, 4],
        },
        "neck": {
            "d_model": 32, "backbone_channel_list": [128, 64, 32, 16],
            "position_encoding": {"num_pos_feats": 32},
        },
    },
)
