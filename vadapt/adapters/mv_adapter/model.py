"""Injecting MV-Adapter (Huang et al., 2024, arXiv:2412.03632) into a frozen diffusers UNet, the reference-feature
passes, the camera-condition encoder, Min-SNR weighting and the official ``mvadapter_*.safetensors`` format.

Typical training step (``b`` objects of ``N`` views, ``B = b * N``)::

    inject_mv_adapter(backbone, MVAdapterConfig())                      # t2mv; use_ref=True for i2mv
    cond = unet_kwargs_with_condition(backbone.mv_condition_encoder, camera_maps)  # (B, 6, 8h, 8w) in [0, 1]
    pred = backbone.unet(noisy, t, encoder_hidden_states=text, **cond).sample       # t: one per object, repeated
    loss = min_snr_loss(pred, noise, t, scheduler, gamma=5.0)

For image-to-multiview first ``feats = compute_reference_features(backbone, ref_latents, text)`` and run the
UNet inside ``with use_reference(backbone, feats):``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vadapt.adapters.base import matches

from .config import MVAdapterConfig
from .layer import MVAdapterState, MVAttnProcessor

if TYPE_CHECKING:
    from vadapt.contracts import Backbone

CONDITION_ATTR = "mv_condition_encoder"
_STATE_ATTR = "_mv_adapter_state"
_CONFIG_ATTR = "_mv_adapter_config"


def _self_attentions(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of every ``attn1`` of the UNet's transformer blocks (motion modules excluded)."""
    return [(name, m) for name, m in unet.named_modules()
            if name.split(".")[-1] == "attn1" and hasattr(m, "set_processor") and "motion_modules" not in name]


def _processors(unet: nn.Module) -> list[MVAttnProcessor]:
    return [m for m in unet.modules() if isinstance(m, MVAttnProcessor)]


def _state(backbone: Backbone) -> MVAdapterState:
    state = getattr(backbone.unet, _STATE_ATTR, None)
    if state is None:
        raise ValueError(f"{getattr(backbone, 'name', 'this backbone')!r} has no MV-Adapter; call inject_mv_adapter "
                         f"first")
    return state


def mv_adapter_config(backbone: Backbone) -> MVAdapterConfig:
    """The config the backbone's MV-Adapter was injected with."""
    _state(backbone)
    return getattr(backbone.unet, _CONFIG_ATTR)


def build_condition_encoder(unet: nn.Module, config: MVAdapterConfig, vae_scale_factor: int = 8) -> nn.Module:
    """The official camera / geometry condition encoder, a diffusers ``T2IAdapter`` built on the UNet's device.

    SD: ``T2IAdapter(in_channels=6, channels=block_out_channels, num_res_blocks=layers_per_block,
    downscale_factor=8)``; SDXL: ``channels=(320, 640, 1280, 1280), num_res_blocks=2, downscale_factor=16,
    adapter_type="full_adapter_xl"`` (see :class:`MVAdapterConfig` for the overrides). The default downscale
    factor follows the base's VAE factor (8 for SD's VAE; a pixel-space base has 1, so 1 and 2).
    """
    from diffusers import T2IAdapter

    ucfg = unet.config
    down_types = list(getattr(ucfg, "down_block_types", []))
    if down_types and "CrossAttn" not in down_types[0]:
        # diffusers adds an intra-block residual after a plain DownBlock2D's downsampler, so the T2IAdapter's
        # first feature no longer matches: SD's layout starts with cross-attention blocks (SDXL is handled below)
        xl_layout = getattr(ucfg, "addition_embed_type", None) == "text_time"
        if not xl_layout:
            raise ValueError(f"MV-Adapter's condition encoder needs a UNet whose first down block has attention "
                             f"(SD layout), got down_block_types={down_types}; use use_condition=False")
    xl = config.adapter_type == "full_adapter_xl" or (
        config.adapter_type is None and getattr(ucfg, "addition_embed_type", None) == "text_time")
    blocks = list(ucfg.block_out_channels)
    if config.condition_block_channels is not None:
        channels = list(config.condition_block_channels)
    elif xl:
        if len(blocks) < 3:
            raise ValueError(f"full_adapter_xl needs a UNet of >= 3 blocks, got block_out_channels={blocks}")
        channels = [blocks[0], blocks[1], blocks[2], blocks[2]]
    else:
        channels = blocks
    if xl and len(channels) != 4:
        raise ValueError(f"full_adapter_xl has exactly 4 blocks; condition_block_channels={channels}")
    if not xl and len(channels) != len(blocks):
        raise ValueError(f"full_adapter gives one residual per UNet down block ({len(blocks)}), but "
                         f"condition_block_channels has {len(channels)} entries")
    layers = ucfg.layers_per_block
    res_blocks = config.condition_num_res_blocks or (2 if xl or not isinstance(layers, int) else layers)
    param = next(unet.parameters())
    with torch.device(param.device):
        encoder = T2IAdapter(in_channels=config.condition_channels, channels=channels, num_res_blocks=res_blocks,
                             downscale_factor=config.downscale_factor or (16 if xl else 8) * vae_scale_factor // 8,
                             adapter_type="full_adapter_xl" if xl else "full_adapter")
    if next(encoder.parameters()).dtype != param.dtype:  # plain nn.Module cast (ModelMixin.to warns needlessly)
        nn.Module.to(encoder, dtype=param.dtype)
    return encoder.requires_grad_(True)


def inject_mv_adapter(backbone: Backbone, config: MVAdapterConfig) -> nn.Module | None:
    """Install an :class:`MVAttnProcessor` on every ``attn1`` of ``backbone.unet`` (or those ``target_modules``
    selects, suffix match on the attention paths) and build the condition encoder.

    The T2IAdapter is registered as ``backbone.mv_condition_encoder`` (a submodule of the backbone, so it moves,
    trains and saves with it) and also returned (``None`` when ``config.use_condition`` is false). Trainable
    afterwards: the processors' ``to_{q,k,v,out}_mv`` (and ``_ref``) and the whole T2IAdapter; the UNet stays as
    frozen as it was. With the default zero-initialised output projections and no condition (or condition scale
    0) the adapted UNet reproduces the base bit for bit for any number of views.
    """
    unet = backbone.unet
    name = getattr(backbone, "name", "") or type(backbone).__name__
    if getattr(unet, _STATE_ATTR, None) is not None:
        raise ValueError(f"{name!r} already has an MV-Adapter")
    attns = _self_attentions(unet)
    if config.target_modules:
        attns = [(n, m) for n, m in attns if matches(n, config.target_modules)]
    if config.exclude_modules:
        attns = [(n, m) for n, m in attns if not matches(n, config.exclude_modules)]
    if not attns:
        raise ValueError(f"MV-Adapter found no self-attention (attn1) to adapt in {name!r} "
                         f"(target_modules={config.target_modules!r}, exclude_modules={config.exclude_modules!r})")
    state = MVAdapterState(num_views=config.num_views, trained_num_views=config.num_views,
                           mv_scale=config.mv_scale, ref_scale=config.ref_scale)
    for path, attn in attns:
        weight = attn.to_q.weight
        proc = MVAttnProcessor(attn.to_q.in_features, attn.to_q.out_features, f"{path}.processor", state,
                               attn.processor, use_ref=config.use_ref, device=weight.device, dtype=weight.dtype)
        proc.init_from(attn, config.copy_attn_weights, config.zero_init_out)
        attn.set_processor(proc.requires_grad_(True))
    object.__setattr__(unet, _STATE_ATTR, state)
    object.__setattr__(unet, _CONFIG_ATTR, config)
    vae_factor = int(getattr(backbone, "vae_scale_factor", 8))
    encoder = build_condition_encoder(unet, config, vae_factor) if config.use_condition else None
    if encoder is not None:
        setattr(backbone, CONDITION_ATTR, encoder)
    return encoder


def remove_mv_adapter(backbone: Backbone) -> None:
    """Restore every ``attn1``'s original processor and drop the condition encoder."""
    unet = backbone.unet
    _state(backbone)
    for _, attn in _self_attentions(unet):
        if isinstance(attn.processor, MVAttnProcessor):
            attn.set_processor(attn.processor.base_processor)
    for attr in (_STATE_ATTR, _CONFIG_ATTR):
        unet.__dict__.pop(attr, None)
    if hasattr(backbone, CONDITION_ATTR):
        delattr(backbone, CONDITION_ATTR)


def set_num_views(backbone: Backbone, num_views: int, strict: bool | None = None) -> None:
    """Set the views per object ``N`` (the UNet batch must then be ``b * N``).

    ``strict`` (default: the config's ``strict_num_views``) refuses a count other than the one the adapter was
    trained for; otherwise any count works (row-wise attention has no view-count-specific weights).
    """
    state = _state(backbone)
    if isinstance(num_views, bool) or not isinstance(num_views, int) or num_views < 1:
        raise ValueError(f"num_views must be an integer >= 1, got {num_views!r}")
    if strict is None:
        strict = mv_adapter_config(backbone).strict_num_views
    if strict and num_views != state.trained_num_views:
        raise ValueError(f"This MV-Adapter was trained for {state.trained_num_views} views, so {num_views} views "
                         f"are refused in strict mode (pass strict=False to run it on {num_views} views anyway).")
    state.num_views = num_views


def set_mv_scales(backbone: Backbone, mv_scale: float | None = None, ref_scale: float | None = None) -> None:
    """Change the multi-view / reference branch weights at run time."""
    state = _state(backbone)
    if mv_scale is not None:
        state.mv_scale = float(mv_scale)
    if ref_scale is not None:
        state.ref_scale = float(ref_scale)


@contextmanager
def mv_adapter_disabled(backbone: Backbone) -> Iterator[None]:
    """Run the plain base UNet (every adapter branch off) inside the block."""
    state = _state(backbone)
    previous, state.enabled = state.enabled, False
    try:
        yield
    finally:
        state.enabled = previous


@contextmanager
def record_reference(backbone: Backbone) -> Iterator[dict[str, torch.Tensor]]:
    """The "write" pass: inside the block the adapter is off and every adapted ``attn1`` stores its input
    ``(B_ref, L, C)`` (after ``norm1``, detached) in the yielded dict under its processor path."""
    state = _state(backbone)
    feats: dict[str, torch.Tensor] = {}
    previous = state.record
    state.record = feats
    try:
        with mv_adapter_disabled(backbone):
            yield feats
    finally:
        state.record = previous


@torch.no_grad()
def compute_reference_features(backbone: Backbone, ref_latents: torch.Tensor, encoder_hidden_states: torch.Tensor,
                               **unet_kwargs: Any) -> dict[str, torch.Tensor]:
    """Official reference pass: the frozen UNet at ``t = 0`` on the clean reference latents ``(b, 4, h, w)``
    (``vae.encode(img).sample() * scaling_factor``, no noise) with the adapter off and no condition residuals;
    ``encoder_hidden_states`` ``(b, S, D)`` the (possibly dropped) prompt, ``unet_kwargs`` e.g. SDXL's
    ``added_cond_kwargs``. Returns processor path -> ``(b, L, C)``; zero a sample's entries to drop its image."""
    t = torch.zeros(ref_latents.shape[0], dtype=torch.long, device=ref_latents.device)
    with record_reference(backbone) as feats:
        backbone.unet(ref_latents, t, encoder_hidden_states=encoder_hidden_states, **unet_kwargs)
    return feats


@contextmanager
def use_reference(backbone: Backbone, feats: dict[str, torch.Tensor]) -> Iterator[None]:
    """The "read" pass: inside the block the reference branches attend to ``feats`` (from
    :func:`compute_reference_features`; ``(b, L, C)`` entries are repeated over the ``N`` views)."""
    state = _state(backbone)
    previous, state.reference = state.reference, feats
    try:
        yield
    finally:
        state.reference = previous


def unet_kwargs_with_condition(adapter: nn.Module, cond: torch.Tensor, scale: float = 1.0) -> dict[str, list]:
    """UNet keyword arguments carrying the condition: ``cond`` ``(B, 6, H_px, W_px)`` in ``[0, 1]`` -> the
    T2IAdapter's features times ``scale`` as ``down_intrablock_additional_residuals`` (a fresh list, which the
    UNet consumes). ``adapter`` is the T2IAdapter or a backbone holding ``mv_condition_encoder``."""
    encoder = getattr(adapter, CONDITION_ATTR, adapter)
    param = next(encoder.parameters())
    feats = encoder(cond.to(device=param.device, dtype=param.dtype))
    return {"down_intrablock_additional_residuals": [f * scale for f in feats]}


# ---------------------------------------------------------------------------------------------- Min-SNR weighting


def min_snr_weights(timesteps: torch.Tensor, scheduler: Any, gamma: float = 5.0,
                    prediction_type: str | None = None) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023) as the official MV-Adapter systems compute them.

    ``snr = alpha_bar_t / (1 - alpha_bar_t)`` from ``scheduler.alphas_cumprod``; epsilon: ``min(snr, gamma) /
    snr``; v-prediction: ``snr' = snr + 1``, ``min(snr', gamma) / snr'`` (official: the 1 is added before the min);
    sample (x0) prediction: ``min(snr, gamma)``. ``prediction_type`` defaults to the scheduler's. ``(T,)`` -> ``(T,)``.
    """
    ptype = prediction_type or getattr(getattr(scheduler, "config", None), "prediction_type", None) or "epsilon"
    alphas = scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float64)[timesteps.long()]
    snr = alphas / (1.0 - alphas)
    if ptype == "epsilon":
        weights = snr.clamp(max=gamma) / snr
    elif ptype == "v_prediction":
        weights = (snr + 1).clamp(max=gamma) / (snr + 1)
    elif ptype == "sample":
        weights = snr.clamp(max=gamma)
    else:
        raise ValueError(f"Unknown prediction_type {ptype!r}; expected 'epsilon', 'v_prediction' or 'sample'")
    return weights.float()


def min_snr_loss(pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor, scheduler: Any,
                 gamma: float | None = 5.0, prediction_type: str | None = None) -> torch.Tensor:
    """Official loss: ``mean_i( w_i * mean_{C,H,W} (pred_i - target_i)^2 )`` over the ``B`` images, ``w`` from
    :func:`min_snr_weights` (``gamma=None``: plain MSE). ``pred, target`` ``(B, C, H, W)``, ``timesteps`` ``(B,)``."""
    per = (pred.float() - target.float()).square().flatten(1).mean(dim=1)
    if gamma is None:
        return per.mean()
    return (per * min_snr_weights(timesteps, scheduler, gamma, prediction_type).to(per.device)).mean()


# ------------------------------------------------------------------------------------- official checkpoint format


def mv_adapter_state_dict(backbone: Backbone) -> dict[str, torch.Tensor]:
    """The official flat layout: ``<attn1 path>.processor.to_{q,k,v}_{mv,ref}.weight``,
    ``...to_out_{mv,ref}.0.{weight,bias}`` (UNet-relative paths) and the T2IAdapter's ``adapter.*`` keys."""
    _state(backbone)
    out: dict[str, torch.Tensor] = {}
    for proc in _processors(backbone.unet):
        for key, value in proc.state_dict().items():
            if not key.startswith("base_processor."):
                out[f"{proc.name}.{key}"] = value
    encoder = getattr(backbone, CONDITION_ATTR, None)
    if encoder is not None:
        out.update(encoder.state_dict())
    return out


def save_mv_adapter(backbone: Backbone, path: str) -> None:
    """Write the adapter in the official ``mvadapter_*.safetensors`` layout (see :func:`mv_adapter_state_dict`)."""
    from safetensors.torch import save_file

    config = mv_adapter_config(backbone)
    tensors = {k: v.detach().contiguous().cpu() for k, v in mv_adapter_state_dict(backbone).items()}
    save_file(tensors, str(path), metadata={"format": "pt", "vadapt_method": "mv_adapter",
                                            "num_views": str(config.num_views), "use_ref": str(config.use_ref)})


def _summary(keys: Sequence[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_mv_adapter_state_dict(backbone: Backbone, state_dict: dict[str, torch.Tensor], strict: bool = True
                               ) -> tuple[list[str], list[str]]:
    """Copy an official-layout dict into the adapter; returns ``(missing, unused)`` keys.

    ``strict`` (default) raises, naming them, when the file lacks a key of this adapter or holds one (``_mv``,
    ``_ref``, ``adapter.`` or any other) that this adapter does not use — the official loader's two
    ``load_state_dict(strict=False)`` calls would silently skip them. Shape mismatches always raise.
    """
    own = mv_adapter_state_dict(backbone)
    missing = [k for k in own if k not in state_dict]
    unused = [k for k in state_dict if k not in own]
    if strict and (missing or unused):
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_summary(missing)}")
        if unused:
            parts.append(f"{len(unused)} unused key(s): {_summary(unused)}")
        hint = ""
        if any("_ref" in k for k in unused):
            hint = " (the file has a reference branch: inject with use_ref=True)"
        elif any("_ref" in k for k in missing):
            hint = " (the file has no reference branch: inject with use_ref=False)"
        raise ValueError(f"MV-Adapter file does not match this adapter{hint}: " + "; ".join(parts))
    bad = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
           if k in state_dict and state_dict[k].shape != v.shape]
    if bad:
        raise ValueError(f"MV-Adapter file has {len(bad)} tensor(s) of the wrong shape: {_summary(bad, 4)}")
    with torch.no_grad():
        for key, value in own.items():
            if key in state_dict:
                value.copy_(state_dict[key].to(device=value.device, dtype=value.dtype))
    return missing, unused


def load_mv_adapter(backbone: Backbone, path: str, strict: bool = True) -> tuple[list[str], list[str]]:
    """Load an official ``mvadapter_{t2mv,i2mv}_{sd21,sdxl}.safetensors`` (or a :func:`save_mv_adapter` file) into
    the injected adapter; see :func:`load_mv_adapter_state_dict`."""
    from safetensors.torch import load_file

    return load_mv_adapter_state_dict(backbone, load_file(str(path)), strict=strict)
