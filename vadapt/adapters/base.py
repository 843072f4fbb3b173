"""What every adapter method shares: its config base class, target matching and the method registry.

Adapters know nothing of a particular backbone: they attach through the backbone's ``blocks`` handle, its
``block_layout`` (``"tokens"`` ``(B, N, C)``, ``"grid"`` ``(B, H, W, C)`` or ``"conv"`` ``(B, C, H, W)``)
and module names. A backbone's class attributes ``lora_targets`` and ``adapter_targets`` give the default
module names when a config leaves ``target_modules`` empty.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from vadapt.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from vadapt.backbones import Backbone


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
    if configured:
        return configured
    default = getattr(backbone, attribute, None)
    if not default:
        raise ValueError(
            f"Backbone {backbone.name!r} has no default {attribute}; set target_modules in the adapter config"
        )
    return list(default)
