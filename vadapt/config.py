"""Turning config objects into plain JSON-safe values (hyperparameters, checkpoint manifests).

Building tasks *from* configs is a service above the tasks: :mod:`vadapt.loading`.
"""

from __future__ import annotations

import dataclasses
from typing import Any


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
