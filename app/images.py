"""Reading uploaded images (PNG / JPEG / TIFF / GeoTIFF / .npy / .npz) within limits, and RGB composites."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .limits import AppError, Limits


@dataclass
class LoadedImage:
    """An uploaded image: every band of the file as float32 ``(C, H, W)`` plus what the app needs about it.

    Attributes:
        array: band values times the file's own scale and the user's ``scale``; nodata pixels filled with 0.
        names: canonical band names (``red``, ``nir``, ``B04`` ...) or ``None`` when the file does not name them.
        invalid: ``(H, W)`` bool, True where the file has no data (its nodata value in every band, or NaN).
        georef: ``{"crs": ..., "transform": ...}`` of a georeferenced raster, else ``None``.
        name: the file's name (for messages and download names).
    """

    array: np.ndarray
    names: tuple[str, ...] | None
    invalid: np.ndarray
    georef: dict[str, Any] | None
    name: str

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.array.shape[1]), int(self.array.shape[2])

    def band_labels(self) -> list[str]:
        """One label per band: its name, or ``band N`` (1-based) when the file does not name it."""
        return list(self.names) if self.names else [f"band {i + 1}" for i in range(len(self.array))]

    def default_rgb(self) -> list[str]:
        """Labels of the bands shown by default: red / green / blue when present, else the first three."""
        labels = self.band_labels()
        if all(b in labels for b in ("red", "green", "blue")):
            return ["red", "green", "blue"]
        return [labels[min(i, len(labels) - 1)] for i in range(3)]


def _canonical(name: str) -> str:
    from vadapt.bands import canonical

    try:
        return canonical(name)
    except (ValueError, KeyError):
        return name.lower()


def _georef(path: str) -> dict[str, Any] | None:
    from vadapt.data.safe_open import open_raster

    with open_raster(path, allow_vrt=False) as src:  # the data layer's opener: allowed drivers only
        if src.crs is None and src.transform.is_identity:
            return None
        return {"crs": src.crs, "transform": src.transform}


def load_image(path: str | Path, limits: Limits, file_bands: list[str] | None = None, scale: float = 1.0,
               name: str | None = None) -> LoadedImage:
    """Read an uploaded file: its size and pixel count are checked (from the header) before any pixel is read.

    The file goes through the same reader as ``vadapt infer`` (:func:`vadapt.data.io.probe` / ``read_raw``):
    GDAL's allowed drivers only, never a VRT or a ``/vsi`` / URL path (uploads are untrusted: no opt-in here),
    ``.npy`` / ``.npz`` sizes from their headers, ``limits.max_pixels`` applied by the reader itself.

    Args:
        path: the upload's temporary file (never a path typed by a user).
        file_bands: names of the file's bands when it does not name them itself (or to rename them).
        scale: factor applied to the values (e.g. 1e-4 for Sentinel-2 digital numbers -> reflectance).
    Raises:
        AppError: unreadable file, limits exceeded, wrong number of ``file_bands``.
    """
    from vadapt.data.io import DataError, LimitExceeded, RefusedFile, probe, read_raw

    path = Path(path)
    name = name or path.name
    if not path.is_file():
        raise AppError(f"no file received for {name}")
    limits.check_file_size(path.stat().st_size, name)
    try:
        try:  # PIL: palette / grey images become RGB, RGB(A) stay
            info = probe(path, "image", want_rgb=True, max_pixels=limits.max_pixels, allow_vrt=False)
        except LimitExceeded as exc:
            limits.check_image(exc.height, exc.width, 1, name)  # the demo's own wording when it is the pixels
            raise
        limits.check_image(info.height, info.width, info.count, name)
        raw = read_raw(info)
    except DataError as exc:  # the message names the upload's temporary path: show the file's name only
        text = str(exc)
        if isinstance(exc, RefusedFile) and exc.hint:  # a command-line opt-in: the demo has none, uploads are
            text = f"{exc.reason}; this demo never reads them"  # never trusted
        reason = text.split(": ", 1)[-1].replace(str(path), name).replace(str(path.parent) + "/", "")
        raise AppError(f"cannot read {name}: {reason}") from None
    array = np.ascontiguousarray(np.moveaxis(raw, -1, 0)).astype(np.float32)
    invalid = np.zeros(array.shape[1:], dtype=bool)
    nodata = [v for v in info.nodata if v is not None and not np.isnan(v)]
    if len(nodata) == info.count:
        invalid |= np.logical_and.reduce([array[i] == np.float32(v) for i, v in enumerate(nodata)])
    invalid |= ~np.isfinite(array).all(0)
    factor = float(scale) * float(info.scale)
    if factor != 1.0:
        array *= np.float32(factor)
    array[:, invalid] = 0.0
    names = info.names
    if file_bands:
        if len(file_bands) != info.count:
            raise AppError(f"{name} has {info.count} bands but {len(file_bands)} band names were given: "
                           f"{', '.join(file_bands)}")
        names = tuple(file_bands)
    names = tuple(_canonical(n) for n in names) if names else None
    if names is not None and len(set(names)) != len(names):
        names = None  # e.g. two bands described alike: treat as unnamed
    georef = _georef(str(path)) if info.kind == "gdal" else None
    return LoadedImage(array, names, invalid, georef, name)


def model_input(image: LoadedImage, bands: list[str]) -> np.ndarray:
    """The checkpoint's ``bands`` of ``image``, in its order, ``(len(bands), H, W)`` float32.

    Raises:
        AppError: the file lacks some of the bands, or does not name them and has another band count.
    """
    if image.names is None:
        if len(image.array) == len(bands):
            return image.array
        raise AppError(f"{image.name} has {len(image.array)} unnamed bands; the checkpoint needs {len(bands)} "
                       f"({', '.join(bands)}): enter the file's band names")
    missing = [b for b in bands if b not in image.names]
    if missing:
        raise AppError(f"{image.name} has bands {', '.join(image.names)} but the checkpoint needs "
                       f"{', '.join(bands)} (missing: {', '.join(missing)})")
    return image.array[[image.names.index(b) for b in bands]]


def composite(image: LoadedImage, rgb: list[str] | None = None) -> np.ndarray:
    """``(H, W, 3)`` uint8: the bands labelled ``rgb`` (see :meth:`LoadedImage.band_labels`) as red, green,
    blue, each stretched between its 2nd and 98th percentile."""
    from vadapt.visualize import rgb_composite

    labels = image.band_labels()
    rgb = rgb or image.default_rgb()
    unknown = [b for b in rgb if b not in labels]
    if unknown or len(rgb) != 3:
        raise AppError(f"pick three of the image's bands ({', '.join(labels)}) for the composite")
    picked = image.array[[labels.index(b) for b in rgb]]
    return rgb_composite(picked, ["red", "green", "blue"])


def parse_band_names(text: str | None) -> list[str] | None:
    """``"blue, green, red"`` -> ``["blue", "green", "red"]``; empty -> ``None``."""
    names = [t.strip() for t in (text or "").replace(";", ",").split(",") if t.strip()]
    return names or None
