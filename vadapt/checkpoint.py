"""Adapter checkpoints: the one contract shared by training, the CLI, inference and the app.

One ``.safetensors`` file holds every tensor that training changed (adapter *and* head) and, in its header
metadata under ``vadapt_manifest``, a JSON manifest: the task class and its resolved init args (backbone
name, weights, adapter config, bands, normalisation statistics, class names), how training read its data
(value scale / offset, nodata, whole-image resize, pixel size: :mod:`vadapt.preprocessing`), the backbone's
metadata, the parameter counts and the vadapt version. Given the backbone's upstream weights, the file rebuilds
the model and its preprocessing (:mod:`vadapt.loading` does that: it sits above the tasks, this format below them). A
*merged* checkpoint (``vadapt export --merge``) instead holds the full weights with
LoRA folded in and needs nothing else.

Files are written to a temporary name and renamed, so a crash never leaves a half-written checkpoint.
Nothing is unpickled when reading.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vadapt.version import __version__

if TYPE_CHECKING:
    from vadapt.tasks.base import BaseTask

FORMAT = "vadapt-adapter/1"
MANIFEST_KEY = "vadapt_manifest"


class AdapterCheckpointError(ValueError):
    """The file is not a vadapt adapter checkpoint, or it does not fit the model it is loaded into."""


def manifest_for(task: BaseTask, merged: bool = False) -> dict[str, Any]:
    hp = task.plain_hparams()
    return {
        "format": FORMAT,
        "vadapt_version": __version__,
        "task": f"{type(task).__module__}.{type(task).__qualname__}",
        "capabilities": task.capabilities.to_dict(),
        "init_args": hp,
        "merged": merged,
        "backbone": task.backbone.describe(),
        "adapter": hp.get("adapter"),
        "bands": list(task.backbone.bands),
        "mean": task.input_mean.flatten().tolist(),
        "std": task.input_std.flatten().tolist(),
        "class_names": hp.get("class_names"),
        # how training read its data (vadapt.preprocessing): prediction reads raw files the same way
        "preprocessing": task.preprocessing.to_dict() if getattr(task, "preprocessing", None) else None,
        "parameters": task.parameter_counts(),
    }


def save_adapter(task: BaseTask, path: str | os.PathLike, merged: bool = False) -> Path:
    """Write ``task``'s trained tensors (all tensors when ``merged``) and manifest to ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = manifest_for(task, merged)
    if merged:
        state = {k: v.detach().cpu().contiguous() for k, v in task.state_dict().items()}
    else:
        state = task.adapter_state_dict()
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={MANIFEST_KEY: json.dumps(manifest)})
    umask = os.umask(0)  # safetensors creates files 0600; an adapter is shared like any file: 0666 less the umask
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
    return path


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:
        raise AdapterCheckpointError(f"{path} is not a safetensors file ({exc})") from exc
    if MANIFEST_KEY not in metadata:
        raise AdapterCheckpointError(f"{path} is a safetensors file without a vadapt manifest")
    try:
        manifest = json.loads(metadata[MANIFEST_KEY])
    except json.JSONDecodeError as exc:
        raise AdapterCheckpointError(f"{path} has a damaged vadapt manifest (not JSON: {exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise AdapterCheckpointError(f"{path} has format {found!r}; this vadapt reads {FORMAT}")
    return manifest


def load_adapter_into(task: BaseTask, path: str | os.PathLike, manifest: dict[str, Any] | None = None) -> None:
    """Load an adapter checkpoint into an existing task; a clear error if it was made for another model."""
    from safetensors.torch import load_file

    manifest = manifest or read_manifest(path)
    made_for = {"backbone": manifest["backbone"]["name"], "adapter": manifest.get("adapter")}
    if made_for["backbone"] != task.backbone.name:
        raise AdapterCheckpointError(
            f"{path} was trained on backbone {made_for['backbone']!r}; this model's backbone is "
            f"{task.backbone.name!r}. Load it with vadapt.loading.load_adapter(path) to rebuild its own model."
        )
    load_checked(task, load_file(str(path)), str(path), made_for, full=manifest["merged"])


def load_checked(
    task: BaseTask, state: dict[str, torch.Tensor], source: str, made_for: dict[str, Any], full: bool = False,
    training: bool = False,
) -> None:
    """Load trained tensors (all tensors if ``full``; a Lightning checkpoint's ``training_state_dict`` if
    ``training``) into ``task``, refusing any that do not fit."""
    expected = task.state_dict() if full else task.training_state_dict() if training else task.adapter_state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(state) & set(expected)
                    if state[k].shape != expected[k].shape and not _data_sized(task, k))
    if missing or unexpected or shapes:
        mine = {"backbone": task.backbone.name, "adapter": task.plain_hparams().get("adapter")}
        detail = "; ".join(
            f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
            if keys
        )
        raise AdapterCheckpointError(
            f"{source} does not fit this model. The checkpoint was made for {made_for}; this model is {mine}. "
            f"({detail})"
        )
    with torch.no_grad():
        task.load_state_dict(state, strict=False)


def _data_sized(task: BaseTask, key: str) -> bool:
    """Whether ``key`` is a buffer whose size comes from the data (its module lists it in
    ``data_sized_buffers``, e.g. Point-PEFT's prior bank), so a stored size differing from a fresh model's is
    right; the module resizes it while loading."""
    module_name, _, name = key.rpartition(".")
    try:
        module = task.get_submodule(module_name) if module_name else task
    except AttributeError:
        return False
    return name in getattr(module, "data_sized_buffers", ())
