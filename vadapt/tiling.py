"""Sliding-window tiling with overlap blending, in memory or streamed row by row.

Tiles are laid out on a regular grid whose last tile in each direction is flush with the image edge, so every
pixel is covered and no tile is padded with made-up values. Overlapping predictions are combined as a weighted
mean: ``"mean"`` weighs every pixel of a tile equally (the sliding-window inference of PeftCD / mmsegmentation
``slide`` mode); ``"ramp"`` weighs pixels less the nearer they are to a tile edge that lies inside the image,
which removes the seams a plain mean leaves where a tile's border context is poor.

An image no larger than one tile is predicted in a single pass, with exactly the single-pass result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal

import torch

Blend = Literal["mean", "ramp"]


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets along one axis: ``0, stride, 2·stride, ...`` and a last tile flush with the edge."""
    if tile <= 0 or stride <= 0:
        raise ValueError(f"tile and stride must be positive, got tile={tile}, stride={stride}")
    if stride > tile:
        raise ValueError(f"stride {stride} is larger than the tile {tile}: pixels between tiles would be skipped")
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def tile_grid(height: int, width: int, tile: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Row-major windows ``(row, col, h, w)`` covering a ``height × width`` image."""
    th, tw = min(tile, height), min(tile, width)
    return [(y, x, th, tw) for y in tile_starts(height, tile, stride) for x in tile_starts(width, tile, stride)]


def axis_weight(start: int, length: int, size: int, overlap: int, blend: Blend) -> torch.Tensor:
    """1-d weights of a tile along one axis: 1 inside, a linear ramp over ``overlap`` pixels at tile edges that
    lie inside the image (``"ramp"``), ones everywhere for ``"mean"``."""
    weight = torch.ones(length)
    if blend == "mean" or overlap <= 0:
        return weight
    if blend != "ramp":
        raise ValueError(f"blend must be 'mean' or 'ramp', got {blend!r}")
    ramp = (torch.arange(min(overlap, length), dtype=torch.float32) + 1) / (overlap + 1)
    if start > 0:
        weight[: len(ramp)] = torch.minimum(weight[: len(ramp)], ramp)
    if start + length < size:
        weight[-len(ramp):] = torch.minimum(weight[-len(ramp):], ramp.flip(0))
    return weight


def tile_weight(window: tuple[int, int, int, int], height: int, width: int, overlap: int,
                blend: Blend) -> torch.Tensor:
    """``(h, w)`` blending weight of one tile of a ``height × width`` image."""
    y, x, h, w = window
    return axis_weight(y, h, height, overlap, blend)[:, None] * axis_weight(x, w, width, overlap, blend)[None, :]


def sliding_window(
    predict: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tile: int = 256,
    stride: int = 128,
    blend: Blend = "mean",
    batch_size: int = 8,
) -> torch.Tensor:
    """Predict a ``(B, C, H, W)`` batch tile by tile and blend the ``(B, K, H, W)`` outputs.

    Args:
        predict: maps ``(N, C, h, w)`` tiles to ``(N, K, h, w)`` scores (probabilities or logits).
        tile, stride: tile side and step in pixels (``stride < tile`` overlaps tiles by ``tile - stride``).
        blend: how overlapping predictions are combined (module docstring).
        batch_size: tiles per call of ``predict``.
    """
    batch, _, height, width = image.shape
    if height <= tile and width <= tile:
        return predict(image)
    windows = tile_grid(height, width, tile, stride)
    total = weights = None
    for first in range(0, len(windows), max(1, batch_size // batch)):
        chunk = windows[first : first + max(1, batch_size // batch)]
        tiles = torch.cat([image[:, :, y : y + h, x : x + w] for y, x, h, w in chunk])
        scores = predict(tiles).float()
        if total is None:
            total = scores.new_zeros(batch, scores.shape[1], height, width)
            weights = scores.new_zeros(1, 1, height, width)
        for i, window in enumerate(chunk):
            y, x, h, w = window
            weight = tile_weight(window, height, width, tile - stride, blend).to(scores)
            total[:, :, y : y + h, x : x + w] += scores[i * batch : (i + 1) * batch] * weight
            weights[:, :, y : y + h, x : x + w] += weight
    return total / weights


class RowBlender:
    """Blends the tiles of one ``height × width`` image arriving in row-major order, releasing finished rows.

    Holds only one tile row of scores (``K × tile × width`` floats), so memory does not grow with the image
    height: ``add`` each tile's ``(K, h, w)`` scores; ``add`` returns the rows ``(top, scores (K, n, width))``
    that no later tile can touch any more (the last call returns the remainder).
    """

    def __init__(self, height: int, width: int, tile: int, stride: int, blend: Blend) -> None:
        self.height, self.width, self.tile, self.stride, self.blend = height, width, tile, stride, blend
        self.windows = tile_grid(height, width, tile, stride)
        self.row_starts = sorted({w[0] for w in self.windows})
        self.tiles_per_row = len(self.windows) // len(self.row_starts)
        self.top = 0  # first row not yet released
        self.total: torch.Tensor | None = None
        self.weight = torch.zeros(min(tile, height), width)  # one tile row: see add()
        self.received = 0

    def __len__(self) -> int:
        return len(self.windows)

    def add(self, window: tuple[int, int, int, int], scores: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """Add the ``(K, h, w)`` scores of ``window`` ``(row, col, h, w)``; yield ``(top, scores (K, n, width))`` for
        each band of rows that is now final.

        Windows must come in :func:`tile_grid` order. This is a generator: nothing is added until it is iterated
        (``for top, rows in blender.add(...)``), and the buffers move on only once it is exhausted.
        """
        y, x, h, w = window
        if self.total is None:
            self.total = torch.zeros(scores.shape[0], self.weight.shape[0], self.width)
        weight = tile_weight(window, self.height, self.width, self.tile - self.stride, self.blend)
        r = y - self.top
        self.total[:, r : r + h, x : x + w] += scores.float() * weight
        self.weight[r : r + h, x : x + w] += weight
        self.received += 1
        if self.received % self.tiles_per_row == 0:  # a tile row is complete
            row = self.received // self.tiles_per_row
            done_until = self.row_starts[row] if row < len(self.row_starts) else self.height
            yield from self._release(done_until)

    def _release(self, until: int) -> Iterator[tuple[int, torch.Tensor]]:
        n = until - self.top
        if n <= 0:
            return
        out = self.total[:, :n] / self.weight[:n].clamp_min(1e-12)
        yield self.top, out
        # move the kept rows (the overlap with the next tile row) to the top of the buffers, in place
        kept = self.weight.shape[0] - n
        for buffer in (self.total, self.weight):
            rows = buffer[..., n:, :].clone()
            buffer.zero_()
            buffer[..., :kept, :] = rows
        self.top = until
