"""What every adapter method shares: its config base class, target matching and the method registry.

Adapters know nothing of a particular backbone: they attach through the backbone's ``blocks`` handle, its
``block_layout`` (``"tokens"`` ``(B, N, C)``, ``"grid"`` ``(B, H, W, C)`` or ``"conv"`` ``(B, C, H, W)``)
and module names. A backbone's class attributes ``lora_targets`` and ``adapter_targets`` give the default
module names when a config leaves ``target_modules`` empty.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from vadapt.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from vadapt.contracts import Backbone


@dataclass
class AdapterConfig:
    """Fields every method shares (names as peft names them).

    Attributes:
        target_modules: module names (suffix match, as in peft) or one regex (full match) to adapt;
            ``None`` uses the backbone's default for the method.
        exclude_modules: module names (suffix match) never adapted.
    """

    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | None = None

    #: registry name of the method; set by each subclass
    method = ""

    def to_dict(self) -> dict:
        """The dataclass fields and their values (``method`` is a class attribute, not a field: not included)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class AdapterMethod:
    """How to inject one method into a backbone (in place) and, if it can, fold it back into plain weights."""

    config_class: type[AdapterConfig]
    inject: Callable[[Backbone, AdapterConfig], None]
    merge: Callable[[Backbone], None] | None = None


ADAPTERS: Registry[AdapterMethod] = Registry("adapter")


def matches(name: str, targets: Sequence[str] | str) -> bool:
    """peft's rule: a string is a full-match regex; a list matches a name equal to, or ending in ``.X``."""
    import re

    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def find_targets(
    root: nn.Module,
    targets: Sequence[str] | str,
    exclude: Sequence[str] | None = None,
    root_name: str = "backbone",
) -> list[str]:
    """Names of the modules under ``root`` that ``targets`` select; a clear error when none match."""
    found = [
        name for name, _ in root.named_modules()
        if name and matches(name, targets) and not (exclude and matches(name, exclude))
    ]
    if not found:
        names = [n for n, m in root.named_modules() if n and not list(m.children())]
        suffixes = sorted({n.split(".")[-1] for n in names})
        sample = ", ".join(names[:12])
        raise ValueError(
            f"target_modules={targets!r} (exclude_modules={exclude!r}) matched no module of the {root_name}. "
            f"Leaf module names there end in: {', '.join(suffixes[:30])}. Examples: {sample}"
        )
    return found


def default_targets(backbone: Backbone, attribute: str, configured: list[str] | str | None) -> list[str] | str:
    """``configured`` when it is set, else the backbone's class default named by ``attribute`` (``"lora_targets"`` or
    ``"adapter_targets"``) as a list. Raises ``ValueError`` when neither names a target."""
    if configured:
        return configured
    default = getattr(backbone, attribute, None)
    if not default:
        raise ValueError(
            f"Backbone {backbone.name!r} has no default {attribute}; set target_modules in the adapter config"
        )
    return list(default)


def enable_adapter_configs() -> None:
    """Let jsonargparse accept any ``AdapterConfig`` subclass (dataclasses are final to it by default)."""
    from jsonargparse import set_parsing_settings

    set_parsing_settings(subclasses_enabled=[AdapterConfig])


def as_adapter_config(value: Any) -> AdapterConfig | None:
    """An ``AdapterConfig`` from itself, ``None``, or a ``{"class_path", "init_args"}`` dict.

    LightningCLI hands nested dataclass configs to the task as plain dicts in some code paths; this makes
    the task accept both. The class path is looked up among the registered methods' config classes, never
    imported: a file cannot choose what vadapt imports.
    """
    if value is None or isinstance(value, AdapterConfig):
        return value
    if isinstance(value, dict) and "class_path" in value:
        path = value["class_path"]
        known = {f"{m.config_class.__module__}.{m.config_class.__qualname__}": m.config_class
                 for m in map(ADAPTERS.get, ADAPTERS.names())}
        by_name = {c.__qualname__: c for c in known.values()}
        cls = known.get(path) or by_name.get(path.rpartition(".")[2])
        if cls is None:
            raise ValueError(f"adapter class_path {path!r} is not a registered AdapterConfig subclass; known: "
                             f"{', '.join(sorted(by_name))}")
        return cls(**(value.get("init_args") or {}))
    raise ValueError(f"adapter must be an AdapterConfig or {{class_path, init_args}}, got {value!r}")
