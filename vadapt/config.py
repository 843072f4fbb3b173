"""Turning configs into objects and back: the one path used by the CLI, ``vadapt params`` and checkpoints.

Tasks are built with jsonargparse from ``{"class_path": ..., "init_args": ...}``, exactly as LightningCLI
builds them from YAML, so a typo in a key is an error that names the key, wherever the config comes from.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def enable_adapter_configs() -> None:
    """Let jsonargparse accept any ``AdapterConfig`` subclass (dataclasses are final to it by default)."""
    from jsonargparse import set_parsing_settings

    from vadapt.adapters import AdapterConfig

    set_parsing_settings(subclasses_enabled=[AdapterConfig])


def to_plain(value: Any) -> Any:
    """JSON-safe form of init args: dataclass configs become ``{"class_path", "init_args"}`` dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        return {
            "class_path": f"{cls.__module__}.{cls.__qualname__}",
            "init_args": {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)},
        }
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def as_adapter_config(value: Any):
    """An ``AdapterConfig`` from itself, ``None``, or a ``{"class_path", "init_args"}`` dict.

    LightningCLI hands nested dataclass configs to the task as plain dicts in some code paths; this makes
    the task accept both.
    """
    from vadapt.adapters import AdapterConfig

    if value is None or isinstance(value, AdapterConfig):
        return value
    if isinstance(value, dict) and "class_path" in value:
        import importlib

        module, _, name = value["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), name, None)
        if not (isinstance(cls, type) and issubclass(cls, AdapterConfig)):
            raise ValueError(f"adapter class_path {value['class_path']!r} is not an AdapterConfig subclass")
        return cls(**(value.get("init_args") or {}))
    raise ValueError(f"adapter must be an AdapterConfig or {{class_path, init_args}}, got {value!r}")


def build_task(class_path: str, init_args: dict[str, Any]):
    """Instantiate a task (a ``BaseTask`` subclass) from its class path and init args."""
    from jsonargparse import ArgumentParser

    from vadapt.tasks.base import BaseTask

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
