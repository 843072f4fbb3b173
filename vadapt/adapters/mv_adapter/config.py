"""MV-Adapter configuration."""

from __future__ import annotations

from dataclasses import dataclass

from vadapt.adapters.base import AdapterConfig

from .schedule import SHIFT_MODES

ADAPTER_TYPES = ("full_adapter", "full_adapter_xl")


@dataclass
class MVAdapterConfig(AdapterConfig):
    """MV-Adapter (Huang et al., "MV-Adapter: Multi-view Consistent Image Generation Made Easy", 2024,
    arXiv:2412.03632) on a frozen diffusers UNet.

    Beside every self-attention (``attn1`` of each transformer block in the down / mid / up blocks) it adds a
    row-wise multi-view attention across the ``N`` views of one object and, for image-to-multiview, an attention
    on the reference image's features; both read the same normed input as the self-attention and are summed
    inside ``attn1``: ``to_out(SA(x)) + mv_scale * to_out_mv(MV(x)) + ref_scale * to_out_ref(REF(x))``. The camera
    (or geometry) condition is a 6-channel per-view map encoded by a diffusers ``T2IAdapter`` whose features go in
    as the UNet's ``down_intrablock_additional_residuals``. Training weights the epsilon loss by Min-SNR.

    Defaults follow the official code (huanngzh/MV-Adapter, ``configs/view-guidance/mvadapter_t2mv_sd21.yaml`` and
    the pipelines' ``_init_custom_adapter``): 6 views, q/k/v/out of each new branch copied from ``attn1``, the
    output projections (weight and bias) zeroed, trainable = the new projections + the whole T2IAdapter. With
    these defaults the trainable count is 127,496,320 on SD2.1 and 490,923,200 on SDXL (text-to-multiview), the
    authors' 127.5 M / 490.9 M; image-to-multiview (``use_ref=True``) adds as many again for the ref branch
    (177,070,400 / 900,606,400).

    Deviations of the issue's wording, following the official code instead:

    * The reference attention exists only for image-to-multiview (``use_ref=True``); the text-to-multiview
      models behind the 127.5 M / 490.9 M counts have none, so ``use_ref`` defaults to ``False``.
    * The multi-view attention is ROW-WISE: a query in row ``r`` of view ``v`` attends to row ``r`` of all ``N``
      views (own view included), not to every token of every view. It needs square feature maps.
    * Reference features are the INPUTS of each ``attn1`` (after ``norm1``) of the same frozen UNet run at
      ``t = 0`` on the clean reference latent with the adapter switched off (no copy of the UNet, no T2I
      residuals), cached per processor.
    * The camera map of the official configs is per view CONSTANT (view direction ``R^T (0, 0, 1)`` and the
      normalised camera position, each mapped by ``(x + 1) / 2`` and clamped), for orthographic cameras; true
      per-pixel Plücker ray maps ``(d, o x d)`` exist (perspective) but no official config uses them.
    * The condition features are intra-block residuals (``down_intrablock_additional_residuals``, T2I-Adapter
      path), not ControlNet-style block residuals; on SDXL the 4th feature is added after the mid block.
    * v-prediction Min-SNR is ``min(snr + 1, gamma) / (snr + 1)`` (the official system adds 1 to the SNR before
      both the min and the division), not ``min(snr, gamma) / (snr + 1)``.
    * The view count travels as processor state (:func:`set_num_views`), not as ``cross_attention_kwargs``, so no
      parameter-free processor is installed on ``attn2``.

    Attributes:
        num_views: views per object ``N`` the adapter is built / trained for (official 6). The batch must hold
            whole objects: ``B = b * N``.
        mv_scale: weight of the multi-view branch (official 1.0).
        use_ref: add the reference-image attention (image-to-multiview; official i2mv ``True``, t2mv ``False``).
        ref_scale: weight of the reference branch (the pipelines' ``reference_conditioning_scale``, 1.0).
        use_condition: build the T2IAdapter condition encoder (every official model has one).
        condition_channels: channels of the per-view condition map (6: camera map or position + normal map).
        adapter_type: ``"full_adapter"`` (SD 1.x / 2.x, official SD2.1) or ``"full_adapter_xl"`` (official SDXL);
            ``None`` picks ``full_adapter_xl`` for a UNet with SDXL's ``text_time`` added conditioning.
        downscale_factor: pixel-unshuffle factor of the T2IAdapter; ``None`` = 8 (full_adapter) / 16 (XL).
        condition_block_channels: T2IAdapter widths; ``None`` = the UNet's ``block_out_channels`` for
            full_adapter (official SD) and ``(c0, c1, c2, c2)`` (SDXL: 320, 640, 1280, 1280) for XL.
        condition_num_res_blocks: resnets per T2IAdapter block; ``None`` = the UNet's ``layers_per_block``
            (official SD) or 2 (official SDXL).
        copy_attn_weights: initialise ``to_{q,k,v,out}_{mv,ref}`` from ``attn1.to_{q,k,v,out}`` (official).
        zero_init_out: zero ``to_out_mv`` / ``to_out_ref`` (weight and bias), so the adapted UNet starts equal to
            the base (official).
        snr_gamma: Min-SNR ``gamma`` of the training loss (official 5.0; ``None`` = plain MSE).
        snr_shift_scale: divide the base schedule's SNR by this for training and sampling (official 8.0, see
            :mod:`~vadapt.adapters.mv_adapter.schedule`; ``None`` = the base's schedule). Saved with the adapter,
            so a reloaded adapter samples on the schedule it was trained on.
        snr_shift_mode: ``"interpolated"`` (official: no shift at ``t = 0``, the full shift at ``t = T - 1``,
            log-linear between) or ``"uniform"`` (the same shift at every ``t``).
        image_dropout: image-to-multiview training: probability that a sample's reference features are zeroed
            (the unconditional image of classifier-free guidance; official 0.1).
        joint_dropout: image-to-multiview training: probability that both the prompt (to the empty one) and the
            reference are dropped (official ``cond_drop_prob`` 0.1, on top of the task's ``condition_dropout``
            and ``image_dropout``; the official SD2.1 system zeroes the prompt embeddings instead of encoding "").
        strict_num_views: :func:`set_num_views` refuses a view count other than ``num_views`` (default: one
            sentence before any denoising; the row-wise attention itself runs on any count, ``False`` allows it).
    """

    num_views: int = 6
    mv_scale: float = 1.0
    use_ref: bool = False
    ref_scale: float = 1.0
    use_condition: bool = True
    condition_channels: int = 6
    adapter_type: str | None = None
    downscale_factor: int | None = None
    condition_block_channels: list[int] | None = None
    condition_num_res_blocks: int | None = None
    copy_attn_weights: bool = True
    zero_init_out: bool = True
    snr_gamma: float | None = 5.0
    snr_shift_scale: float | None = 8.0
    snr_shift_mode: str = "interpolated"
    image_dropout: float = 0.1
    joint_dropout: float = 0.1
    strict_num_views: bool = True

    method = "mv_adapter"

    def __post_init__(self) -> None:
        for field in ("num_views", "condition_channels"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MVAdapterConfig.{field} must be an integer >= 1, got {value!r}")
        if self.adapter_type is not None and self.adapter_type not in ADAPTER_TYPES:
            raise ValueError(f"MVAdapterConfig.adapter_type must be one of {ADAPTER_TYPES} or None, "
                             f"got {self.adapter_type!r}")
        for field in ("downscale_factor", "condition_num_res_blocks"):
            value = getattr(self, field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"MVAdapterConfig.{field} must be an integer >= 1 or None, got {value!r}")
        if self.condition_block_channels is not None:
            chans = list(self.condition_block_channels)
            if not chans or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in chans):
                raise ValueError(f"MVAdapterConfig.condition_block_channels must be a non-empty list of integers "
                                 f">= 1 (or None), got {self.condition_block_channels!r}")
            self.condition_block_channels = chans
        if self.snr_gamma is not None and not self.snr_gamma > 0:
            raise ValueError(f"MVAdapterConfig.snr_gamma must be > 0 or None, got {self.snr_gamma!r}")
        if self.snr_shift_scale is not None and not self.snr_shift_scale > 0:
            raise ValueError(f"MVAdapterConfig.snr_shift_scale must be > 0 or None, got {self.snr_shift_scale!r}")
        for field in ("image_dropout", "joint_dropout"):
            if not 0 <= getattr(self, field) < 1:
                raise ValueError(f"MVAdapterConfig.{field} must be in [0, 1), got {getattr(self, field)!r}")
        if self.snr_shift_mode not in SHIFT_MODES:
            raise ValueError(f"MVAdapterConfig.snr_shift_mode must be one of {SHIFT_MODES}, "
                             f"got {self.snr_shift_mode!r}")

    @classmethod
    def preset(cls, name: str) -> MVAdapterConfig:
        """Official configurations: ``"t2mv_sd21"``, ``"i2mv_sd21"``, ``"t2mv_sdxl"``, ``"i2mv_sdxl"``,
        ``"tg2mv_sdxl"`` / ``"ig2mv_sdxl"`` (geometry guidance: position + normal maps, same modules)."""
        presets = {
            "t2mv_sd21": dict(use_ref=False, adapter_type="full_adapter", downscale_factor=8),
            "i2mv_sd21": dict(use_ref=True, adapter_type="full_adapter", downscale_factor=8),
            "t2mv_sdxl": dict(use_ref=False, adapter_type="full_adapter_xl", downscale_factor=16),
            "i2mv_sdxl": dict(use_ref=True, adapter_type="full_adapter_xl", downscale_factor=16),
            "tg2mv_sdxl": dict(use_ref=False, adapter_type="full_adapter_xl", downscale_factor=16),
            "ig2mv_sdxl": dict(use_ref=True, adapter_type="full_adapter_xl", downscale_factor=16),
        }
        if name not in presets:
            raise ValueError(f"Unknown MV-Adapter preset {name!r}; choose one of {sorted(presets)}")
        return cls(**presets[name])
