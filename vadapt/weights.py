"""Finding and reading upstream checkpoint files, and loading them strictly.

A backbone entry names its upstream weights (file name, download URL or hub id). ``weights`` given by the
user is one of:

* ``None``: random initialisation (tests, tiny variants);
* ``"pretrained"``: the upstream file, looked up in ``$VADAPT_WEIGHTS_DIR``, ``~/.cache/vadapt/weights`` and
  the working directory, else downloaded from the URL / hub id (for users who are online);
* a path to a local file in the upstream format (or a folder, for bases stored as folders: diffusers).

Files are read with ``safetensors`` or ``torch.load(weights_only=True)``: nothing is ever unpickled.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

PRETRAINED = "pretrained"


@dataclass(frozen=True)
class WeightsSource:
    """Where the upstream weights of a backbone live."""

    filename: str
    url: str | None = None
    hub_id: str | None = None
    #: returns the file's path when a pip package ships it (e.g. EfficientNet-Lite0), else None
    locate: Callable[[], str | None] | None = None


class WeightsNotFoundError(FileNotFoundError):
    """The requested weights file is neither on disk nor downloadable."""


class WeightsMismatchError(RuntimeError):
    """A checkpoint does not fit the model: keys are missing, unexpected or of another shape."""


def search_dirs() -> list[Path]:
    """Folders searched for a weights file, in order: ``$VADAPT_WEIGHTS_DIR`` (when set), ``~/.cache/vadapt/weights``,
    the working directory."""
    dirs = []
    if os.environ.get("VADAPT_WEIGHTS_DIR"):
        dirs.append(Path(os.environ["VADAPT_WEIGHTS_DIR"]))
    dirs += [Path.home() / ".cache" / "vadapt" / "weights", Path.cwd()]
    return dirs


def resolve_weights(weights: str | os.PathLike | None, source: WeightsSource | None, backbone: str) -> Path | None:
    """Return the local file to load for ``weights`` (see module docstring), or ``None`` for random init."""
    if weights is None:
        return None
    if str(weights) != PRETRAINED:
        path = Path(weights).expanduser()
        if not (path.is_file() or path.is_dir()):
            expected = f" (upstream file name: {source.filename})" if source else ""
            raise WeightsNotFoundError(f"Weights file for backbone {backbone!r} not found: {path}{expected}")
        return path
    if source is None:
        raise WeightsNotFoundError(f"Backbone {backbone!r} has no published weights; use weights=None")
    shipped = source.locate() if source.locate else None
    if shipped and Path(shipped).exists():
        return Path(shipped)
    for folder in search_dirs():
        if (folder / source.filename).is_file():
            return folder / source.filename
    errors = []
    target = search_dirs()[-2] if not os.environ.get("VADAPT_WEIGHTS_DIR") else search_dirs()[0]
    if source.url:
        try:
            import torch.hub

            target.mkdir(parents=True, exist_ok=True)
            tmp = target / (source.filename + ".part")
            torch.hub.download_url_to_file(source.url, str(tmp), progress=True)
            tmp.replace(target / source.filename)
            return target / source.filename
        except Exception as exc:  # network errors vary by platform; all mean "not downloadable"
            errors.append(f"download from {source.url} failed: {exc}")
    if source.hub_id:
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(source.hub_id, source.filename))
        except Exception as exc:
            errors.append(f"hub download of {source.hub_id}/{source.filename} failed: {exc}")
    looked = ", ".join(str(d) for d in search_dirs())
    raise WeightsNotFoundError(
        f"Pretrained weights for backbone {backbone!r} not found. Expected the file {source.filename!r} in one "
        f"of: {looked} (set VADAPT_WEIGHTS_DIR to its folder), or pass weights=/path/to/{source.filename}. "
        + " ".join(errors)
    )


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file without unpickling code (safetensors, or torch.load with weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors' errors name no file
            raise WeightsMismatchError(f"{path} is not a readable safetensors file ({exc})") from None
    obj = load_weights_only(path)
    if not isinstance(obj, dict):
        raise WeightsMismatchError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def load_weights_only(path: str | os.PathLike, error: type[Exception] = WeightsMismatchError):
    """``torch.load(path, weights_only=True)`` on the CPU; a file it refuses raises ``error`` with one sentence
    naming the file (never torch's advice to retry without ``weights_only``: vadapt does not unpickle)."""
    import pickle

    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):
            raise error(pickle_refusal(path)) from None
        raise error(f"{path} is not a PyTorch weights file ({_torch_reason(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - zip, EOF, OS errors: all mean "not readable as weights"
        raise error(f"{path} is not a PyTorch weights file ({_torch_reason(exc)})") from None


def pickle_refusal(path: str | os.PathLike) -> str:
    """The sentence for a checkpoint holding pickled objects (which ``weights_only`` loading refuses)."""
    return (f"{path} holds pickled Python objects, which vadapt never unpickles (unpickling can run any code); "
            "to convert it, load it yourself in an environment you trust and save only its tensors, with "
            "safetensors.torch.save_file(state_dict, 'weights.safetensors') or torch.save(state_dict) of a dict "
            "of plain tensors")


def _torch_reason(exc: BaseException) -> str:
    """The cause in one of torch.load's error texts, without its advice on unsafe loading."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line]
    return lines[0] if lines else type(exc).__name__


def unwrap_state_dict(obj: dict, keys: tuple[str, ...] = ("model", "state_dict", "module")) -> dict:
    """Unwrap the common containers (``{"model": sd}``, ``{"state_dict": sd}``) around a state dict."""
    for key in keys:
        if key in obj and isinstance(obj[key], dict):
            return obj[key]
    return obj


def strip_prefix(state_dict: dict, prefix: str) -> dict:
    """``state_dict`` with ``prefix`` removed from the keys that start with it; other keys unchanged."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def load_strict(module: nn.Module, state_dict: dict, source: str) -> None:
    """Load ``state_dict`` into ``module``; raise if any key is missing, unexpected or mis-shaped."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = [f"Checkpoint {source} does not fit the model:"]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if keys:
                more = f" ... and {len(keys) - 8} more" if len(keys) > 8 else ""
                parts.append(f"  {len(keys)} {label} keys: {', '.join(keys[:8])}{more}")
        raise WeightsMismatchError("\n".join(parts))
    module.load_state_dict(state_dict, strict=False)
