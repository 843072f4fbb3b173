"""The Depth tab's work: relative depth of one uploaded image with a depth checkpoint, its picture and downloads.

A depth checkpoint (capabilities ``image -> depth_map``, e.g. :class:`vadapt.tasks.SelfSupervisedDepthTask`,
EndoDAC: Cui et al., 2024, arXiv:2405.08672) is run exactly as ``vadapt infer`` runs it
(:mod:`vadapt.inference.depth`): the whole image, no-data pixels filled with the values that normalise to the band
mean (``task.raw_fill_values()``), resized to the training frame size of the checkpoint's preprocessing record with
:func:`~vadapt.inference.depth.resize_whole`, mapped to depth by :class:`~vadapt.inference.depth.DepthModel` (adapter
merged, batch norms folded, ``InferOptions()`` defaults) and resampled back to the image's size bilinearly. The
downloads are ``vadapt infer``'s formats: a 16-bit PNG of ``round(depth * 256)`` (0 = no depth;
:func:`~vadapt.inference.depth.to_png_values`, :func:`~vadapt.inference.depth.write_png16`) and float32 depth
``(H, W)`` as ``.npy``, or as a GeoTIFF with the input's georeference (no-data 0) for georeferenced inputs.

Differences from ``vadapt infer``'s preview: the picture shows pixels
without data black (no depth), where the command's preview colours whatever the model said there; small images are
enlarged (nearest neighbour, :func:`.render.enlarge`) before the colour bar is drawn under them, so that the bar's
labels stay sharp on the page.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .export import safe_stem
from .limits import AppError
from .render import enlarge

MIN_SIDE = 16  # smallest image side the app runs a model on (as the Segment tab)
RELATIVE = "relative depth: up to an unknown scale"


@dataclass
class DepthResult:
    """What the Depth tab shows after a run.

    Attributes:
        depth: ``(H, W)`` float32 depth at the image's size (0 where the input has no data).
        picture: ``(h, w, 3)`` uint8: the coloured depth (near red .. far blue), enlarged when small, above its
            colour bar (so taller than the depth image).
        png_path: the 16-bit PNG download (``round(depth * 256)``, 0 = no depth).
        float_path: the float32 download (``.npy``, or ``.tif`` keeping a georeferenced input's CRS and transform).
        summary: the line under the picture (size, value range, that depth is relative).
        seconds: the model's time.
    """

    depth: np.ndarray
    picture: np.ndarray
    png_path: Path
    float_path: Path
    summary: str
    seconds: float = 0.0


def depth_model(task: torch.nn.Module) -> Any:
    """``vadapt infer``'s :class:`~vadapt.inference.depth.DepthModel` of a loaded depth task (CPU, fp32, adapter
    merged); a task that predicts something else is refused in one sentence."""
    from vadapt.inference.depth import DepthModel
    from vadapt.inference.options import InferOptions

    try:
        return DepthModel(task, InferOptions())
    except ValueError as exc:
        raise AppError(str(exc)) from None


def predict_depth(model: Any, image: np.ndarray, invalid: np.ndarray | None = None) -> np.ndarray:
    """Depth ``(H, W)`` float32 of ``image`` ``(C, H, W)`` (the checkpoint's bands, raw file values), as ``vadapt
    infer`` predicts it: no-data pixels (``invalid`` ``(H, W)``) filled with the task's neutral values, the image
    resized whole to the training size (the checkpoint's ``preprocessing.resize``; its own size without one), the
    model's depth ``(1, 1, h, w)`` resampled back bilinearly. Depth is not masked here (see :func:`valid_depth`)."""
    from vadapt.inference.depth import resample_back, resize_whole

    height, width = image.shape[1:]
    if min(height, width) < MIN_SIDE:
        raise AppError(f"the image is {width}x{height} pixels; the models need at least {MIN_SIDE}x{MIN_SIDE}")
    pixels = np.ascontiguousarray(image.transpose(1, 2, 0), dtype=np.float32)
    if invalid is not None and invalid.any():
        pixels[invalid] = np.asarray(model.task.raw_fill_values(), dtype=np.float32)
    record = getattr(model.task, "preprocessing", None)
    size = getattr(record, "resize", None)
    if size is not None:
        pixels = resize_whole(pixels, tuple(size))
    x = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None]
    try:
        depth = model(x)
    except (ValueError, RuntimeError) as exc:
        raise AppError(f"the model could not run on this image: {str(exc).splitlines()[0][:300]}") from exc
    return resample_back(depth[0], (height, width)).numpy().astype(np.float32, copy=False)


def valid_depth(depth: np.ndarray, invalid: np.ndarray) -> np.ndarray:
    """Where the depth means something: the input has data and the depth is finite."""
    return ~invalid & np.isfinite(depth)


def depth_picture(depth: np.ndarray, valid: np.ndarray, fallback: tuple[float, float]) -> np.ndarray:
    """``(h, w, 3)`` uint8: ``vadapt infer``'s preview (:func:`~vadapt.inference.depth.preview_picture`: coloured
    depth over its 2nd..98th percentile, at most 1024 px a side, above the colour bar) of the depth enlarged for the
    page; pixels without depth black. ``fallback``: the range drawn when no pixel has depth."""
    from vadapt.inference.depth import preview_picture

    return preview_picture(enlarge(np.where(valid, depth, 0.0)), fallback)


def save_depth(depth: np.ndarray, valid: np.ndarray, folder: Path, name: str, georef: dict[str, Any] | None,
               geotiff: bool = True) -> tuple[Path, Path, int]:
    """Write ``<stem>_depth.png`` (16-bit, ``round(depth * 256)``, 0 = no depth) and ``<stem>_depth.tif`` (float32
    GeoTIFF, the input's georeference, no-data 0; when ``georef`` and ``geotiff``) or ``<stem>_depth.npy`` (float32
    ``(H, W)``, 0 = no depth) into ``folder``; also how many pixels the PNG clipped (depth above 255.996)."""
    from vadapt.inference.depth import to_png_values, write_float_depth, write_png16

    folder.mkdir(parents=True, exist_ok=True)
    stem = safe_stem(name)
    png = folder / f"{stem}_depth.png"
    values, clipped = to_png_values(depth, valid)
    write_png16(png, values)
    tif = georef is not None and geotiff
    path = folder / f"{stem}_depth.{'tif' if tif else 'npy'}"
    write_float_depth(path, depth, valid, georef)
    return png, path, clipped


def summary(name: str, depth: np.ndarray, valid: np.ndarray, clipped: int) -> str:
    """The line under the picture: size, the depth's range over the valid pixels, and what the numbers mean."""
    height, width = depth.shape
    if not valid.any():
        return f"{name}: {width}x{height} px; no pixel has data, so no depth ({RELATIVE})"
    values = depth[valid]
    text = (f"{name}: {width}x{height} px; depth {values.min():.4g} .. {values.max():.4g} ({RELATIVE}; the colours "
            "span the 2nd..98th percentile, near red .. far blue); PNG download: depth x 256, 0 = no depth")
    if valid.sum() < valid.size:
        text += f"; {valid.size - int(valid.sum()):,} px without data (0)"
    if clipped:
        text += f"; {clipped:,} px deeper than 255.996 clipped in the PNG (the float download keeps them)"
    return text
