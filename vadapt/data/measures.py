"""Measures on images of the synthetic generation data (``vadapt.data.generation``), or of samples of a model
trained on it: ``foreground_mask``, ``count_objects``, ``dominant_colour`` and ``colour_name`` check generated
images: exactly one object, of the prompt's colour, the same in every view or frame.

The tests of the synthetic datamodules check their items with them; ``benchmarks/bench_resadapter.py`` and
``benchmarks/bench_i2v_mv.py`` score generated samples with them. Images are RGB, ``(H, W, 3)`` or
``(3, H, W)``, uint8 or float in [0, 1]; the background is a colour name, ``[r, g, b]`` in 0..255 or ``None``
(the median colour of the image border).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .shapes_render import COLOURS, _colour


def _as_hwc255(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """An RGB image, ``(H, W, 3)`` or ``(3, H, W)``, uint8 or float in [0, 1] -> float64 ``(H, W, 3)`` in 0..255."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.ndim != 3:
        raise ValueError(f"expected an RGB image (H, W, 3) or (3, H, W), got shape {array.shape}")
    if array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        array = array.transpose(1, 2, 0)
    array = array[..., :3]
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float64) * 255.0
    return array.astype(np.float64)


def _background(array: np.ndarray, background: str | Sequence[int] | None) -> np.ndarray:
    if background is None:  # the median colour of the border pixels
        border = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]])
        return np.median(border, axis=0)
    return np.asarray(_colour(background, "background"), dtype=np.float64)


def foreground_mask(image: np.ndarray | torch.Tensor, background: str | Sequence[int] | None = None,
                    tolerance: float = 40.0) -> np.ndarray:
    """bool ``(H, W)``: pixels farther than ``tolerance`` (0..255, largest channel difference) from the background
    (a name, ``[r, g, b]`` in 0..255, or ``None``: the median colour of the image border)."""
    array = _as_hwc255(image)
    return np.abs(array - _background(array, background)).max(-1) > tolerance


def count_objects(image: np.ndarray | torch.Tensor, background: str | Sequence[int] | None = None,
                  min_size: int = 4, tolerance: float = 40.0) -> int:
    """Connected components (8-connected) of non-background pixels with at least ``min_size`` pixels, in an RGB
    image ``(H, W, 3)`` / ``(3, H, W)`` (uint8, or float in [0, 1]); see ``foreground_mask`` for the rest."""
    from scipy import ndimage

    labels, count = ndimage.label(foreground_mask(image, background, tolerance), structure=np.ones((3, 3), bool))
    if count == 0:
        return 0
    sizes = np.bincount(labels.reshape(-1))[1:]
    return int((sizes >= min_size).sum())


def dominant_colour(image: np.ndarray | torch.Tensor, background: str | Sequence[int] | None = None,
                    tolerance: float = 40.0) -> tuple[float, float, float] | None:
    """The median colour ``(r, g, b)`` in [0, 1] of the non-background pixels (``None`` when there are none)."""
    array = _as_hwc255(image)
    mask = np.abs(array - _background(array, background)).max(-1) > tolerance
    if not mask.any():
        return None
    r, g, b = (float(v) / 255.0 for v in np.median(array[mask], axis=0))
    return r, g, b


def colour_name(rgb: Sequence[float] | None, names: Sequence[str] | None = None) -> str | None:
    """The ``COLOURS`` name (among ``names``) nearest to ``rgb`` in [0, 1] by hue: both scaled to a largest
    channel of 1, so a shaded red is still red (``None`` for ``None`` or black)."""
    if rgb is None:
        return None
    value = np.asarray(rgb, dtype=np.float64)
    if value.max() <= 1e-6:
        return None
    value = value / value.max()
    best, gap = None, math.inf
    for name in names or COLOURS:
        ref = np.asarray(COLOURS[name], dtype=np.float64)
        d = float(np.linalg.norm(value - ref / ref.max()))
        if d < gap:
            best, gap = name, d
    return best
