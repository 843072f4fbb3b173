"""Running checkpoints on whole images: tiled segmentation and change detection."""

from __future__ import annotations

import numpy as np
import torch

from vadapt.inference.options import InferOptions
from vadapt.inference.resampling import plan

from .limits import AppError

NODATA = 255  # mask value where the input has no data (as `vadapt infer`)


def tile_size(task: torch.nn.Module, default: int = InferOptions.tile) -> int:
    """Tile side for sliding-window prediction: ``vadapt infer``'s default tile, but at most the encoder's input
    size where it has a fixed one."""
    img_size = getattr(getattr(task, "backbone", None), "img_size", None)
    # deliberately smaller than `vadapt infer`'s tile for SAM: its encoder pads every input to img_size, so a
    # larger tile would only be refused (vadapt infer refuses it too: --tile larger than the model's input size)
    if task.capabilities.prompts != "none" and img_size:
        return min(int(img_size), default)
    return default


def _classes(predictor, inputs: list[np.ndarray], invalid: np.ndarray, pixel_size: float | None = None) -> np.ndarray:
    from vadapt.inference import sliding_window

    height, width = inputs[0].shape[-2:]
    if min(height, width) < 16:
        raise AppError(f"the image is {width}x{height} pixels; the models need at least 16x16")
    x = torch.from_numpy(np.concatenate(inputs, 0)[None].astype(np.float32))
    # `vadapt infer`'s settings for this tile (overlap, blend, batch size for the device) and its geometry (whole
    # images resized as training resized them): the page shows what a batch run over the same image writes
    options = InferOptions(tile=tile_size(predictor.task))
    job, _ = plan(getattr(predictor.task, "preprocessing", None), height, width, options.tile, options.stride,
                  pixel_size=pixel_size)
    try:
        probs = sliding_window(lambda tiles: predictor(tiles, job.model_size(*tiles.shape[-2:])), x, tile=job.tile,
                               stride=job.stride, blend=options.blend,
                               batch_size=options.batch_size_on(predictor.device.type))
    except (ValueError, RuntimeError) as exc:
        raise AppError(f"the model could not run on this image: {str(exc).splitlines()[0][:300]}") from exc
    mask = probs[0].argmax(0).numpy().astype(np.uint8)
    mask[invalid] = NODATA
    return mask


def segment(predictor, image: np.ndarray, invalid: np.ndarray | None = None, pixel_size: float | None = None
            ) -> np.ndarray:
    """Class ids ``(H, W)`` uint8 of ``image`` ``(C, H, W)`` (the checkpoint's bands, raw values), tiled with
    overlap blending at any size (resampled to the training geometry as ``vadapt infer`` does; ``pixel_size``
    of a georeferenced upload); ``255`` where ``invalid``."""
    invalid = np.zeros(image.shape[1:], dtype=bool) if invalid is None else invalid
    return _classes(predictor, [image], invalid, pixel_size)


def change(predictor, before: np.ndarray, after: np.ndarray, invalid: np.ndarray | None = None
           ) -> tuple[np.ndarray, float]:
    """Change mask ``(H, W)`` uint8 (1 changed, 0 not, 255 no data) of two co-registered images and the changed
    share of the valid pixels in percent."""
    if before.shape != after.shape:
        raise AppError(f"the two images differ in size or bands: {before.shape[2]}x{before.shape[1]} with "
                       f"{before.shape[0]} bands vs {after.shape[2]}x{after.shape[1]} with {after.shape[0]}")
    invalid = np.zeros(before.shape[1:], dtype=bool) if invalid is None else invalid
    mask = _classes(predictor, [before, after], invalid)
    valid = mask != NODATA
    percent = 100.0 * float((mask[valid] == 1).sum()) / max(int(valid.sum()), 1)
    return mask, percent
