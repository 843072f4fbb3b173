"""Mask downloads: a GeoTIFF with the input's georeference when it had one, else a PNG of class ids."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from .predict import NODATA


def safe_stem(name: str) -> str:
    """A file-name stem built from an uploaded file's name: letters, digits, ``-_.`` only."""
    stem = Path(name).name
    for suffix in (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy", ".npz"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "image"


def save_mask(mask: np.ndarray, folder: Path, name: str, georef: dict[str, Any] | None,
              geotiff: bool = True) -> Path:
    """Write class ids ``(H, W)`` uint8 into ``folder``: ``<stem>_mask.tif`` (deflate, nodata 255, the input's
    CRS and transform) when ``georef`` is given and ``geotiff``, else ``<stem>_mask.png``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    stem = safe_stem(name)
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    if georef is not None and geotiff:
        import rasterio

        path = folder / f"{stem}_mask.tif"
        profile = {"driver": "GTiff", "height": mask.shape[0], "width": mask.shape[1], "count": 1,
                   "dtype": "uint8", "nodata": NODATA, "compress": "deflate", **georef}
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(mask, 1)
        return path
    path = folder / f"{stem}_mask.png"
    Image.fromarray(mask, mode="L").save(path)
    return path
