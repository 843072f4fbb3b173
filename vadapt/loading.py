"""Rebuilding tasks from files: adapter checkpoints, Lightning checkpoints and YAML configs.

A service above the tasks: it reads a file (:mod:`vadapt.checkpoint` defines the adapter-checkpoint format,
below the tasks) and builds the task it names with jsonargparse from ``{"class_path": ..., "init_args": ...}``,
exactly as LightningCLI builds it from YAML, so a typo in a key is an error that names the key wherever the
config comes from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vadapt.checkpoint import AdapterCheckpointError, load_adapter_into, load_checked, read_manifest
from vadapt.contracts import TaskCapabilities

if TYPE_CHECKING:
    from vadapt.tasks.base import BaseTask


def build_task(class_path: str, init_args: dict[str, Any]):
    """Instantiate a task (a ``BaseTask`` subclass) from its class path and init args (those stored by an earlier
    vadapt first go through the class's ``upgrade_init_args``)."""
    from jsonargparse import ArgumentParser

    from vadapt.adapters import enable_adapter_configs
    from vadapt.tasks.base import BaseTask

    cls = known_task_classes().get(class_path)  # vadapt's own tasks: their stored arguments may need upgrading
    if cls is not None:
        init_args = cls.upgrade_init_args(init_args)
    enable_adapter_configs()
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model", type=BaseTask)
    cfg = parser.parse_object({"model": {"class_path": class_path, "init_args": init_args}})
    return parser.instantiate(cfg).model


def task_from_config_file(path: str, **overrides: Any):
    """Build only the ``model`` section of a LightningCLI YAML config (no data, no trainer).

    ``overrides`` replace init args (e.g. ``weights=None`` to count parameters without the weight file).
    """
    import yaml

    with open(path) as f:
        config = yaml.safe_load(f) or {}
    model = config.get("model")
    if not isinstance(model, dict) or "class_path" not in model:
        raise ValueError(f"{path} has no `model: {{class_path: ..., init_args: ...}}` section")
    return build_task(model["class_path"], {**(model.get("init_args") or {}), **overrides})


def load_adapter(path: str | os.PathLike, weights: str | None = None) -> BaseTask:
    """Rebuild the task stored in ``path`` and load its tensors; ready for ``eval()``.

    Args:
        weights: where the backbone's upstream weights are, overriding the manifest's ``weights`` (the
            training machine's path rarely exists elsewhere). Ignored for merged checkpoints.
    """
    manifest = read_manifest(path)
    init_args = dict(manifest["init_args"])
    if manifest["merged"]:
        init_args.update(weights=None, adapter=None)
    elif weights is not None:
        init_args["weights"] = weights
    task = build_task(manifest["task"], init_args)
    load_adapter_into(task, path, manifest)
    return task


def load_lightning_checkpoint(path: str | os.PathLike, weights: str | None = None) -> BaseTask:
    """Rebuild a task from a Lightning ``.ckpt`` written by a vadapt task (read with ``weights_only=True``)."""
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AdapterCheckpointError(f"cannot read {path} as a weights-only Lightning checkpoint: {exc}") from exc
    if not isinstance(ckpt, dict) or "vadapt_task" not in ckpt:
        raise AdapterCheckpointError(f"{path} is not a Lightning checkpoint written by a vadapt task")
    init_args = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
    if weights is not None:
        init_args["weights"] = weights
    task = build_task(ckpt["vadapt_task"], init_args)
    made_for = {"backbone": init_args.get("backbone"), "adapter": init_args.get("adapter")}
    load_checked(task, ckpt["state_dict"], str(path), made_for)
    return task


def load_task(path: str | os.PathLike, weights: str | None = None) -> BaseTask:
    """A task from either kind of file: vadapt ``.safetensors`` or Lightning ``.ckpt``."""
    if Path(path).suffix == ".safetensors":
        return load_adapter(path, weights)
    return load_lightning_checkpoint(path, weights)


def known_task_classes() -> dict[str, type[BaseTask]]:
    """The task classes vadapt ships, by both their full and their short (``vadapt.tasks.X``) class paths."""
    import vadapt.tasks

    classes = {}
    for short in vadapt.tasks.TASKS:
        cls = getattr(vadapt.tasks, short.rpartition(".")[2])
        classes[short] = classes[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return classes


def capabilities_of(manifest: dict[str, Any]) -> TaskCapabilities:
    """What the task stored in an adapter checkpoint offers, without building it: the manifest's
    ``capabilities``, or for files written before they were stored, the declaration of the task class it names
    (looked up among vadapt's own tasks, never imported by name)."""
    if "capabilities" in manifest:
        return TaskCapabilities.from_dict(manifest["capabilities"])
    cls = known_task_classes().get(manifest.get("task", ""))
    if cls is None:
        raise AdapterCheckpointError(f"the checkpoint's task {manifest.get('task')!r} is not one of vadapt's tasks "
                                     "and the file does not say what it can do")
    return cls.capabilities_for(manifest.get("init_args") or {})
