"""Injecting ResAdapter (Cheng et al., 2024, arXiv:2403.02084) into a frozen diffusers UNet, and reading / writing
the official release files unchanged.

* ResCLoRA: peft's LoRA ``Conv2d`` on every ``{down_blocks.i.downsamplers.0, up_blocks.i.upsamplers.0}.conv``.
  peft builds exactly the official layer: ``lora_A = Conv2d(C, r, 3, stride=base stride, padding=base padding,
  bias=False)``, ``lora_B = Conv2d(r, C, 1, bias=False)`` zero-initialised (``lora_A`` kaiming-uniform, a=sqrt 5),
  ``scaling = strength * lora_alpha / r``; it is also what diffusers' ``load_lora_weights`` builds for the official
  file, so no own layer is needed. Input ``(B, C, H, W)``; output ``(B, C, H/2, W/2)`` in downsamplers,
  ``(B, C, H, W)`` in upsamplers (after the base's nearest x2 interpolation).
* ResENorm: ``norm1`` / ``norm2`` (GroupNorm weight and bias, shape ``(C,)``) of every ResNet block of the down,
  mid and up blocks become trainable; the module names stay diffusers' own. Each such GroupNorm gets two
  non-persistent buffers, a frozen copy of the base values (restored by :func:`disable_resadapter`) and the
  adapted values while the adapter is off (brought back by :func:`enable_resadapter`). They follow ``.to()`` but
  never enter ``state_dict()``.

Official files (bytedance/res-adapter, both safetensors without metadata):

* ``pytorch_lora_weights.safetensors`` (Kohya keys over diffusers module names, fp16):
  ``lora_unet_down_blocks_0_downsamplers_0_conv.lora_down.weight`` ``(r, C, 3, 3)``, ``.lora_up.weight``
  ``(C, r, 1, 1)``, ``.alpha`` ``()`` (8.0). A missing ``.alpha`` means ``alpha = r`` (diffusers' rule).
* ``diffusion_pytorch_model.safetensors`` (plain UNet keys, fp32, *absolute* values):
  ``down_blocks.0.resnets.0.norm1.weight`` ``(C,)`` ... for every ResNet ``norm1`` / ``norm2``.

Official inference loads the LoRA with ``pipe.load_lora_weights`` and the norms with
``unet.load_state_dict(..., strict=False)``; the strength (``pipe.set_adapters(..., adapter_weights=[s])``) scales
the LoRA branch only. Deviation: upstream has no "off" for the norms (its ``unload_lora_weights`` baseline keeps the
ResAdapter norms); here :func:`disable_resadapter` restores the base norms as well.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ResAdapterConfig

#: peft adapter name of the ResCLoRA branch (diffusers' official pipeline calls it "res_adapter").
ADAPTER_NAME = "resadapter"
LORA_FILE = "pytorch_lora_weights.safetensors"
NORM_FILE = "diffusion_pytorch_model.safetensors"
#: names of the same files in releases before 2024-03-31
LEGACY_LORA_FILES = ("resolution_lora.safetensors",)
LEGACY_NORM_FILES = ("resolution_normalization.safetensors",)
KOHYA_PREFIX = "lora_unet_"

_SAMPLER_CONV = re.compile(r"(down_blocks\.\d+\.downsamplers|up_blocks\.\d+\.upsamplers)\.\d+\.conv")
_RESNET_NORM = re.compile(r"(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.resnets\.\d+\.norm[12]")
_BASE = ("resadapter_base_weight", "resadapter_base_bias")
_ADAPTED = ("resadapter_adapted_weight", "resadapter_adapted_bias")
_KOHYA_SUFFIXES = ("lora_down.weight", "lora_up.weight", "alpha")
# (downsampler widths, upsampler widths) -> base, for error messages
_KNOWN_SAMPLERS = {
    ((320, 640, 1280), (1280, 1280, 640)): "SD1.5 / SD2.x",
    ((320, 640), (1280, 640)): "SDXL",
}
_KNOWN_NORM_TENSORS = {88: "SD1.5 / SD2.x", 68: "SDXL"}


@dataclass
class _ResAdapterState:
    """Kept on the UNet as ``unet._resadapter_state``."""

    config: ResAdapterConfig
    strength: float
    enabled: bool = True


# ----------------------------------------------------------------------------------------------------------- helpers
def _unet(backbone: Any) -> nn.Module:
    """The UNet of a diffusion backbone (``backbone.unet``), or the UNet itself."""
    unet = getattr(backbone, "unet", backbone)
    if not isinstance(unet, nn.Module):
        raise TypeError(f"expected a diffusion backbone with a `.unet` or a diffusers UNet, got {type(backbone)}")
    return unet


def _state(unet: nn.Module) -> _ResAdapterState:
    state = getattr(unet, "_resadapter_state", None)
    if state is None:
        raise RuntimeError("this UNet has no ResAdapter; call inject_resadapter(backbone, ResAdapterConfig()) first")
    return state


def kohya_key(module_name: str) -> str:
    """``down_blocks.0.downsamplers.0.conv`` -> ``lora_unet_down_blocks_0_downsamplers_0_conv``."""
    return KOHYA_PREFIX + module_name.replace(".", "_")


def _lora_layers(unet: nn.Module) -> dict[str, Any]:
    """Sampler-conv name -> peft LoRA ``Conv2d`` carrying the ResAdapter branch, in module order."""
    from peft.tuners.lora import LoraLayer

    return {
        name: m for name, m in unet.named_modules()
        if isinstance(m, LoraLayer) and ADAPTER_NAME in m.lora_A and _SAMPLER_CONV.fullmatch(name)
    }


def _resnet_norms(unet: nn.Module) -> dict[str, nn.GroupNorm]:
    """``norm1`` / ``norm2`` of every ResNet block of the down, mid and up blocks, in module order."""
    return {
        name: m for name, m in unet.named_modules()
        if isinstance(m, nn.GroupNorm) and m.affine and _RESNET_NORM.fullmatch(name)
    }


def _adapted_norms(unet: nn.Module) -> dict[str, nn.GroupNorm]:
    """The ResENorm GroupNorms (empty when the adapter was injected with ``train_norms=False``)."""
    return {n: m for n, m in _resnet_norms(unet).items() if hasattr(m, _BASE[0])}


def _guess_base(down: Iterable[int], up: Iterable[int]) -> str:
    down, up = tuple(down), tuple(up)
    base = _KNOWN_SAMPLERS.get((down, up))
    desc = f"{len(down) + len(up)} sampler convs, downsampler widths {list(down)}, upsampler widths {list(up)}"
    return f"{desc}: looks like {base}" if base else f"{desc}: no known base (SD1.5 / SD2.x has 6, SDXL 4)"


def _model_samplers(layers: dict[str, Any]) -> str:
    down = [m.in_features for n, m in layers.items() if ".downsamplers." in n]
    up = [m.in_features for n, m in layers.items() if ".upsamplers." in n]
    return _guess_base(down, up)


def _file_samplers(sd: dict[str, torch.Tensor]) -> str:
    def widths(kind: str) -> list[int]:
        rows = []
        for key, t in sd.items():
            m = re.fullmatch(KOHYA_PREFIX + r"(?:down|up)_blocks_(\d+)_" + kind + r"_\d+_conv\.lora_down\.weight", key)
            if m and t.ndim == 4:
                rows.append((int(m.group(1)), int(t.shape[1])))
        return [w for _, w in sorted(rows)]

    return _guess_base(widths("downsamplers"), widths("upsamplers"))


def _norm_base(n_tensors: int) -> str:
    base = _KNOWN_NORM_TENSORS.get(n_tensors)
    return f"{n_tensors} norm tensors: " + (f"looks like {base}" if base else "no known base (SD1.5 88, SDXL 68)")


def _names(keys: Iterable[str], limit: int = 6) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


# --------------------------------------------------------------------------------------------------------- injection
def inject_resadapter(backbone: Any, config: ResAdapterConfig) -> None:
    """Add ResAdapter to ``backbone.unet`` (a frozen ``UNet2DConditionModel`` or ``UNetMotionModel``) in place.

    Afterwards only the LoRA weights of the sampler convs and (``train_norms``) the ResNet norm1/norm2 have
    ``requires_grad=True``; the ``requires_grad`` of every parameter that existed before is otherwise kept. At
    injection the adapted model equals the base bit for bit (zero ``lora_B``, norms start at the base values).
    """
    import peft

    unet = _unet(backbone)
    if getattr(unet, "_resadapter_state", None) is not None:
        raise ValueError("this UNet already has a ResAdapter")
    convs = [n for n, m in unet.named_modules() if _SAMPLER_CONV.fullmatch(n) and isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(
            "no down-/up-sampler conv (`down_blocks.i.downsamplers.j.conv`, `up_blocks.i.upsamplers.j.conv`) found: "
            "ResAdapter needs a diffusers UNet2DConditionModel / UNetMotionModel"
        )
    norms = _resnet_norms(unet)
    if config.train_norms and not norms:
        raise ValueError("no ResNet norm1/norm2 (`*_blocks.i.resnets.j.norm1`) found; use train_norms=False")

    before = {id(p): p.requires_grad for p in unet.parameters()}
    peft_config = peft.LoraConfig(
        r=config.r, lora_alpha=config.lora_alpha, lora_dropout=0.0, target_modules=convs, bias="none",
        init_lora_weights=True,
    )
    peft.inject_adapter_in_model(peft_config, unet, adapter_name=ADAPTER_NAME)
    for p in unet.parameters():  # peft freezes everything that is not LoRA: keep other adapters as they were
        if id(p) in before:
            p.requires_grad_(before[id(p)])
    layers = _lora_layers(unet)
    if sorted(layers) != sorted(convs):
        raise RuntimeError(f"peft wrapped {sorted(layers)}, expected {sorted(convs)}")
    for layer in layers.values():
        for p in (layer.lora_A[ADAPTER_NAME].weight, layer.lora_B[ADAPTER_NAME].weight):
            p.requires_grad_(True)

    if config.train_norms:
        for m in norms.values():
            for param, base, adapted in zip((m.weight, m.bias), _BASE, _ADAPTED):
                m.register_buffer(base, param.detach().clone(), persistent=False)
                m.register_buffer(adapted, param.detach().clone(), persistent=False)
                param.requires_grad_(True)
    unet._resadapter_state = _ResAdapterState(config=config, strength=float(config.strength))
    set_resadapter_strength(unet, config.strength)


def set_resadapter_strength(backbone: Any, strength: float) -> None:
    """Scale the LoRA branch: ``conv(x) + strength * (alpha / r) * up(down(x))``; 0 = the branch adds nothing.

    The norms are not scaled (official behaviour: they are a hard swap; use :func:`disable_resadapter`).
    """
    unet = _unet(backbone)
    state = _state(unet)
    for layer in _lora_layers(unet).values():
        layer.set_scale(ADAPTER_NAME, float(strength))
    state.strength = float(strength)


def get_resadapter_strength(backbone: Any) -> float:
    """The LoRA branch's current strength (:func:`set_resadapter_strength`); ``RuntimeError`` without a ResAdapter."""
    return _state(_unet(backbone)).strength


def is_resadapter_enabled(backbone: Any) -> bool:
    """``False`` between :func:`disable_resadapter` and :func:`enable_resadapter`; ``RuntimeError`` without a
    ResAdapter."""
    return _state(_unet(backbone)).enabled


def disable_resadapter(backbone: Any) -> None:
    """Turn ResAdapter off: deactivate the LoRA branch and put the base norm values back (kept aside).

    The model then equals the base exactly; ResAdapter parameters get ``requires_grad=False`` (as peft does).
    """
    unet = _unet(backbone)
    state = _state(unet)
    if not state.enabled:
        return
    for layer in _lora_layers(unet).values():
        layer.set_adapter([a for a in layer.active_adapters if a != ADAPTER_NAME])
    with torch.no_grad():
        for m in _adapted_norms(unet).values():
            for param, base, adapted in zip((m.weight, m.bias), _BASE, _ADAPTED):
                getattr(m, adapted).copy_(param)
                param.copy_(getattr(m, base))
                param.requires_grad_(False)
    state.enabled = False


def enable_resadapter(backbone: Any) -> None:
    """Turn ResAdapter back on: reactivate the LoRA branch (same strength) and bring back the adapted norms."""
    unet = _unet(backbone)
    state = _state(unet)
    if state.enabled:
        return
    for layer in _lora_layers(unet).values():
        layer.set_adapter([a for a in layer.active_adapters if a != ADAPTER_NAME] + [ADAPTER_NAME])
    with torch.no_grad():
        for m in _adapted_norms(unet).values():
            for param, adapted in zip((m.weight, m.bias), _ADAPTED):
                param.copy_(getattr(m, adapted))
                param.requires_grad_(True)
    state.enabled = True


# ------------------------------------------------------------------------------------------------ vadapt state dict
def resadapter_state_dict(backbone: Any) -> dict[str, torch.Tensor]:
    """The trainable tensors under their UNet parameter names (``...conv.lora_A.resadapter.weight``,
    ``...resnets.0.norm1.weight``); the adapted norm values also while the adapter is off. Detached, not copied."""
    unet = _unet(backbone)
    state = _state(unet)
    out: dict[str, torch.Tensor] = {}
    for name, layer in _lora_layers(unet).items():
        out[f"{name}.lora_A.{ADAPTER_NAME}.weight"] = layer.lora_A[ADAPTER_NAME].weight.detach()
        out[f"{name}.lora_B.{ADAPTER_NAME}.weight"] = layer.lora_B[ADAPTER_NAME].weight.detach()
    for name, m in _adapted_norms(unet).items():
        for pname, param, adapted in zip(("weight", "bias"), (m.weight, m.bias), _ADAPTED):
            out[f"{name}.{pname}"] = (param if state.enabled else getattr(m, adapted)).detach()
    return out


def load_resadapter_state_dict(backbone: Any, state_dict: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`resadapter_state_dict` (same keys and shapes, else a ``ValueError``)."""
    unet = _unet(backbone)
    state = _state(unet)
    own = resadapter_state_dict(unet)
    missing, unexpected = set(own) - set(state_dict), set(state_dict) - set(own)
    if missing or unexpected:
        raise ValueError(f"ResAdapter state dict: missing {_names(missing)}; unexpected {_names(unexpected)}")
    for key, t in state_dict.items():
        if tuple(t.shape) != tuple(own[key].shape):
            raise ValueError(f"ResAdapter state dict: {key} has shape {tuple(t.shape)}, model {tuple(own[key].shape)}")
    norms = _adapted_norms(unet)
    with torch.no_grad():
        for key, t in state_dict.items():
            module, _, pname = key.rpartition(".")
            if module in norms and not state.enabled:
                getattr(norms[module], _ADAPTED[pname == "bias"]).copy_(t)
            else:
                unet.get_parameter(key).copy_(t)


# ------------------------------------------------------------------------------------------- official file format
def _classify(sd: dict[str, torch.Tensor]) -> str:
    return "lora" if sd and all(k.startswith(KOHYA_PREFIX) for k in sd) else "norms"


def _read_files(source: str | os.PathLike | Iterable[str | os.PathLike], load_norms: bool
                ) -> dict[str, tuple[Path, dict[str, torch.Tensor]]]:
    from safetensors.torch import load_file

    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        folder = Path(source)
        paths = []
        kinds = [(LORA_FILE, *LEGACY_LORA_FILES)] + ([(NORM_FILE, *LEGACY_NORM_FILES)] if load_norms else [])
        for names in kinds:
            found = next((folder / n for n in names if (folder / n).is_file()), None)
            if found is not None:
                paths.append(found)
        if not paths:
            raise FileNotFoundError(f"no ResAdapter file ({LORA_FILE} / {NORM_FILE}) in {folder}")
    else:
        paths = [Path(source)] if isinstance(source, (str, os.PathLike)) else [Path(p) for p in source]
    out: dict[str, tuple[Path, dict[str, torch.Tensor]]] = {}
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"ResAdapter file not found: {path}")
        sd = load_file(str(path))
        kind = _classify(sd)
        if kind in out:
            raise ValueError(f"two ResAdapter {kind} files given: {out[kind][0]} and {path}")
        out[kind] = (path, sd)
    return out


def _check_lora(unet: nn.Module, path: Path, sd: dict[str, torch.Tensor]) -> dict[str, tuple]:
    """Validate an official LoRA file against the UNet; return ``module -> (down, up, alpha)``."""
    layers = _lora_layers(unet)
    by_key = {kohya_key(n): n for n in layers}
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in sd.items():
        module, _, suffix = key.partition(".")
        if suffix not in _KOHYA_SUFFIXES:
            raise ValueError(f"{path}: unexpected key {key!r} (a ResAdapter LoRA file holds {_KOHYA_SUFFIXES})")
        grouped.setdefault(module, {})[suffix] = t
    hint = f"The file has {_file_samplers(sd)}; this UNet has {_model_samplers(layers)}."
    missing, unexpected = set(by_key) - set(grouped), set(grouped) - set(by_key)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit this UNet. Missing: {_names(missing) or 'none'}; unexpected: "
            f"{_names(unexpected) or 'none'}. {hint} Use the ResAdapter release for this base model."
        )
    out = {}
    for key, name in by_key.items():
        tensors, layer = grouped[key], layers[name]
        for suffix in ("lora_down.weight", "lora_up.weight"):
            if suffix not in tensors:
                raise ValueError(f"{path}: missing key {key}.{suffix}")
        down, up = tensors["lora_down.weight"], tensors["lora_up.weight"]
        a_shape = tuple(layer.lora_A[ADAPTER_NAME].weight.shape)
        b_shape = tuple(layer.lora_B[ADAPTER_NAME].weight.shape)
        rank = down.shape[0] if down.ndim == 4 else None
        if (down.ndim == 4 and up.ndim == 4 and tuple(down.shape[1:]) == a_shape[1:]
                and (up.shape[0], *up.shape[2:]) == (b_shape[0], *b_shape[2:]) and up.shape[1] == rank
                and rank != a_shape[0]):
            raise ValueError(
                f"{path} has LoRA rank {rank}, this ResAdapter r={a_shape[0]}: inject with "
                f"ResAdapterConfig(r={rank}) (e.g. resadapter_v1_sdxl_extrapolation uses r=32)"
            )
        if tuple(down.shape) != a_shape or tuple(up.shape) != b_shape:
            raise ValueError(
                f"{path} does not fit this UNet: {key}.lora_down.weight / .lora_up.weight have shapes "
                f"{tuple(down.shape)} / {tuple(up.shape)}, the model needs {a_shape} / {b_shape}. {hint} "
                "Use the ResAdapter release for this base model."
            )
        alpha = float(tensors["alpha"]) if "alpha" in tensors else float(rank)  # diffusers: no alpha -> alpha = r
        out[name] = (down, up, alpha)
    return out


def _check_norms(unet: nn.Module, path: Path, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    norms = _adapted_norms(unet)
    if not norms:
        raise ValueError(
            f"{path} holds ResNet norms but this ResAdapter was injected with train_norms=False: inject with "
            "train_norms=True, or load the LoRA file only (load_norms=False)"
        )
    expected = {f"{n}.{p}": getattr(m, p) for n, m in norms.items() for p in ("weight", "bias")}
    hint = (f"The file has {_norm_base(len(sd))}; this UNet has {_norm_base(len(expected))}. "
            "Use the ResAdapter release for this base model.")
    missing, unexpected = set(expected) - set(sd), set(sd) - set(expected)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit this UNet. Missing: {_names(missing) or 'none'}; unexpected: "
            f"{_names(unexpected) or 'none'}. {hint}"
        )
    for key, t in sd.items():
        if tuple(t.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"{path} does not fit this UNet: {key} has shape {tuple(t.shape)}, the model needs "
                f"{tuple(expected[key].shape)}. {hint}"
            )
    return sd


def load_resadapter(
    backbone: Any, source: str | os.PathLike | Iterable[str | os.PathLike], load_norms: bool = True
) -> dict[str, Any]:
    """Load official ResAdapter files, unchanged, into an injected UNet.

    Args:
        source: a release folder (``pytorch_lora_weights.safetensors`` and/or ``diffusion_pytorch_model.safetensors``,
            or their pre-2024-03-31 names), one file, or a list of files (told apart by their keys).
        load_norms: read the norm file of a folder (official ComfyUI skips it for ``*_interpolation`` models).

    Everything is validated before anything is written: a file for another base, another rank or with missing
    keys raises a ``ValueError`` naming the base the file seems to be for. The LoRA file's ``.alpha`` replaces
    ``lora_alpha`` (the strength is kept). Norms are absolute values; while the adapter is off they are stored as
    the adapted values and appear on :func:`enable_resadapter`.

    Returns:
        ``{"lora": path or None, "norms": path or None, "alpha": {module: alpha}}``.
    """
    unet = _unet(backbone)
    state = _state(unet)
    files = _read_files(source, load_norms)
    lora = _check_lora(unet, *files["lora"]) if "lora" in files else {}
    norm_sd = _check_norms(unet, *files["norms"]) if "norms" in files else {}
    layers, norms = _lora_layers(unet), _adapted_norms(unet)
    with torch.no_grad():
        for name, (down, up, alpha) in lora.items():
            layer = layers[name]
            layer.lora_A[ADAPTER_NAME].weight.copy_(down)
            layer.lora_B[ADAPTER_NAME].weight.copy_(up)
            layer.lora_alpha[ADAPTER_NAME] = alpha
            layer.set_scale(ADAPTER_NAME, state.strength)
        for key, t in norm_sd.items():
            module, _, pname = key.rpartition(".")
            m = norms[module]
            target = getattr(m, pname) if state.enabled else getattr(m, _ADAPTED[pname == "bias"])
            target.copy_(t)
    return {
        "lora": files["lora"][0] if "lora" in files else None,
        "norms": files["norms"][0] if "norms" in files else None,
        "alpha": {n: a for n, (_, _, a) in lora.items()},
    }


def save_resadapter(
    backbone: Any, folder: str | os.PathLike, lora_dtype: torch.dtype = torch.float16
) -> list[Path]:
    """Write the official files to ``folder``: ``pytorch_lora_weights.safetensors`` (Kohya keys with ``.alpha``,
    ``lora_dtype``, fp16 like the release; pass ``torch.float32`` for a lossless file) and, when the norms are
    adapted, ``diffusion_pytorch_model.safetensors`` (absolute fp32 values, the adapted ones also while off).
    diffusers' ``pipe.load_lora_weights(folder)`` and ``unet.load_state_dict(load_file(...), strict=False)``
    (the official loader) read them. Returns the written paths."""
    from safetensors.torch import save_file

    unet = _unet(backbone)
    state = _state(unet)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lora: dict[str, torch.Tensor] = {}
    for name, layer in _lora_layers(unet).items():
        key = kohya_key(name)
        lora[f"{key}.alpha"] = torch.tensor(float(layer.lora_alpha[ADAPTER_NAME]), dtype=lora_dtype)
        lora[f"{key}.lora_down.weight"] = layer.lora_A[ADAPTER_NAME].weight.detach().to("cpu", lora_dtype).contiguous()
        lora[f"{key}.lora_up.weight"] = layer.lora_B[ADAPTER_NAME].weight.detach().to("cpu", lora_dtype).contiguous()
    written = [folder / LORA_FILE]
    save_file(lora, str(written[0]))
    norms = {}
    for name, m in _adapted_norms(unet).items():
        for pname, param, adapted in zip(("weight", "bias"), (m.weight, m.bias), _ADAPTED):
            value = param if state.enabled else getattr(m, adapted)
            norms[f"{name}.{pname}"] = value.detach().to("cpu", torch.float32).contiguous()
    if norms:
        written.append(folder / NORM_FILE)
        save_file(norms, str(written[1]))
    return written
