"""Interactive prompts for promptable (SAM-family) checkpoints: the click state and one decoder run per click.

The image embedding is computed once per image (and input size) and cached in the task
(``PromptableSegmentationTask.predict_with_prompts``, keyed by the app's image id), so each click re-runs only
SAM's prompt encoder and mask decoder. Images larger than the encoder's input are resized (longest side to
``img_size``, as SAM's ``ResizeLongestSide``) and the mask is upsampled back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .limits import AppError

MODES = ("foreground point", "background point", "box (two corners)")


@dataclass
class PromptState:
    """Points, labels and an optional box on one image, with an undo history (snapshots before each click)."""

    image_id: str | None = None
    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None
    corner: tuple[float, float] | None = None  # first corner of a box being drawn
    history: list[tuple] = field(default_factory=list)

    @property
    def has_prompt(self) -> bool:
        return bool(self.points) or self.box is not None

    def _snapshot(self) -> tuple:
        return list(self.points), list(self.labels), self.box, self.corner

    def click(self, x: float, y: float, mode: str) -> None:
        """One click in ``mode`` (see :data:`MODES`): a point, or a box corner (the second corner closes it)."""
        if mode not in MODES:
            raise AppError(f"unknown prompt mode {mode!r}")
        self.history.append(self._snapshot())
        if mode == MODES[2]:
            if self.corner is None:
                self.corner = (float(x), float(y))
            else:
                (x0, y0), (x1, y1) = self.corner, (float(x), float(y))
                self.box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
                self.corner = None
            return
        self.points.append((float(x), float(y)))
        self.labels.append(1 if mode == MODES[0] else 0)

    def undo(self) -> None:
        """Take back the last click (a point, a box corner or the corner that closed a box)."""
        if self.history:
            self.points, self.labels, self.box, self.corner = self.history.pop()

    def clear(self) -> None:
        self.points, self.labels, self.box, self.corner, self.history = [], [], None, None, []


def encoder_size(task: torch.nn.Module) -> int:
    return int(task.backbone.img_size)


@dataclass
class PromptResult:
    """SAM's answer to one click: the mask ``(H, W)`` bool, its predicted IoU, the seconds the model took, and
    whether the image had to be encoded (False: the cached embedding was reused, only the decoder ran)."""

    mask: np.ndarray
    iou: float
    seconds: float
    encoded: bool


def prompt_mask(task: torch.nn.Module, image: np.ndarray, state: PromptState, image_id: str) -> PromptResult:
    """SAM's mask for ``state``'s prompts on ``image`` ``(C, H, W)`` (the checkpoint's bands, raw values), the
    image embedding cached in ``task`` under ``image_id`` (and the encoder input size)."""
    if not state.has_prompt:
        raise AppError("click on the image to add a point (or two corners of a box) first")
    height, width = image.shape[1:]
    size = encoder_size(task)
    factor = min(1.0, size / max(height, width))
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    if factor < 1.0:
        small = (max(1, round(height * factor)), max(1, round(width * factor)))
        x = F.interpolate(x[None], size=small, mode="area")[0]
    sy, sx = x.shape[1] / height, x.shape[2] / width
    points = labels = boxes = None
    if state.points:
        points = torch.tensor([[px * sx, py * sy] for px, py in state.points], dtype=torch.float32)
        labels = torch.tensor(state.labels, dtype=torch.long)
    if state.box is not None:
        x0, y0, x1, y1 = state.box
        boxes = torch.tensor([x0 * sx, y0 * sy, x1 * sx, y1 * sy], dtype=torch.float32)
    key = f"{image_id}@{tuple(x.shape)}"
    encoded = task.cache.get(key) is None
    start = time.perf_counter()
    try:
        logits, ious = task.predict_with_prompts(x, points, labels, boxes, image_id=key)
    except (ValueError, RuntimeError) as exc:
        raise AppError(f"the model could not run on this image: {str(exc).splitlines()[0][:300]}") from exc
    best = int(ious[0].argmax())
    logits = logits[:1, best : best + 1]
    if logits.shape[-2:] != (height, width):
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    seconds = time.perf_counter() - start
    return PromptResult((logits[0, 0] > 0).numpy(), float(ious[0, best]), seconds, encoded)
