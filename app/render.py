"""Pictures for the page: class overlays with opacity, prompt marks, change overlays, the legend, and small
pictures enlarged for display (nearest neighbour, by a whole factor; downloads keep the real size)."""

from __future__ import annotations

import html

import numpy as np

from .predict import NODATA

FOREGROUND = (46, 204, 64)  # prompt points: foreground green, background red, box yellow, mask blue
BACKGROUND = (255, 65, 54)
BOX = (255, 220, 0)
MASK = (30, 144, 255)
CHANGED = (255, 40, 40)
DISPLAY_SIDE = 256  # pictures whose longest side is shorter are shown enlarged to at least this


def display_factor(height: int, width: int, side: int = DISPLAY_SIDE) -> int:
    """The whole factor a ``height`` x ``width`` picture is enlarged by for display: the smallest that brings
    its longest side to ``side`` px or more (1 for pictures that large already)."""
    longest = max(int(height), int(width), 1)
    return max(1, -(-side // longest))


def enlarge(picture: np.ndarray, side: int = DISPLAY_SIDE) -> np.ndarray:
    """A picture ``(H, W)`` / ``(H, W, C)`` or clip ``(F, H, W, C)`` enlarged by :func:`display_factor` with
    nearest neighbour, so every pixel stays a crisp square; returned as it is when large enough."""
    picture = np.asarray(picture)
    axes = (1, 2) if picture.ndim == 4 else (0, 1)
    factor = display_factor(picture.shape[axes[0]], picture.shape[axes[1]], side)
    if factor == 1:
        return picture
    return picture.repeat(factor, axis=axes[0]).repeat(factor, axis=axes[1])


def class_overlay(rgb: np.ndarray, mask: np.ndarray, opacity: float) -> np.ndarray:
    """Class colours (``vadapt.visualize.PALETTE``) blended over ``rgb`` at ``opacity``; no-data pixels unblended."""
    from vadapt.visualize import overlay

    return overlay(rgb, mask, opacity=float(opacity), ignore_index=NODATA, background=None)


def colour_mask(mask: np.ndarray) -> np.ndarray:
    """Class ids -> colours (no-data black): the mask picture offered for download beside the ids."""
    from vadapt.visualize import colorize

    return colorize(mask, ignore_index=NODATA)


def blend(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], opacity: float) -> np.ndarray:
    """``colour`` blended over ``rgb`` where ``mask`` is True."""
    out = rgb.astype(np.float32)
    out[mask] = (1 - opacity) * out[mask] + opacity * np.asarray(colour, dtype=np.float32)
    return out.astype(np.uint8)


def prompt_overlay(rgb: np.ndarray, mask: np.ndarray | None, points: list[tuple[float, float]],
                   labels: list[int], box: tuple[float, float, float, float] | None,
                   corner: tuple[float, float] | None, opacity: float = 0.5) -> np.ndarray:
    """The mask (if any) over ``rgb`` with the prompts drawn: points as dots, the box as a rectangle, a pending
    box corner as a small cross."""
    from PIL import Image, ImageDraw

    out = blend(rgb, mask, MASK, opacity) if mask is not None else rgb.copy()
    picture = Image.fromarray(out)
    draw = ImageDraw.Draw(picture)
    radius = max(3, round(max(rgb.shape[:2]) / 100))
    if box is not None:
        draw.rectangle(box, outline=BOX, width=max(2, radius // 2))
    if corner is not None:
        cx, cy = corner
        draw.line([(cx - radius, cy), (cx + radius, cy)], fill=BOX, width=2)
        draw.line([(cx, cy - radius), (cx, cy + radius)], fill=BOX, width=2)
    for (px, py), label in zip(points, labels):
        draw.ellipse([px - radius, py - radius, px + radius, py + radius],
                     fill=FOREGROUND if label == 1 else BACKGROUND, outline=(255, 255, 255))
    return np.asarray(picture)


def change_overlay(rgb: np.ndarray, mask: np.ndarray, opacity: float) -> np.ndarray:
    """Changed pixels (``mask == 1``) in red over ``rgb`` (the "after" image)."""
    return blend(rgb, mask == 1, CHANGED, opacity)


def legend_html(class_names: tuple[str, ...] | list[str], counts: np.ndarray | None = None) -> str:
    """An HTML legend: one colour swatch per class, with its share of the valid pixels when ``counts`` (one per
    class) is given."""
    from vadapt.visualize import PALETTE

    total = float(counts.sum()) if counts is not None and counts.sum() > 0 else None
    items = []
    for i, name in enumerate(class_names):
        r, g, b = (int(v) for v in PALETTE[i % len(PALETTE)])
        share = f" {100 * counts[i] / total:.1f} %" if total is not None and i < len(counts) else ""
        items.append(f'<span class="vadapt-legend-item" style="margin-right:1em;white-space:nowrap">'
                     f'<span style="display:inline-block;width:1em;height:1em;vertical-align:middle;'
                     f'background:rgb({r},{g},{b});border:1px solid #444;margin-right:0.3em"></span>'
                     f"{html.escape(str(name))}{share}</span>")
    return f'<div class="vadapt-legend">{"".join(items)}</div>'


def class_counts(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels per class (no-data left out)."""
    valid = mask[mask != NODATA]
    return np.bincount(valid.ravel(), minlength=num_classes)[:num_classes]
