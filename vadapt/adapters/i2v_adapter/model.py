"""Injecting I2V-Adapter (Guo et al., SIGGRAPH 2024, arXiv:2312.16693) into a frozen diffusers UNet, and reading /
writing its weights in the official key layout.

Official layout (from the module names of KwaiVGI/I2V-Adapter; keys relative to the UNet)::

    {down_blocks.i|mid_block|up_blocks.i}.attentions.j.transformer_blocks.0.attn1.to_q_ff.weight    (C, C)
    ...attn1.to_out_ff.weight (C, C), ...attn1.to_out_ff.bias (C,)

The diffusers block paths of ``UNet2DConditionModel`` and ``UNetMotionModel`` are the same, so the adapted
UNet's own state dict already holds these keys.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from torch import nn

from vadapt.adapters.base import matches

from .config import I2VAdapterConfig
from .layer import FrameState, add_first_frame_branch

if TYPE_CHECKING:
    from vadapt.contracts import Backbone

#: parameter names each adapted attention adds (official names)
ADAPTER_PARAMS = ("to_q_ff.weight", "to_out_ff.weight", "to_out_ff.bias")
_STATE_ATTR = "i2v_frame_state"


def _unet(backbone: Backbone | nn.Module) -> nn.Module:
    unet = getattr(backbone, "unet", None)
    return unet if isinstance(unet, nn.Module) else backbone


def spatial_self_attentions(unet: nn.Module, config: I2VAdapterConfig | None = None) -> list[str]:
    """Names of the diffusers ``Attention`` modules I2V-Adapter adapts: every ``attn1`` (or the config's
    ``target_modules``) outside the AnimateDiff ``motion_modules`` (whose temporal attention is also ``attn1``).
    16 on SD1.5 (6 down, 1 mid, 9 up)."""
    from diffusers.models.attention_processor import Attention

    targets = (config.target_modules if config is not None else None) or ["attn1"]
    exclude = config.exclude_modules if config is not None else None
    return [
        name for name, m in unet.named_modules()
        if isinstance(m, Attention) and matches(name, targets) and "motion_modules" not in name.split(".")
        and not (exclude and matches(name, exclude))
    ]


def inject_i2v_adapter(backbone: Backbone, config: I2VAdapterConfig) -> None:
    """Add the first-frame branch to every spatial self-attention of ``backbone.unet``, in place.

    Works on a ``UNet2DConditionModel`` (frames stacked ``(B·F, C, h, w)``, set ``F`` with
    :func:`set_num_frames`) and on a ``UNetMotionModel`` (``(B, C, F, h, w)``; ``F`` is read from each forward's
    input). Afterwards only ``attn1.to_q_ff`` and ``attn1.to_out_ff`` are trainable; the UNet, motion modules
    included, stays frozen. 24,793,280 new parameters on SD1.5.
    """
    unet = _unet(backbone)
    label = getattr(backbone, "name", "") or type(unet).__name__
    if hasattr(unet, _STATE_ATTR):
        raise ValueError(f"{label!r} already has an I2V-Adapter")
    names = spatial_self_attentions(unet, config)
    if not names:
        raise ValueError(f"I2V-Adapter found no spatial self-attention (target_modules={config.target_modules!r}, "
                         f"motion_modules excluded) in {label!r}")
    unet.requires_grad_(False)
    state = FrameState(config.num_frames)
    for name in names:
        add_first_frame_branch(unet.get_submodule(name), state)
    setattr(unet, _STATE_ATTR, state)
    unet.register_forward_pre_hook(state, with_kwargs=True)


def set_num_frames(backbone: Backbone | nn.Module, num_frames: int) -> None:
    """Set the frames per video ``F`` of an adapted UNet (needed for a 2-D UNet fed ``(B·F, C, h, w)``; a
    ``UNetMotionModel`` overwrites it from its input's shape at every forward)."""
    state = getattr(_unet(backbone), _STATE_ATTR, None)
    if state is None:
        raise ValueError("set_num_frames: this UNet has no I2V-Adapter (call inject_i2v_adapter first)")
    if isinstance(num_frames, bool) or int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames must be an integer >= 1, got {num_frames!r}")
    state.num_frames = int(num_frames)


def adapter_parameters(backbone: Backbone | nn.Module) -> dict[str, nn.Parameter]:
    """The adapter's parameters under their official keys (relative to the UNet), in module order."""
    unet = _unet(backbone)
    out: dict[str, nn.Parameter] = {}
    for name, module in unet.named_modules():
        if hasattr(module, "to_q_ff") and hasattr(module, "to_out_ff"):
            out[f"{name}.to_q_ff.weight"] = module.to_q_ff.weight
            out[f"{name}.to_out_ff.weight"] = module.to_out_ff.weight
            out[f"{name}.to_out_ff.bias"] = module.to_out_ff.bias
    return out


def i2v_state_dict(backbone: Backbone | nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU copies of the adapter weights in the official key layout."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in adapter_parameters(backbone).items()}


def save_i2v_adapter(backbone: Backbone | nn.Module, path: str | os.PathLike) -> None:
    """Write the adapter weights (official keys) to a safetensors file."""
    from safetensors.torch import save_file

    state = i2v_state_dict(backbone)
    if not state:
        raise ValueError("save_i2v_adapter: the UNet has no I2V-Adapter weights")
    save_file(state, os.fspath(path), metadata={"format": "pt", "method": "i2v_adapter"})


def _read(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "module"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a flat dict of tensors (an I2V-Adapter state dict)")
    return state


def _short(keys: list[str], limit: int = 8) -> str:
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_i2v_adapter(
    backbone: Backbone | nn.Module, path: str | os.PathLike, strict: bool = True
) -> tuple[list[str], list[str]]:
    """Load adapter weights into an adapted UNet from a safetensors file or an official ``.pth`` / ``.bin``.

    Keys are the official ones, relative to the UNet; a leading ``module.`` or ``unet.`` is dropped. ``.pth``
    files are read with ``torch.load(weights_only=True)``. Shape mismatches are always an error; with
    ``strict`` (default) missing and unexpected keys are too, otherwise the matching keys are loaded and
    ``(missing, unexpected)`` is returned.
    """
    params = adapter_parameters(backbone)
    if not params:
        raise ValueError("load_i2v_adapter: the UNet has no I2V-Adapter (call inject_i2v_adapter first)")
    state: dict[str, torch.Tensor] = {}
    for key, value in _read(path).items():
        for prefix in ("module.", "unet."):
            key = key.removeprefix(prefix)
        state[key] = value
    missing = [k for k in params if k not in state]
    unexpected = [k for k in state if k not in params]
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(p.shape)}"
                  for k, p in params.items() if k in state and state[k].shape != p.shape]
    problems = []
    if mismatched:
        problems.append(f"shape mismatch for {len(mismatched)} keys: {_short(mismatched)}")
    if strict and missing:
        problems.append(f"missing {len(missing)} keys: {_short(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected {len(unexpected)} keys: {_short(unexpected)}")
    if problems:
        raise ValueError(f"load_i2v_adapter({os.fspath(path)!r}): " + "; ".join(problems))
    with torch.no_grad():
        for key, param in params.items():
            if key in state:
                param.copy_(state[key].to(device=param.device, dtype=param.dtype))
    return missing, unexpected
