"""How training saw the pixels: the preprocessing record an adapter checkpoint carries.

A datamodule describes what it did to the files' values and geometry before the model saw them
(``datamodule.preprocessing()``); the task keeps that record when fitting starts and every checkpoint stores it
(manifest key ``preprocessing``). Prediction (``vadapt infer``, :func:`vadapt.loading.load_adapter`, the app)
applies it by default, so a model is fed what it was trained on:

    raw file values -> ``value * scale + offset`` (nodata found first, by the same rule) -> resized whole to
    ``resize`` when training resized whole images -> tiles -> model -> back onto the input's own pixel grid.

Checkpoints written before the record existed have none: they are read as before (values as they are, native
geometry) and the caller says so once. This module imports neither torch nor numpy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

#: a georeferenced input whose pixel size differs from training by more than this factor is noted
PIXEL_SIZE_TOLERANCE = 1.5


@dataclass(frozen=True)
class Preprocessing:
    """What a datamodule did to the values and geometry of its images before the model saw them.

    Attributes:
        scale: factor multiplied into the file values (after the file's own ``.npz`` ``scale``), e.g. 1/255.
        offset: added after ``scale`` (e.g. -0.1 for Sentinel-2 L2A from processing baseline 04.00, where
            reflectance = DN / 10000 - 0.1).
        nodata: ``"file"`` (each file's declared nodata value), a number, or ``None`` (no value is nodata);
            NaN is always nodata.
        nodata_rule: a pixel is nodata when ``"all"`` or ``"any"`` of its bands equal the nodata value.
        resize: ``(height, width)`` every image was resized to, whole (``train_mode: resize`` / ``val_size``);
            ``None``: the model saw native-scale crops or whole images at their own size.
        source_size: median ``(height, width)`` of the training images before ``resize`` (used to resample
            images too large to resize whole by the same factor).
        pixel_size: median pixel size of the georeferenced training rasters, in their CRS units; ``None`` when
            they have none.
    """

    scale: float = 1.0
    offset: float = 0.0
    nodata: float | str | None = "file"
    nodata_rule: str = "all"
    resize: tuple[int, int] | None = None
    source_size: tuple[int, int] | None = None
    pixel_size: float | None = None

    def __post_init__(self) -> None:
        for name in ("resize", "source_size"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, (int(value[0]), int(value[1])))
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"preprocessing scale must be a finite number above 0, got {self.scale!r}")
        if not math.isfinite(self.offset):
            raise ValueError(f"preprocessing offset must be finite, got {self.offset!r}")
        if self.nodata_rule not in ("all", "any"):
            raise ValueError(f"preprocessing nodata_rule must be 'all' or 'any', got {self.nodata_rule!r}")
        if self.nodata is not None and self.nodata != "file" and not isinstance(self.nodata, (int, float)):
            raise ValueError(f"preprocessing nodata must be 'file', a number or None, got {self.nodata!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (tuples as lists), as stored in manifests and Lightning checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, value: Any, source: str = "the checkpoint") -> Preprocessing | None:
        """The record stored by :meth:`to_dict`; ``None`` stays ``None`` (a checkpoint from before the record).
        Keys this version does not know are ignored (a newer writer); a wrong value is a ``ValueError``."""
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ValueError(f"{source} has a damaged preprocessing record: {value!r}")
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in value.items() if k in known})
        except (TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"{source} has a damaged preprocessing record ({exc})") from None

    @property
    def scales_values(self) -> bool:
        """Whether the values are changed at all (``scale != 1`` or ``offset != 0``)."""
        return self.scale != 1.0 or self.offset != 0.0

    def resample_factor(self) -> float | None:
        """Model pixels per input pixel when images are resized whole: ``resize / source_size`` (the mean of
        both axes), or ``None`` (native geometry, or the source size unknown)."""
        if self.resize is None or self.source_size is None:
            return None
        return (self.resize[0] / self.source_size[0] + self.resize[1] / self.source_size[1]) / 2

    def describe(self) -> str:
        """One line for reports: ``values x 0.00392 + 0; resized whole to 192x192; nodata: file (all bands)``."""
        parts = [f"values x {self.scale:.6g}" + (f" + {self.offset:.6g}" if self.offset else "")]
        parts.append(f"resized whole to {self.resize[1]}x{self.resize[0]} px" if self.resize else "native scale")
        nodata = "none" if self.nodata is None else f"{self.nodata} ({self.nodata_rule} bands)"
        parts.append(f"nodata: {nodata}")
        if self.pixel_size is not None:
            parts.append(f"pixel size {self.pixel_size:.6g}")
        return "; ".join(parts)


def georeferenced_pixel_size(geo: dict[str, Any] | None) -> float | None:
    """The pixel size (CRS units, mean of both axes; rotation allowed) of ``{"crs": ..., "transform": affine}``
    as vadapt reads a raster's georeference, or ``None`` without a CRS or geotransform."""
    if not geo or geo.get("crs") is None or "transform" not in geo:
        return None
    t = geo["transform"]
    if t.is_identity:
        return None
    return (math.hypot(t.a, t.d) + math.hypot(t.b, t.e)) / 2


def median_size(sizes: list[tuple[int, int]]) -> tuple[int, int] | None:
    """The median ``(height, width)`` of image sizes (``None`` for none)."""
    if not sizes:
        return None
    heights, widths = sorted(h for h, _ in sizes), sorted(w for _, w in sizes)
    return heights[len(heights) // 2], widths[len(widths) // 2]


def pixel_size_note(trained: float | None, found: float | None) -> str | None:
    """A one-line note when an input's pixel size differs from training's by more than
    :data:`PIXEL_SIZE_TOLERANCE`, else ``None``."""
    if trained is None or found is None or trained <= 0 or found <= 0:
        return None
    ratio = found / trained
    if 1 / PIXEL_SIZE_TOLERANCE <= ratio <= PIXEL_SIZE_TOLERANCE:
        return None
    return (f"pixel size {found:.6g} vs {trained:.6g} in training ({ratio:.2g}x): objects appear "
            f"{'smaller' if ratio > 1 else 'larger'} than the model learnt them; resample the input to the "
            "training resolution if predictions look wrong")
