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
        """Hiera's blocks over all stages, in order, on ``(B, h, w, C)`` grids; a stage's first block may pool the grid
        by ``q_stride`` and widen ``C``."""
        return self.model.trunk.blocks

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, bands, H, W)`` padded to ``pad_multiple`` -> the FPN maps ``(B, d_model, H/s, W/s)`` at ``strides``,
        high resolution first (the ``scalp`` lowest resolutions dropped)."""
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
        """An official SAM 2 file -> the image encoder's keys (``image_encoder.`` stripped, memory / prompt / decoder
        parts dropped, unknown keys kept for the strict load to name); a dict without ``image_encoder.*`` keys is
        returned as it is."""
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


# ---- SAM 2 prompt encoder + mask decoder (image prompting) --------------------------------------------------

#: checkpoint name of each ``Sam2PromptParts`` part (``SAM2Base`` attribute names)
_SAM2_PROMPT_KEYS = {"prompt_encoder": "sam_prompt_encoder", "mask_decoder": "sam_mask_decoder",
                     "no_mem_embed": "no_mem_embed"}


class Sam2PromptParts(nn.Module):
    """SAM 2's prompt encoder, mask decoder and ``no_mem_embed``, for prompting on single images.

    Built by :func:`build_sam2_prompt_decoder`; the two methods reproduce ``SAM2ImagePredictor.set_image``
    (:meth:`image_features`) and ``SAM2ImagePredictor._predict`` (:meth:`decode`) on the maps of
    :meth:`Sam2HieraBackbone.forward_features`.

    Attributes:
        prompt_encoder: ``sam2.modeling.sam.prompt_encoder.PromptEncoder`` for ``img_size`` inputs
            (embedding grid ``img_size // 16``).
        mask_decoder: ``sam2.modeling.sam.mask_decoder.MaskDecoder``; with ``use_high_res_features`` it owns
            ``conv_s0`` / ``conv_s1``, the 1x1 projections of the stride-4 / stride-8 maps.
        no_mem_embed: ``(1, 1, C)``, added to the stride-16 map of every image (SAM 2's "no memory" token).
        use_high_res_features: whether the decoder takes the projected stride-4 / stride-8 maps.
        add_no_mem_embed: the config's ``directly_add_no_mem_embed`` (True for all official configs).
        img_size: side of the (square) input image the prompt coordinates refer to.
    """

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module, hidden_dim: int, img_size: int,
                 use_high_res_features: bool, add_no_mem_embed: bool = True) -> None:
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        nn.init.trunc_normal_(self.no_mem_embed, std=0.02)  # as SAM2Base
        self.use_high_res_features = use_high_res_features
        self.add_no_mem_embed = add_no_mem_embed
        self.img_size = img_size

    def image_features(self, fpn: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Image embedding and decoder high-res features from the backbone's FPN maps.

        Args:
            fpn: ``Sam2HieraBackbone.forward_features`` output, high resolution first: ``(B, C, 4g, 4g)``,
                ``(B, C, 2g, 2g)``, ``(B, C, g, g)`` (strides 4, 8, 16; ``g = img_size // 16``).

        Returns:
            ``embedding`` ``(B, C, g, g)``: the stride-16 map plus ``no_mem_embed``; and ``high_res``:
            ``[conv_s0(stride-4 map) (B, C/8, 4g, 4g), conv_s1(stride-8 map) (B, C/4, 2g, 2g)]``, or ``None``
            when the config does not use high-res features in the decoder.
        """
        embedding = fpn[-1]
        if self.add_no_mem_embed:
            embedding = embedding + self.no_mem_embed.view(1, -1, 1, 1)  # (1, 1, C) over channels
        if not self.use_high_res_features:
            return embedding, None
        if len(fpn) < 3:
            raise ValueError(f"SAM 2 high-res decoding needs 3 FPN maps (strides 4, 8, 16), got {len(fpn)}")
        high_res = [self.mask_decoder.conv_s0(fpn[-3]), self.mask_decoder.conv_s1(fpn[-2])]
        return embedding, high_res

    def decode(
        self,
        embedding: torch.Tensor,
        high_res: list[torch.Tensor] | None,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder, as ``SAM2ImagePredictor._predict`` (without a mask prompt).

        Args:
            embedding: ``(B, C, g, g)`` from :meth:`image_features` (B = 1 for one image and one prompt set;
                any B works when every prompt tensor has the same B, one prompt set per image).
            high_res: the second output of :meth:`image_features`.
            points: ``coords`` ``(B, P, 2)`` as (x, y) in pixels of the ``img_size`` x ``img_size`` input and
                ``labels`` ``(B, P)``: 1 foreground, 0 background, -1 padding.
            boxes: ``(B, 4)`` as (x0, y0, x1, y1) pixels; sent as two corner points (labels 2, 3) in front
                of ``points``, as sam2 does.
            multimask_output: three masks (decoder tokens 1-3) or one (token 0, or the dynamic stability
                fallback when the decoder was built with ``dynamic_multimask_via_stability`` and is in eval).

        Returns:
            ``low_res_logits`` ``(B, M, 4g, 4g)`` (M = 3 or 1; raw logits: ``_predict`` also clamps its
            returned low-res logits to [-32, 32]) and ``iou`` ``(B, M)`` (predicted IoU; passed through a
            sigmoid inside the decoder when the config has ``iou_prediction_use_sigmoid``).
        """
        grid = self.prompt_encoder.image_embedding_size
        if tuple(embedding.shape[-2:]) != tuple(grid):
            raise ValueError(f"image embedding {tuple(embedding.shape)} does not match the prompt encoder's "
                             f"{grid[0]}x{grid[1]} grid (img_size {self.img_size}; build with another img_size)")
        if points is not None:
            points = (points[0].float(), points[1].to(torch.int))
        if boxes is not None:
            corners = boxes.float().reshape(-1, 2, 2)
            corner_labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device).expand(len(corners), 2)
            if points is not None:
                points = (torch.cat([corners, points[0]], 1), torch.cat([corner_labels, points[1]], 1))
            else:
                points = (corners, corner_labels)
        sparse, dense = self.prompt_encoder(points=points, boxes=None, masks=None)
        low_res_logits, iou, _, _ = self.mask_decoder(
            image_embeddings=embedding,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            repeat_image=False,
            high_res_features=high_res,
        )
        return low_res_logits, iou


def load_sam2_model_config(config: str) -> Any:
    """``model`` section of a sam2 YAML config (path relative to ``sam2/configs``)."""
    from omegaconf import OmegaConf

    path = _sam2_config_dir() / config
    if not path.is_file():
        raise FileNotFoundError(f"sam2 config {config!r} not found at {path}")
    return OmegaConf.load(path).model


def build_sam2_prompt_decoder(
    backbone: Sam2HieraBackbone,
    weights: str | None = None,
    img_size: int = 1024,
    *,
    mask_decoder_extra_args: dict[str, Any] | None = None,
) -> Sam2PromptParts:
    """SAM 2's prompt encoder, mask decoder and ``no_mem_embed`` for ``backbone``, as ``SAM2Base._build_sam_heads``.

    The model-level options (``use_high_res_features_in_sam``, ``iou_prediction_use_sigmoid``,
    ``pred_obj_scores``, ``pred_obj_scores_mlp``, ``use_multimask_token_for_obj_ptr``,
    ``directly_add_no_mem_embed``, ``sam_mask_decoder_extra_args``) come from the backbone's sam2 YAML config;
    the width is the neck's ``d_model``; ``img_size`` replaces the config's ``image_size`` (prompt coordinates
    are pixels of an ``img_size`` square input, embedding grid ``img_size // 16``).

    Args:
        backbone: a SAM 2 backbone (``create_backbone("sam2.1_hiera_b+", ...)``).
        weights: ``None`` (random init), ``"pretrained"`` (the backbone entry's official file) or a path to an
            official SAM 2 checkpoint (``{"model": state_dict}``); its ``sam_prompt_encoder.*``,
            ``sam_mask_decoder.*`` and ``no_mem_embed`` keys are loaded strictly.
        img_size: input image side in pixels (a multiple of 16).
        mask_decoder_extra_args: ``MaskDecoder`` options over the config's ``sam_mask_decoder_extra_args``;
            ``sam2.build_sam.build_sam2`` (and so the official image predictor) adds
            ``dynamic_multimask_via_stability=True``, ``dynamic_multimask_stability_delta=0.05``,
            ``dynamic_multimask_stability_thresh=0.98`` by default (``apply_postprocessing``).

    Raises:
        vadapt.weights.WeightsMismatchError: the file lacks a prompt-decoder key (named) or does not fit.
    """
    from omegaconf import OmegaConf
    from sam2.modeling.sam.mask_decoder import MaskDecoder
    from sam2.modeling.sam.prompt_encoder import PromptEncoder
    from sam2.modeling.sam.transformer import TwoWayTransformer

    from vadapt.weights import WeightsMismatchError, load_strict, read_state_dict, resolve_weights

    from .base import BACKBONES

    stride = 16  # SAM2Base.backbone_stride (default, not in the YAML configs)
    if img_size % stride:
        raise ValueError(f"img_size {img_size} must be a multiple of the SAM 2 backbone stride {stride}")
    model_cfg = load_sam2_model_config(backbone.config)

    def option(name: str, default: Any = False) -> Any:
        return model_cfg.get(name, default)

    dim = backbone.model.neck.d_model  # SAM2Base.hidden_dim
    extra = option("sam_mask_decoder_extra_args", None)
    extra = OmegaConf.to_container(extra) if extra is not None else {}
    extra.update(mask_decoder_extra_args or {})
    grid = img_size // stride
    prompt_encoder = PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                   input_image_size=(img_size, img_size), mask_in_chans=16)
    # fixed widths as SAM2Base: mlp_dim 2048 and iou_head_hidden_dim 256 whatever the model width
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=2048, num_heads=8),
        transformer_dim=dim,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
        use_high_res_features=bool(option("use_high_res_features_in_sam")),
        iou_prediction_use_sigmoid=bool(option("iou_prediction_use_sigmoid")),
        pred_obj_scores=bool(option("pred_obj_scores")),
        pred_obj_scores_mlp=bool(option("pred_obj_scores_mlp")),
        use_multimask_token_for_obj_ptr=bool(option("use_multimask_token_for_obj_ptr")),
        **extra,
    )
    parts = Sam2PromptParts(prompt_encoder, mask_decoder, dim, img_size,
                            use_high_res_features=bool(option("use_high_res_features_in_sam")),
                            add_no_mem_embed=bool(option("directly_add_no_mem_embed")))

    entry = BACKBONES.get(backbone.name) if backbone.name else None
    path = resolve_weights(weights, entry.weights if entry else None, backbone.name or "sam2")
    if path is not None:
        state = unwrap_state_dict(read_state_dict(str(path)))
        to_ckpt = {}  # our key -> checkpoint key, e.g. mask_decoder.iou_token.weight -> sam_mask_decoder.(same)
        for key in parts.state_dict():
            head, dot, rest = key.partition(".")
            to_ckpt[key] = _SAM2_PROMPT_KEYS[head] + dot + rest
        missing = [ck for ck in to_ckpt.values() if ck not in state]
        if missing:
            more = f" ... and {len(missing) - 8} more" if len(missing) > 8 else ""
            raise WeightsMismatchError(
                f"Checkpoint {path} lacks {len(missing)} SAM 2 prompt encoder / mask decoder keys: "
                f"{', '.join(missing[:8])}{more} (a full SAM 2 checkpoint is needed, not an image encoder)"
            )
        to_own = {ck: own for own, ck in to_ckpt.items()}
        prefixes = tuple(f"{ck}." for ck in _SAM2_PROMPT_KEYS.values())
        part = {to_own.get(k, k): v for k, v in state.items() if k.startswith(prefixes) or k == "no_mem_embed"}
        load_strict(parts, part, source=f"{path} (sam_prompt_encoder.*, sam_mask_decoder.*, no_mem_embed)")
    return parts
