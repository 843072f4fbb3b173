"""The backbone registry and the helpers backbone families share.

The interface itself (:class:`Backbone`, :class:`BlockStack`) lives in :mod:`vadapt.contracts`, below both the
backbones and the adapters; it is re-exported here for the families.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vadapt.bands import RGB, BandInit
from vadapt.contracts import Backbone, BlockStack
from vadapt.registry import Registry
from vadapt.weights import WeightsSource, resolve_weights


def resolve_out_indices(out_indices: Sequence[int] | None, depth: int, n: int = 4) -> tuple[int, ...]:
    """Validated, non-negative block indices; default ``n`` evenly spaced ending with the last (ViT-B: 2,5,8,11)."""
    if out_indices is None:
        n = min(n, depth)
        return tuple(depth - 1 - (n - 1 - i) * (depth // n) for i in range(n))
    if not out_indices or not all(-depth <= i < depth for i in out_indices):
        raise ValueError(f"out_indices {list(out_indices)} must be non-empty and within the {depth} blocks")
    return tuple(i % depth for i in out_indices)


# ---- registry ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneEntry:
    """A named backbone: its family's builder, architecture keywords and upstream weights."""

    name: str
    family: str
    builder: Callable[..., Backbone]
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: WeightsSource | None = None
    tiny: bool = False
    description: str = ""


BACKBONES: Registry[BackboneEntry] = Registry("backbone")


def register_backbone(
    name: str,
    family: str,
    builder: Callable[..., Backbone],
    weights: WeightsSource | None = None,
    tiny: bool = False,
    description: str = "",
    **kwargs: Any,
) -> BackboneEntry:
    """Add a :class:`BackboneEntry` to ``BACKBONES`` and return it; ``kwargs`` are the builder's architecture keywords
    (overridable at :func:`create_backbone`). Raises ``ValueError`` for an invalid or already registered name."""
    return BACKBONES.register(name, BackboneEntry(name, family, builder, kwargs, weights, tiny, description))


def create_backbone(
    name: str,
    weights: str | None = None,
    bands: Sequence[str] = RGB,
    extra_band_init: BandInit = "copy",
    **kwargs: Any,
) -> Backbone:
    """Build a registered backbone, load its weights, adapt its first layer to ``bands`` and freeze it.

    Args:
        name: registry name (``vadapt list backbones``).
        weights: ``None`` (random init), ``"pretrained"`` or a path to an upstream checkpoint file.
        bands: input band names; bands the pretrained first layer knows keep their filters.
        extra_band_init: how filters of new bands start (see :mod:`vadapt.bands`).
        kwargs: family options, e.g. ``img_size`` (the explicit position-embedding size), ``out_indices``.
    """
    entry = BACKBONES.get(name)
    path = resolve_weights(weights, entry.weights, name)
    backbone = entry.builder(**{**entry.kwargs, **kwargs})
    backbone.name = name
    if path is not None:
        backbone.load_pretrained(str(path))
    backbone.set_bands(bands, extra_band_init)
    backbone.freeze()
    return backbone


__all__ = ["BACKBONES", "Backbone", "BackboneEntry", "BlockStack", "create_backbone", "register_backbone",
           "resolve_out_indices"]
