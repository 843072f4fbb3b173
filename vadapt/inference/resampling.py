"""Where the model's pixels come from: how one image is tiled and resampled to match how training saw images.

A checkpoint trained on whole images resized to a fixed size (``train_mode: resize``, e.g. Kvasir at 192 px)
predicts each image resized whole to that size, and its probabilities are resampled back onto the image's own
grid. An image too large to resize whole (longer side above :data:`WHOLE_IMAGE_SIDE`) is instead cut into tiles
that are each resampled by the same factor training applied (``resize / source size``). Everything else (random
crops at native scale) is tiled at the input's own pixel size. ``vadapt infer`` and the app plan every image
with :func:`plan`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vadapt.preprocessing import Preprocessing

#: longest image side (px) resized whole for checkpoints trained on resized images; larger ones are tiled
WHOLE_IMAGE_SIDE = 4096
MIN_MODEL_SIDE = 16


@dataclass(frozen=True)
class Plan:
    """How one ``height x width`` image goes through the model.

    Attributes:
        tile, stride: tile side and step in the image's own pixels.
        size: the fixed ``(height, width)`` every tile (the whole image: one tile) is resized to, or ``None``.
        factor: model pixels per image pixel for each tile (tiles resampled by it), or ``None``.
    """

    tile: int
    stride: int
    size: tuple[int, int] | None = None
    factor: float | None = None

    def model_size(self, height: int, width: int) -> tuple[int, int] | None:
        """The size a ``height x width`` tile is resampled to before the model, or ``None`` (as it is)."""
        if self.size is not None:
            return self.size
        if self.factor is not None:
            return (max(MIN_MODEL_SIDE, math.floor(height * self.factor + 0.5)),
                    max(MIN_MODEL_SIDE, math.floor(width * self.factor + 0.5)))
        return None

    def describe(self) -> str:
        """A few words for reports: ``whole image -> 192x192``, ``512 px tiles x 0.55``, ``512 px tiles``."""
        if self.size is not None:
            return f"whole image resized to {self.size[1]}x{self.size[0]} px"
        if self.factor is not None:
            return f"{self.tile} px tiles resampled x {self.factor:.3g}"
        return f"{self.tile} px tiles at native scale"


def plan(record: Preprocessing | None, height: int, width: int, tile: int, stride: int,
         native: bool = False) -> tuple[Plan, str | None]:
    """The :class:`Plan` of a ``height x width`` image and, when the recorded geometry cannot be followed exactly,
    a note saying what is done instead.

    Args:
        record: the checkpoint's preprocessing record (``None``: checkpoints from before it: native scale).
        tile, stride: the run's tiling for native-scale prediction (``--tile``, its overlap).
        native: predict at the input's own pixel size whatever training did (``--geometry native``).
    """
    if native or record is None or record.resize is None:
        return Plan(tile, stride), None
    if max(height, width) <= WHOLE_IMAGE_SIDE:
        side = max(height, width)
        return Plan(side, side, size=record.resize), None
    factor = record.resample_factor()
    if factor is None:
        return Plan(tile, stride), (f"{width}x{height} px is too large to resize whole to the training size "
                                    f"{record.resize[1]}x{record.resize[0]} and the checkpoint does not record "
                                    "the training images' size: predicted at native scale")
    # source tiles that become about `tile` model pixels, with the run's overlap in the same proportion
    source_tile = max(MIN_MODEL_SIDE, math.ceil(tile / factor))
    source_stride = max(1, min(source_tile, math.floor(stride / factor)))
    return Plan(source_tile, source_stride, factor=factor), (
        f"{width}x{height} px is too large to resize whole: tiles resampled by {factor:.3g} (as training resized "
        f"its {record.source_size[1]}x{record.source_size[0]} px images to {record.resize[1]}x{record.resize[0]})")
