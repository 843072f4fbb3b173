"""What the datamodules record about how they fed the model (:class:`vadapt.preprocessing.Preprocessing`).

Every image datamodule has a ``preprocessing()`` method built on :func:`describe`: the task calls it when
fitting starts and stores the result in its checkpoints, so prediction reads files the way training did.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from vadapt.preprocessing import Preprocessing, median_size

from .io import BandReader, FileInfo, pixel_size


def describe(reader: BandReader, images: Iterable[FileInfo], resize: tuple[int, int] | None = None) -> Preprocessing:
    """The record of a datamodule reading ``images`` (its training files' headers) with ``reader``.

    Args:
        reader: the datamodule's band reader (scale, offset, nodata option and rule).
        images: headers of the training images (sizes; pixel sizes of georeferenced rasters).
        resize: the ``(height, width)`` every image was resized to whole, or ``None`` for native scale.
    """
    infos = list(images)
    sizes = [(info.height, info.width) for info in infos]
    pixels = [p for p in (pixel_size(info) for info in infos[:64]) if p is not None]  # headers only; a sample
    return Preprocessing(
        scale=reader.scale, offset=reader.offset, nodata=reader.nodata,
        nodata_rule=reader.nodata_rule, resize=resize, source_size=median_size(sizes) if resize else None,
        pixel_size=statistics.median(pixels) if pixels else None,
    )
