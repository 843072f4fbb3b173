"""Pictures of images and masks: RGB composites of multi-band images, class colours, prediction panels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# A qualitative palette (first colours of matplotlib's tab10/tab20); class i gets PALETTE[i % len].
PALETTE = np.array(
    [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
     [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207], [174, 199, 232], [255, 187, 120]],
    dtype=np.uint8,
)


def rgb_composite(image: np.ndarray, bands: Sequence[str], rgb: Sequence[str] = ("red", "green", "blue")) -> np.ndarray:
    """``(C, H, W)`` raw values -> ``(H, W, 3)`` uint8, 2-98 percentile stretch per channel.

    Uses the bands named ``rgb`` when present, else the first three bands (or one band as grey).
    """
    bands = list(bands)
    if all(b in bands for b in rgb):
        channels = [bands.index(b) for b in rgb]
    else:
        channels = list(range(min(3, image.shape[0])))
    picked = image[channels].astype(np.float64)
    if picked.shape[0] == 1:
        picked = np.repeat(picked, 3, axis=0)
    out = np.empty(picked.shape[1:] + (3,), dtype=np.uint8)
    for i, channel in enumerate(picked):
        finite = channel[np.isfinite(channel)]
        lo, hi = np.percentile(finite, (2, 98)) if finite.size else (0.0, 1.0)
        scaled = (np.nan_to_num(channel, nan=lo) - lo) / max(hi - lo, 1e-12)
        out[..., i] = np.clip(scaled * 255.0, 0, 255).astype(np.uint8)
    return out


def colorize(mask: np.ndarray, ignore_index: int | None = None) -> np.ndarray:
    """``(H, W)`` class ids -> ``(H, W, 3)`` uint8 colours; ``ignore_index`` pixels are black."""
    out = PALETTE[np.mod(mask, len(PALETTE))]
    if ignore_index is not None:
        out[mask == ignore_index] = 0
    return out


def overlay(rgb: np.ndarray, mask: np.ndarray, opacity: float = 0.5, ignore_index: int | None = None,
            background: int | None = 0) -> np.ndarray:
    """Blend class colours over ``rgb``; ``background`` and ``ignore_index`` pixels stay unblended."""
    colours = colorize(mask, ignore_index).astype(np.float32)
    keep = np.zeros(mask.shape, dtype=bool)
    if background is not None:
        keep |= mask == background
    if ignore_index is not None:
        keep |= mask == ignore_index
    blended = (1 - opacity) * rgb.astype(np.float32) + opacity * colours
    blended[keep] = rgb[keep]
    return blended.astype(np.uint8)


def prediction_panel(rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], bands: Sequence[str],
                     ignore_index: int | None = None, gap: int = 4):
    """One row per sample: input composite | truth | prediction, as a PIL image.

    Each row is ``(image (C, H, W), truth (H, W), prediction (H, W))``.
    """
    from PIL import Image

    tiles = [[rgb_composite(img, bands), colorize(truth, ignore_index), colorize(pred, ignore_index)]
             for img, truth, pred in rows]
    height = max(t[0].shape[0] for t in tiles)
    width = max(t[0].shape[1] for t in tiles)
    canvas = np.full((len(tiles) * (height + gap) - gap, 3 * (width + gap) - gap, 3), 255, dtype=np.uint8)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            y, x = r * (height + gap), c * (width + gap)
            canvas[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    return Image.fromarray(canvas)


def change_panel(rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], bands: Sequence[str],
                 ignore_index: int | None = None, gap: int = 4):
    """One row per pair: date A | date B | truth | prediction, as a PIL image.

    Each row is ``(image_a (C, H, W), image_b (C, H, W), truth (H, W), prediction (H, W))``; change maps are
    drawn white (changed) on black, ``ignore_index`` pixels grey.
    """
    from PIL import Image

    def grey(mask: np.ndarray) -> np.ndarray:
        out = np.where(mask == 1, 255, 0).astype(np.uint8)
        if ignore_index is not None:
            out[mask == ignore_index] = 128
        return np.repeat(out[..., None], 3, axis=-1)

    tiles = [[rgb_composite(a, bands), rgb_composite(b, bands), grey(truth), grey(pred)]
             for a, b, truth, pred in rows]
    height = max(t[0].shape[0] for t in tiles)
    width = max(t[0].shape[1] for t in tiles)
    canvas = np.full((len(tiles) * (height + gap) - gap, 4 * (width + gap) - gap, 3), 255, dtype=np.uint8)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            y, x = r * (height + gap), c * (width + gap)
            canvas[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    return Image.fromarray(canvas)
