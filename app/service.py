"""Everything the page does, as plain methods (no Gradio): the UI module only wires these to components.

A :class:`Demo` holds the offered checkpoints (found on disk at start; a request names one by its label, never
by a path), the loaded models, the uploaded images of the current sessions (by an opaque id) and the folder
for downloads.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vadapt.data.registration import Grid, grid_mismatch
from vadapt.preprocessing import georeferenced_pixel_size

from . import export, images, points, predict, prompts, render
from .checkpoints import CheckpointInfo, ModelCache
from .images import LoadedImage
from .limits import AppError, Limits


@dataclass
class SegmentResult:
    """What the Segment tab shows after a run."""

    result_id: str
    overlay: np.ndarray
    legend: str
    mask_path: Path
    summary: str


@dataclass
class ChangeResult:
    """What the Change tab shows after a run."""

    overlay: np.ndarray
    percent: float
    mask_path: Path
    summary: str


class _Store:
    """A small thread-safe LRU of per-session objects by random id (uploads and results)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize, self._items, self._lock = maxsize, OrderedDict(), threading.Lock()

    def put(self, value: object) -> str:
        key = uuid.uuid4().hex
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        return key

    def get(self, key: str | None, what: str) -> object:
        with self._lock:
            if key is None or key not in self._items:
                raise AppError(f"no {what} yet (or it expired): upload / run again")
            self._items.move_to_end(key)
            return self._items[key]


class Demo:
    """The app's state and actions.

    Args:
        checkpoints: what the dropdowns offer.
        limits: upload limits.
        workdir: where downloads are written (served to the browser by Gradio).
        examples: example inputs by name (``s2``, ``rgb``, ``before``, ``after``), or empty.
    """

    def __init__(self, checkpoints: list[CheckpointInfo], limits: Limits, workdir: Path,
                 examples: dict[str, Path] | None = None) -> None:
        self.checkpoints = {c.label: c for c in checkpoints}
        self.limits, self.workdir, self.examples = limits, Path(workdir), dict(examples or {})
        self.models = ModelCache()
        self.uploads = _Store(32)
        self.results = _Store(32)
        self._composites: OrderedDict[tuple, np.ndarray] = OrderedDict()  # per click, only the mask is new
        self._lock = threading.Lock()

    # ---- checkpoints -------------------------------------------------------------------------------------
    def choices(self, kind: str) -> list[str]:
        """Labels of the checkpoints for a tab (``segment``, ``prompt``, ``change``)."""
        return [label for label, c in self.checkpoints.items() if kind in c.kinds]

    def default(self, kind: str, prefer: str = "") -> str | None:
        """The tab's default checkpoint: the first whose file name starts with ``prefer``, else the first."""
        labels = self.choices(kind)
        preferred = [label for label in labels if self.checkpoints[label].path.name.startswith(prefer)]
        return (preferred or labels or [None])[0]

    def checkpoint(self, label: str | None, kind: str) -> CheckpointInfo:
        """The checkpoint behind a dropdown label; anything else (a path, another tab's model) is refused."""
        info = self.checkpoints.get(label or "")
        if info is None:
            raise AppError("pick a checkpoint from the list" if not label else "unknown checkpoint: pick one from "
                           "the list")
        if kind not in info.kinds:
            raise AppError(f"{info.path.name} is a {info.task}; this tab needs another kind of checkpoint")
        return info

    def describe(self, label: str | None) -> str:
        """Markdown about a checkpoint: task, backbone, trainable parameters, bands, classes."""
        info = self.checkpoints.get(label or "")
        if info is None:
            return "No checkpoint selected." if self.checkpoints else (
                "No checkpoints found: start with `vadapt demo --checkpoints DIR`.")
        return (f"**{info.task}** on **{info.backbone}**, {info.trainable:,} trainable parameters  \n"
                f"bands: {', '.join(info.bands)}  \nclasses: {', '.join(info.class_names)}")

    # ---- uploads -----------------------------------------------------------------------------------------
    def upload(self, path: str | None, file_bands: str | None = None, scale: float = 1.0) -> tuple[str, LoadedImage]:
        """Read an uploaded file (within the limits) and keep it for this session; returns its id."""
        if not path:
            raise AppError("upload an image first")
        image = images.load_image(path, self.limits, images.parse_band_names(file_bands), float(scale or 1.0))
        return self.uploads.put(image), image

    def image(self, image_id: str | None) -> LoadedImage:
        return self.uploads.get(image_id, "image")  # type: ignore[return-value]

    def preview(self, image_id: str, rgb: list[str] | None = None) -> np.ndarray:
        """The RGB composite of an upload (cached for the last few images and band choices; read-only)."""
        key = (image_id, tuple(rgb) if rgb else None)
        with self._lock:
            if key in self._composites:
                self._composites.move_to_end(key)
                return self._composites[key]
        picture = images.composite(self.image(image_id), rgb)
        picture.flags.writeable = False
        with self._lock:
            self._composites[key] = picture
            while len(self._composites) > 8:
                self._composites.popitem(last=False)
        return picture

    # ---- Segment -----------------------------------------------------------------------------------------
    def segment(self, image_id: str, label: str | None, rgb: list[str] | None = None, opacity: float = 0.5,
                geotiff: bool = True) -> SegmentResult:
        """Run a segmentation checkpoint on an uploaded image (tiled at any size)."""
        info = self.checkpoint(label, "segment")
        image = self.image(image_id)
        x = images.model_input(image, list(info.bands))
        mask = predict.segment(self.models.predictor(info), x, image.invalid, georeferenced_pixel_size(image.georef))
        result_id = self.results.put((image_id, mask, info))
        path = export.save_mask(mask, self.workdir / result_id, image.name, image.georef, geotiff)
        counts = render.class_counts(mask, info.num_classes)
        shares = ", ".join(f"{n} {100 * c / max(counts.sum(), 1):.1f} %" for n, c in zip(info.class_names, counts))
        summary = f"{image.name}: {mask.shape[1]}x{mask.shape[0]} px; {shares}"
        overlay = render.class_overlay(self.preview(image_id, rgb), mask, opacity)
        return SegmentResult(result_id, overlay, render.legend_html(info.class_names, counts), path, summary)

    def segment_overlay(self, result_id: str, rgb: list[str] | None, opacity: float) -> np.ndarray:
        """Redraw the last result with other bands or opacity (no model run)."""
        image_id, mask, _ = self.results.get(result_id, "result")  # type: ignore[misc]
        return render.class_overlay(self.preview(image_id, rgb), mask, opacity)

    # ---- Prompt ------------------------------------------------------------------------------------------
    def prompt_start(self, image_id: str) -> prompts.PromptState:
        return prompts.PromptState(image_id=image_id)

    def prompt_view(self, state: prompts.PromptState, label: str | None, rgb: list[str] | None = None,
                    opacity: float = 0.5) -> tuple[np.ndarray, str]:
        """The image with the prompts and, when there are any, SAM's mask; and a line about the run."""
        image = self.image(state.image_id)
        picture = self.preview(state.image_id, rgb)
        if not state.has_prompt:
            text = "Click to add a point." if state.corner is None else "Click the opposite corner of the box."
            return render.prompt_overlay(picture, None, state.points, state.labels, state.box, state.corner), text
        info = self.checkpoint(label, "prompt")
        task = self.models.task(info)
        x = images.model_input(image, list(info.bands))
        result = prompts.prompt_mask(task, x, state, state.image_id)
        how = "image encoded + decoder" if result.encoded else "decoder only, cached image embedding"
        text = (f"{len(state.points)} point(s){' + box' if state.box else ''}: mask {100 * result.mask.mean():.1f} "
                f"% of the image, predicted IoU {result.iou:.2f}, {result.seconds * 1000:.0f} ms ({how})")
        return render.prompt_overlay(picture, result.mask, state.points, state.labels, state.box, state.corner,
                                     opacity), text

    # ---- Change ------------------------------------------------------------------------------------------
    def change(self, before_id: str, after_id: str, label: str | None, opacity: float = 0.5,
               geotiff: bool = True) -> ChangeResult:
        """Run a change-detection checkpoint on two uploaded images of the same size."""
        info = self.checkpoint(label, "change")
        before, after = self.image(before_id), self.image(after_id)
        grids = [Grid.of(i.georef["crs"], i.georef["transform"], *i.shape) if i.georef else None
                 for i in (before, after)]
        problem = grid_mismatch(*grids, before.shape, after.shape)
        if problem and not problem.startswith("different sizes"):  # sizes: the prediction's own message below
            raise AppError(f"the two images do not lie on one pixel grid: {problem}; reproject one onto the other "
                           "(vadapt infer --align does it for folders)")
        a = images.model_input(before, list(info.bands))
        b = images.model_input(after, list(info.bands))
        mask, percent = predict.change(self.models.predictor(info), a, b, before.invalid | after.invalid
                                       if before.invalid.shape == after.invalid.shape else None)
        path = export.save_mask(mask, self.workdir / uuid.uuid4().hex, after.name, after.georef or before.georef,
                                geotiff)
        overlay = render.change_overlay(images.composite(after), mask, opacity)
        summary = f"changed: {percent:.2f} % of the valid pixels ({int((mask == 1).sum()):,} px)"
        return ChangeResult(overlay, percent, path, summary)

    def batch_help(self, label: str | None) -> str:
        """The `vadapt infer` command for a folder of images with the chosen checkpoint."""
        info = self.checkpoints.get(label or "")
        ckpt = info.public() if info else "CHECKPOINT.safetensors"  # never the server's absolute path
        if info is not None and "generate" in info.kinds:  # diffusion adapters: `vadapt generate`
            from .generate import cli_command

            return cli_command(info)
        change = info is not None and "change" in info.kinds
        inputs = "--input-a before/ --input-b after/" if change else "--input scenes/"
        return f"vadapt infer --checkpoint {ckpt} {inputs} --output masks/ --overlay"

    # ---- 3D ----------------------------------------------------------------------------------------------
    def point_choices(self) -> list[str]:
        """Labels of the point classification / part segmentation checkpoints (the 3D tab's)."""
        return [label for label, c in self.checkpoints.items() if points.is_point_checkpoint(c)]

    def point_default(self) -> str | None:
        """The 3D tab's default checkpoint: the first point checkpoint, if any."""
        return (self.point_choices() or [None])[0]

    def point_checkpoint(self, label: str | None) -> CheckpointInfo:
        """The point checkpoint behind a 3D-tab label; anything else is refused."""
        info = self.checkpoints.get(label or "")
        if info is None:
            raise AppError("pick a checkpoint from the list" if not label else "unknown checkpoint: pick one from "
                           "the list")
        if not points.is_point_checkpoint(info):
            raise AppError(f"{info.path.name} is a {info.task}; the 3D tab needs a point-cloud checkpoint")
        return info

    def point_view(self, path: str | None) -> Path:
        """The uploaded cloud or mesh, uncoloured, as a ``.glb`` for ``gr.Model3D``."""
        if not path:
            raise AppError("upload a point cloud or mesh first")
        upload = points.check_upload(path, self.limits)
        return points.show_cloud(upload, self.workdir / uuid.uuid4().hex)

    def predict_points(self, path: str | None, label: str | None, num_points: int = 1024) -> points.PointResult:
        """Run a point checkpoint on an uploaded cloud or mesh: scores, a ``.glb`` to show and (parts) a ``.ply``."""
        if not path:
            raise AppError("upload a point cloud or mesh first")
        info = self.point_checkpoint(label)
        upload = points.check_upload(path, self.limits)
        if not 64 <= int(num_points) <= 16384:
            raise AppError(f"points must be between 64 and 16384, got {num_points}")
        return points.predict_cloud(self.models.task(info), upload, self.workdir / uuid.uuid4().hex,
                                    int(num_points))
