"""Parameter accounting: total / trainable / backbone / adapter / head, as a table or a dict."""

from __future__ import annotations

from torch import nn


def count_parameters(model: nn.Module, backbone: nn.Module | None = None) -> dict[str, int | float]:
    """Counts for ``model``; with ``backbone`` (a submodule) split into frozen backbone, adapter and head.

    ``backbone`` counts the frozen pretrained weights, ``adapter`` the trainable parameters inside the
    backbone, ``head`` everything outside it.
    """
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    counts: dict[str, int | float] = {"total": total, "trainable": trainable}
    if backbone is not None:
        inside = {id(p) for p in backbone.parameters()}
        counts["backbone"] = sum(p.numel() for p in backbone.parameters() if not p.requires_grad)
        counts["adapter"] = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
        counts["head"] = sum(p.numel() for p in model.parameters() if id(p) not in inside)
    counts["trainable_percent"] = round(100.0 * trainable / max(total, 1), 4)
    return counts


def format_table(counts: dict[str, int | float]) -> str:
    """The counts of :func:`count_parameters` as aligned ``name value`` lines (thousands separators;
    ``trainable_percent`` to 4 decimals)."""
    width = max(len(k) for k in counts)
    lines = []
    for key, value in counts.items():
        text = f"{value:.4f} %" if key == "trainable_percent" else f"{value:>14,}"
        lines.append(f"{key:<{width}}  {text}")
    return "\n".join(lines)
