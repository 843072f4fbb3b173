"""Where the model's pixels come from: how one image is tiled and resampled to match how training saw images.

A checkpoint trained on whole images resized to a fixed size (``train_mode: resize``, e.g. Kvasir at 192 px)
predicts each image resized whole to that size, and its probabilities are resampled back onto the image's own
grid. An image too large to resize whole (longer side above :data:`WHOLE_IMAGE_SIDE`) is instead cut into tiles
that are each resampled by the same factor training applied (``resize / source size``). A checkpoint trained on
native-scale crops of georeferenced rasters predicts an input whose pixel size differs from training's by more
than 1.5x with every tile resampled to the training pixel size (30 m Landsat for a 10 m Sentinel-2 model: x 3),
the probabilities resampled back. Everything else is tiled at the input's own pixel size. ``vadapt infer`` and
the app plan every image with :func:`plan`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vadapt.preprocessing import PIXEL_SIZE_TOLERANCE, Preprocessing

#: longest image side (px) resized whole for checkpoints trained on resized images; larger ones are tiled
WHOLE_IMAGE_SIDE = 4096
#: the most an input is up- or downsampled to reach the training pixel size (a 0.5 m model on 30 m imagery would
#: otherwise make every tile 60x larger)
MAX_FACTOR = 8.0
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
         native: bool = False, pixel_size: float | None = None) -> tuple[Plan, str | None]:
    """The :class:`Plan` of a ``height x width`` image and a note when the image is resampled to the training
    pixel size or the recorded geometry cannot be followed exactly.

    Args:
        record: the checkpoint's preprocessing record (``None``: checkpoints from before it: native scale).
        tile, stride: the run's tiling for native-scale prediction (``--tile``, its overlap).
        native: predict at the input's own pixel size whatever training did (``--geometry native``).
        pixel_size: the input's pixel size when it is georeferenced: an input whose pixel size differs from the
            training rasters' by more than :data:`~vadapt.preprocessing.PIXEL_SIZE_TOLERANCE` is resampled to
            it tile by tile (by at most :data:`MAX_FACTOR` either way).
    """
    if native or record is None:
        return Plan(tile, stride), None
    if record.resize is None:
        return _to_training_pixel_size(record, tile, stride, pixel_size)
    if max(height, width) <= WHOLE_IMAGE_SIDE:
        side = max(height, width)
        return Plan(side, side, size=record.resize), None
    factor = record.resample_factor()
    if factor is None:
        return Plan(tile, stride), (f"{width}x{height} px is too large to resize whole to the training size "
                                    f"{record.resize[1]}x{record.resize[0]} and the checkpoint does not record "
                                    "the training images' size: predicted at native scale")
    return _resampled(tile, stride, factor), (
        f"{width}x{height} px is too large to resize whole: tiles resampled by {factor:.3g} (as training resized "
        f"its {record.source_size[1]}x{record.source_size[0]} px images to {record.resize[1]}x{record.resize[0]})")


def _resampled(tile: int, stride: int, factor: float) -> Plan:
    """Source tiles that become about ``tile`` model pixels, with the run's overlap in the same proportion."""
    source_tile = max(MIN_MODEL_SIDE, math.ceil(tile / factor))
    source_stride = max(1, min(source_tile, math.floor(stride / factor)))
    return Plan(source_tile, source_stride, factor=factor)


def _to_training_pixel_size(record: Preprocessing, tile: int, stride: int, pixel_size: float | None
                            ) -> tuple[Plan, str | None]:
    """Native-scale training: tiles of an input at another pixel size are resampled to the training one."""
    trained = record.pixel_size
    if trained is None or pixel_size is None or trained <= 0 or pixel_size <= 0:
        return Plan(tile, stride), None
    ratio = pixel_size / trained  # model pixels per input pixel at the training resolution
    if 1 / PIXEL_SIZE_TOLERANCE <= ratio <= PIXEL_SIZE_TOLERANCE:
        return Plan(tile, stride), None
    factor = min(max(ratio, 1 / MAX_FACTOR), MAX_FACTOR)
    capped = f", capped at {factor:.3g}" if factor != ratio else ""
    return _resampled(tile, stride, factor), (
        f"pixel size {pixel_size:.6g} vs {trained:.6g} in training: resampled x {ratio:.3g}{capped} to the training "
        "resolution for the model and back (--geometry native predicts at the input's own)")
