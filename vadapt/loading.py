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

from vadapt.checkpoint import AdapterCheckpointError, load_adapter_into, load_checked, read_manifest
from vadapt.contracts import TaskCapabilities
from vadapt.preprocessing import Preprocessing
from vadapt.weights import load_weights_only

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


def load_adapter(path: str | os.PathLike, weights: str | None = None, raw_inputs: bool = True) -> BaseTask:
    """Rebuild the task stored in ``path`` and load its tensors; ready for ``eval()``.

    Args:
        weights: where the backbone's upstream weights are, overriding the manifest's ``weights`` (the
            training machine's path rarely exists elsewhere). Ignored for merged checkpoints.
        raw_inputs: the task takes file values as they are and applies the value scale / offset training used
            (``task.preprocessing``, from the checkpoint), so ``task(x)`` on an image read from disk predicts as
            training saw it. ``False``: it takes values already scaled the way the datamodule fed them (to go
            on training with the datamodule). Checkpoints from before the record take values as they are.
    """
    manifest = read_manifest(path)
    problem = _manifest_problem(manifest)
    if problem:
        raise AdapterCheckpointError(f"{path} has a damaged vadapt manifest: {problem}")
    task_class = checked_task_class(manifest["task"], path)
    init_args = dict(manifest["init_args"])
    if manifest["merged"]:
        init_args.update(weights=None, adapter=None)
    elif weights is not None:
        init_args["weights"] = weights
    task = _build_stored(task_class, init_args, path)
    load_adapter_into(task, path, manifest)
    task.use_preprocessing(_record(manifest.get("preprocessing"), path), raw_inputs)
    return task


def _record(value: Any, source: str | os.PathLike) -> Preprocessing | None:
    try:
        return Preprocessing.from_dict(value, str(source))
    except ValueError as exc:
        raise AdapterCheckpointError(str(exc)) from None


def _manifest_problem(manifest: Any) -> str | None:
    """What is missing or of the wrong type in a manifest read from a file, or None."""
    if not isinstance(manifest, dict):
        return f"it is a {type(manifest).__name__}, not an object"
    for key, kind in (("task", str), ("init_args", dict), ("merged", bool), ("backbone", dict)):
        if not isinstance(manifest.get(key), kind):
            return f"its {key!r} is {manifest.get(key)!r}, not a {kind.__name__}"
    if not isinstance(manifest["backbone"].get("name"), str):
        return "its backbone has no name"
    return None


def checked_task_class(class_path: Any, source: str | os.PathLike) -> str:
    """``class_path`` if it names one of vadapt's own task classes; anything else is refused before it is
    imported: a file must not choose which code runs."""
    known = known_task_classes()
    if not isinstance(class_path, str) or class_path not in known:
        valid = ", ".join(sorted({f"{c.__module__}.{c.__qualname__}" for c in known.values()}))
        raise AdapterCheckpointError(f"{source} names the task class {class_path!r}, which is not one of vadapt's "
                                     f"tasks; vadapt imports no other class from a checkpoint. Valid: {valid}")
    return class_path


def _build_stored(class_path: str, init_args: dict[str, Any], source: str | os.PathLike) -> BaseTask:
    """``build_task`` for init args read from a checkpoint: arguments that do not fit the class are the file's
    fault, an ``AdapterCheckpointError`` naming it."""
    from jsonargparse import ArgumentError

    try:
        return build_task(class_path, init_args)
    except ArgumentError as exc:
        detail = " ".join(str(exc).split())
        raise AdapterCheckpointError(f"{source}: its stored arguments do not fit {class_path} "
                                     f"({detail[:300]}{'...' if len(detail) > 300 else ''})") from None


def load_lightning_checkpoint(path: str | os.PathLike, weights: str | None = None, raw_inputs: bool = True
                              ) -> BaseTask:
    """Rebuild a task from a Lightning ``.ckpt`` written by a vadapt task (read with ``weights_only=True``)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = load_weights_only(path, AdapterCheckpointError)
    if not isinstance(ckpt, dict) or "vadapt_task" not in ckpt:
        raise AdapterCheckpointError(f"{path} is not a Lightning checkpoint written by a vadapt task")
    task_class = checked_task_class(ckpt["vadapt_task"], path)
    hparams, state = ckpt.get("hyper_parameters"), ckpt.get("state_dict")
    if not isinstance(hparams, dict) or not isinstance(state, dict):
        raise AdapterCheckpointError(f"{path} lacks the hyper_parameters or state_dict of a Lightning checkpoint")
    init_args = {k: v for k, v in hparams.items() if not k.startswith("_")}
    if weights is not None:
        init_args["weights"] = weights
    task = _build_stored(task_class, init_args, path)
    made_for = {"backbone": init_args.get("backbone"), "adapter": init_args.get("adapter")}
    load_checked(task, state, str(path), made_for, training=True)
    task.use_preprocessing(_record(ckpt.get("vadapt_preprocessing"), path), raw_inputs)
    return task


def load_task(path: str | os.PathLike, weights: str | None = None, raw_inputs: bool = True) -> BaseTask:
    """A task from either kind of file: vadapt ``.safetensors`` or Lightning ``.ckpt`` (``raw_inputs``: see
    :func:`load_adapter`)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if Path(path).suffix == ".safetensors":
        return load_adapter(path, weights, raw_inputs)
    return load_lightning_checkpoint(path, weights, raw_inputs)


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
