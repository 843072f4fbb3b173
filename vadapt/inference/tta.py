"""Test-time augmentation (TTA): predict each tile several times under symmetries and scales, average the results.

For every (transform, scale) pair the tile is transformed (a flip or a rotation by a multiple of 90°) and resized by
the scale, the model gives class logits, the logits are resized back, turned into probabilities (softmax), and the
transform is undone; the probabilities of all passes are averaged. Averaging is in probability space, not over
logits: one pass with very large logits cannot outvote the others, and the result is a proper probability map.

Cost: :attr:`TestTimeAugmentation.passes` forward passes per tile (transforms x scales): ``flip`` 3, ``d4`` 8, times
the number of scales. TTA is off by default (mode ``none``, scale 1: one plain pass, exactly the model's softmax).

Change detection concatenates its two dates along channels before the model is called, so every spatial transform
applies to both dates alike; no multi-input variant is needed.

We write this ourselves rather than use ``ttach``, which is unmaintained since 2020 and averages logits by default.

Shapes: inputs ``(N, C, H, W)``, logits ``(N, K, h, w)``, outputs ``(N, K, H, W)`` class probabilities. Inputs need
not be square: rotations by 90° swap H and W, and undoing them swaps back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

TTA_MODES = ("none", "flip", "d4")
MIN_SIDE = 16  # scaled sizes never go below this many pixels per side

Transform = Callable[[torch.Tensor], torch.Tensor]


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _hflip(t: torch.Tensor) -> torch.Tensor:
    return t.flip(-1)


def _vflip(t: torch.Tensor) -> torch.Tensor:
    return t.flip(-2)


def _rot(k: int) -> Transform:
    """Rotation by ``k`` x 90° in the (H, W) plane of an ``(N, C, H, W)`` tensor."""
    return lambda t: torch.rot90(t, k, dims=(-2, -1))


def _rot_transposed(k: int) -> Transform:
    """Transpose (swap H and W), then rotate by ``k`` x 90°."""
    return lambda t: torch.rot90(t.transpose(-2, -1), k, dims=(-2, -1))


def _transposed_unrot(k: int) -> Transform:
    """Inverse of :func:`_rot_transposed`: rotate by ``-k`` x 90°, then transpose."""
    return lambda t: torch.rot90(t, -k, dims=(-2, -1)).transpose(-2, -1)


def _transforms(mode: str) -> list[tuple[Transform, Transform]]:
    """(forward, inverse) pairs of ``mode``; the identity first."""
    if mode == "none":
        return [(_identity, _identity)]
    if mode == "flip":
        return [(_identity, _identity), (_hflip, _hflip), (_vflip, _vflip)]
    rotations = [(_identity, _identity)] + [(_rot(k), _rot(-k)) for k in (1, 2, 3)]
    return rotations + [(_rot_transposed(k), _transposed_unrot(k)) for k in range(4)]


def _bad(name: str, value: Any, rule: str) -> None:
    raise ValueError(f"{name} {rule}, got {value!r}")


def _scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """``size`` times ``scale``, rounded half up, at least :data:`MIN_SIDE` per side (but never the given size at
    scale 1)."""
    if scale == 1.0:
        return size
    h, w = (max(MIN_SIDE, math.floor(side * scale + 0.5)) for side in size)
    return h, w


def _resize(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``(N, C, h, w)`` to ``size`` (align_corners=False, antialiased when either side shrinks)."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    shrinking = size[0] < t.shape[-2] or size[1] < t.shape[-1]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=shrinking)


class TestTimeAugmentation:
    """Average class probabilities over symmetries (``mode``) and resizings (``scales``) of the input.

    Args:
        mode: ``none`` (identity only), ``flip`` (identity, horizontal and vertical flip: 3 transforms) or ``d4``
            (the 8 symmetries of the square: identity, rotations by 90°, 180°, 270°, and their transposes).
        scales: resize factors of the (transformed) input; each side is rounded to the nearest pixel and kept at
            least 16 px. Scale 1 passes the input unresized.

    Raises:
        ValueError: naming the setting (``tta`` or ``tta_scales``) for an unknown mode, empty scales, or a scale
            that is not a finite number above 0.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, mode: str = "none", scales: Sequence[float] = (1.0,)) -> None:
        if not isinstance(mode, str) or mode not in TTA_MODES:
            _bad("tta", mode, f"must be one of {', '.join(TTA_MODES)}")
        if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence):
            _bad("tta_scales", scales, "must be a list of numbers")
        if len(scales) == 0:
            _bad("tta_scales", scales, "must name at least one scale")
        for s in scales:
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not (math.isfinite(s) and s > 0):
                _bad("tta_scales", s, "must be finite numbers above 0")
        self.mode = mode
        self.scales: tuple[float, ...] = tuple(float(s) for s in scales)
        self._transforms = _transforms(mode)

    @property
    def passes(self) -> int:
        """Forward passes per tile: transforms x scales (the cost factor of TTA)."""
        return len(self._transforms) * len(self.scales)

    def describe(self) -> str:
        """One line for logs and reports, e.g. ``d4 x scales 0.75, 1, 1.25: 24 passes per tile``."""
        scales = ", ".join(f"{s:g}" for s in self.scales)
        passes = f"{self.passes} pass{'' if self.passes == 1 else 'es'} per tile"
        return f"{self.mode} x scales {scales}: {passes}"

    def __repr__(self) -> str:
        return f"TestTimeAugmentation(mode={self.mode!r}, scales={self.scales!r})"

    def __call__(self, logits_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Class probabilities of ``x`` averaged over all passes.

        Args:
            logits_fn: maps ``(N, C, h, w)`` inputs to ``(N, K, h', w')`` class logits (any h, w >= 16; logits of
                another size than the input are resized back to it, bilinear).
            x: ``(N, C, H, W)`` float inputs.

        Returns:
            ``(N, K, H, W)`` class probabilities (sum 1 over dim 1). With one pass (``none``, scale 1) exactly
            ``softmax(logits_fn(x), 1)``; otherwise averaged in at least float32.
        """
        if x.ndim != 4:
            raise ValueError(f"TTA input must be (N, C, H, W), got shape {tuple(x.shape)}")
        total: torch.Tensor | None = None
        for forward, inverse in self._transforms:
            xt = forward(x)
            size = (xt.shape[-2], xt.shape[-1])
            for scale in self.scales:
                logits = _resize(logits_fn(_resize(xt, _scaled_size(size, scale))), size)
                probs = inverse(torch.softmax(logits, dim=1))
                del logits
                if self.passes == 1:
                    return probs
                if total is None:  # running sum: one pass's probabilities held at a time, not all of them
                    total = probs.to(torch.promote_types(probs.dtype, torch.float32))  # a fresh tensor: ours
                else:
                    total += probs
                del probs
        assert total is not None
        return total.div_(self.passes)
