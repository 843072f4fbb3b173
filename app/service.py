"""Everything the page does, as plain methods (no Gradio): the UI module only wires these to components.

A :class:`Demo` holds the offered checkpoints (found on disk at start; a request names one by its label, never
by a path), the loaded models, the uploaded images of the current sessions (by an opaque id) and the folder
for downloads. Every action either returns what the page shows or raises :class:`~.limits.AppError`, whose
one line (:func:`failure_message`) the page puts in the tab's message area, leaving the last result as it was.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import uuid
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vadapt.data.registration import Grid, grid_mismatch
from vadapt.preprocessing import georeferenced_pixel_size

from . import depth as depth_tab
from . import export, images, points, predict, prompts, render
from .checkpoints import CheckpointInfo, ModelCache
from .images import LoadedImage
from .limits import AppError, Limits

log = logging.getLogger("vadapt.app")

#: what a tab's Run needs first, by the checkpoint kind of :data:`~.checkpoints.KINDS` (the reason shown while
#: Run is disabled)
UPLOAD_FIRST = {
    "segment": "Upload an image (or use the example scene), then Run.",
    "prompt": "Upload an image (or use the example), then click on it.",
    "change": "Upload both images, before and after (or use the example pair), then Run.",
    "batch": "Upload one or more images, then Run.",
    "points": "Upload a point cloud or mesh, then Run.",
    "depth": "Upload an image (or use the example), then Run.",
}
#: how to get a checkpoint for a tab that has none (``vadapt demo --no-builtin`` or an incomplete install)
NO_CHECKPOINT = {
    "segment": "No segmentation checkpoint here. Train one with `vadapt fit --config configs/quickstart.yaml` "
               "(it writes runs/quickstart/…/adapter.safetensors), then start `vadapt demo --checkpoints "
               "runs/quickstart`.",
    "prompt": "No promptable (SAM-family) checkpoint here. Train one, e.g. `vadapt fit --config "
              "configs/lora_sam_vitb_kvasir.yaml`, then start `vadapt demo --checkpoints runs/lora_sam_vitb_kvasir`.",
    "change": "No change-detection checkpoint here. Train one, e.g. `vadapt fit --config "
              "configs/peftcd_dinov2_levir.yaml`, then start `vadapt demo --checkpoints runs/peftcd_dinov2_levir`.",
    "points": "No point-cloud checkpoint here. Make one: `vadapt make-shapes --output data/shapes`, then `vadapt fit "
              "--config configs/points_quickstart.yaml` (it writes runs/points_quickstart/…/adapter.safetensors), "
              "then start `vadapt demo --checkpoints runs/points_quickstart`.",
    "generate": "No diffusion adapter checkpoint here. Train one, e.g. `vadapt fit --config "
                "configs/resadapter_shapes_demo.yaml`, then start `vadapt demo --checkpoints "
                "runs/resadapter_shapes_demo`.",
    "depth": "No depth checkpoint here. Train one offline with `vadapt fit --config "
             "configs/endodac_quickstart.yaml` (it writes runs/endodac_quickstart/…/adapter.safetensors), then "
             "start `vadapt demo --checkpoints runs/endodac_quickstart`.",
}


def failure_message(exc: BaseException) -> str:
    """The one line the page shows for a failed action: an :class:`AppError` as it is (the user can fix it),
    anything else as its type and first line (a bug: logged in full on the server, never a stack trace in the
    page)."""
    if isinstance(exc, AppError):
        return str(exc)
    log.error("action failed", exc_info=exc)
    first = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"unexpected error ({type(exc).__name__}){': ' + first if first else ''}"


def unique_labels(checkpoints: list[CheckpointInfo]) -> list[CheckpointInfo]:
    """The checkpoints with distinct labels: a label seen before (the same relative path in two folders, e.g. a
    user's folder and the built-in demo) gets its folder's name in front, then a number if need be."""
    from dataclasses import replace

    seen: set[str] = set()
    out = []
    for info in checkpoints:
        label = info.label
        if label in seen:
            label = f"{info.root.name}/{info.label}" if info.root is not None else info.label
        n = 2
        while label in seen:
            label, n = f"{info.label} ({n})", n + 1
        seen.add(label)
        out.append(info if label == info.label else replace(info, label=label))
    return out


@dataclass
class SegmentResult:
    """What the Segment tab shows after a run."""

    result_id: str
    overlay: np.ndarray
    legend: str
    mask_path: Path
    summary: str
    seconds: float = 0.0


@dataclass
class BatchResult:
    """What the Batch tab shows after a run: a zip of the masks, one table row per file, and the files that
    failed (each with its one-line reason)."""

    archive: Path
    rows: list[tuple[str, str]]
    failures: list[str]
    seconds: float = 0.0


@dataclass
class ChangeResult:
    """What the Change tab shows after a run."""

    overlay: np.ndarray
    percent: float
    mask_path: Path
    summary: str
    seconds: float = 0.0


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
        builtin: the folder of the built-in demo checkpoints, if they are offered: a tab's default is the first of
            the user's own checkpoints (``--checkpoints``) of its kind, a built-in one only when there is none.
    """

    def __init__(self, checkpoints: list[CheckpointInfo], limits: Limits, workdir: Path,
                 examples: dict[str, Path] | None = None, builtin: Path | None = None) -> None:
        self.checkpoints = {c.label: c for c in unique_labels(checkpoints)}
        self.builtin = Path(builtin).resolve() if builtin is not None else None
        self.limits, self.workdir, self.examples = limits, Path(workdir), dict(examples or {})
        self.models = ModelCache()
        self.uploads = _Store(32)
        self.results = _Store(32)
        self._composites: OrderedDict[tuple, np.ndarray] = OrderedDict()  # per click, only the mask is new
        self._lock = threading.Lock()

    # ---- checkpoints -------------------------------------------------------------------------------------
    def choices(self, kind: str) -> list[str]:
        """Labels of the checkpoints for a tab (a kind of :data:`~.checkpoints.KINDS`: ``segment``, ``prompt``,
        ``change``, ``points``, ``generate``, ``depth``)."""
        return [label for label, c in self.checkpoints.items() if kind in c.kinds]

    def batch_choices(self) -> list[str]:
        """The Batch tab's list: every checkpoint but the depth ones (the Depth tab's; folders of images: `vadapt
        infer`)."""
        return [label for label, c in self.checkpoints.items() if "depth" not in c.kinds]

    def is_builtin(self, info: CheckpointInfo) -> bool:
        """Whether a checkpoint is one of the built-in demo checkpoints."""
        return self.builtin is not None and info.path.resolve().is_relative_to(self.builtin)

    def default(self, kind: str, prefer: str = "") -> str | None:
        """The tab's default checkpoint, taken from the user's own checkpoints of this kind when there are any
        (else the built-in ones): the first whose file name starts with ``prefer``, else the first."""
        labels = self.choices(kind)
        own = [label for label in labels if not self.is_builtin(self.checkpoints[label])]
        candidates = own or labels
        preferred = [label for label in candidates if self.checkpoints[label].path.name.startswith(prefer)]
        return (preferred or candidates or [None])[0]

    def not_ready(self, kind: str, label: str | None, missing: str | None = None) -> str | None:
        """Why a tab cannot run now, as the sentence shown beside its disabled Run button, or ``None`` when it
        can: no checkpoint of the tab's ``kind``, none picked, or ``missing`` (an input not uploaded yet)."""
        labels = self.choices(kind)
        if not labels:
            return NO_CHECKPOINT[kind]
        if label not in labels:
            return "Pick a checkpoint from the list."
        return missing

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
        lines = [f"**{info.task}** on **{info.backbone}**, {info.trainable:,} trainable parameters"]
        if info.bands:  # point clouds have none
            lines.append(f"bands: {', '.join(info.bands)}")
        if "depth" in info.kinds:
            lines.append(f"predicts: {depth_tab.RELATIVE}")
        else:
            lines.append(f"classes: {', '.join(info.class_names)}")
        if self.is_builtin(info):
            lines.append("_built-in demo checkpoint_")
        return "  \n".join(lines)

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
    def _mask(self, image: LoadedImage, info: CheckpointInfo) -> np.ndarray:
        x = images.model_input(image, list(info.bands))
        return predict.segment(self.models.predictor(info), x, image.invalid, georeferenced_pixel_size(image.georef))

    def segment(self, image_id: str, label: str | None, rgb: list[str] | None = None, opacity: float = 0.5,
                geotiff: bool = True) -> SegmentResult:
        """Run a segmentation checkpoint on an uploaded image (tiled at any size)."""
        info = self.checkpoint(label, "segment")
        image = self.image(image_id)
        start = time.perf_counter()
        mask = self._mask(image, info)
        seconds = time.perf_counter() - start
        result_id = self.results.put((image_id, mask, info))
        path = export.save_mask(mask, self.workdir / result_id, image.name, image.georef, geotiff)
        counts = render.class_counts(mask, info.num_classes)
        shares = ", ".join(f"{n} {100 * c / max(counts.sum(), 1):.1f} %" for n, c in zip(info.class_names, counts))
        summary = f"{image.name}: {mask.shape[1]}x{mask.shape[0]} px; {shares}"
        overlay = render.class_overlay(self.preview(image_id, rgb), mask, opacity)
        return SegmentResult(result_id, overlay, render.legend_html(info.class_names, counts), path, summary,
                             seconds)

    def segment_overlay(self, result_id: str, rgb: list[str] | None, opacity: float) -> np.ndarray:
        """Redraw the last result with other bands or opacity (no model run)."""
        image_id, mask, _ = self.results.get(result_id, "result")  # type: ignore[misc]
        return render.class_overlay(self.preview(image_id, rgb), mask, opacity)

    # ---- Prompt ------------------------------------------------------------------------------------------
    def prompt_start(self, image_id: str) -> prompts.PromptState:
        return prompts.PromptState(image_id=image_id)

    def prompt_click(self, state: prompts.PromptState | None, x: float, y: float, mode: str, label: str | None
                     ) -> tuple[prompts.PromptState, np.ndarray, str]:
        """One click at ``(x, y)`` on the picture as the page shows it (enlarged by :func:`.render.display_factor`
        when small): a new state with the click, its picture and line. ``state`` itself is left as it was, so a
        failed run changes nothing."""
        if state is None:
            raise AppError("upload an image first")
        factor = render.display_factor(*self.image(state.image_id).shape)
        new = copy.deepcopy(state)
        new.click((float(x) + 0.5) / factor - 0.5, (float(y) + 0.5) / factor - 0.5, mode)
        return (new, *self.prompt_view(new, label))

    def prompt_edit(self, state: prompts.PromptState | None, label: str | None, action: str
                    ) -> tuple[prompts.PromptState, np.ndarray, str]:
        """``undo`` the last click or ``clear`` them all: a new state, its picture and line (``state`` unchanged)."""
        if state is None:
            raise AppError("upload an image first")
        new = copy.deepcopy(state)
        match action:
            case "undo":
                new.undo()
            case "clear":
                new.clear()
            case _:
                raise ValueError(f"unknown prompt action {action!r}: undo or clear")
        return (new, *self.prompt_view(new, label))

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
        start = time.perf_counter()
        mask, percent = predict.change(self.models.predictor(info), a, b, before.invalid | after.invalid
                                       if before.invalid.shape == after.invalid.shape else None)
        seconds = time.perf_counter() - start
        path = export.save_mask(mask, self.workdir / uuid.uuid4().hex, after.name, after.georef or before.georef,
                                geotiff)
        overlay = render.change_overlay(images.composite(after), mask, opacity)
        summary = f"changed: {percent:.2f} % of the valid pixels ({int((mask == 1).sum()):,} px)"
        return ChangeResult(overlay, percent, path, summary, seconds)

    # ---- Depth -------------------------------------------------------------------------------------------
    def depth(self, image_id: str, label: str | None, geotiff: bool = True) -> depth_tab.DepthResult:
        """Run a depth checkpoint on an uploaded image as ``vadapt infer`` does (whole image at the training size,
        depth back at the image's size): the coloured depth above its colour bar, a 16-bit PNG and a float32
        ``.npy`` (a GeoTIFF for georeferenced inputs when ``geotiff``) to download."""
        info = self.checkpoint(label, "depth")
        image = self.image(image_id)
        model = self.models.depth(info)
        x = images.model_input(image, list(info.bands))
        start = time.perf_counter()
        values = depth_tab.predict_depth(model, x, image.invalid)
        seconds = time.perf_counter() - start
        valid = depth_tab.valid_depth(values, image.invalid)
        png, floats, clipped = depth_tab.save_depth(values, valid, self.workdir / uuid.uuid4().hex, image.name,
                                                image.georef, geotiff)
        picture = depth_tab.depth_picture(values, valid, model.range)
        return depth_tab.DepthResult(np.where(valid, values, 0.0).astype(np.float32), picture, png, floats,
                                     depth_tab.summary(image.name, values, valid, clipped), seconds)

    # ---- Batch -------------------------------------------------------------------------------------------
    def batch_not_ready(self, label: str | None, paths: list[str] | None) -> str | None:
        """Why the Batch tab's Run cannot run now (``None``: it can). The page segments a few uploaded files with
        a segmentation checkpoint; anything else is the command line's job (the command is shown)."""
        if not self.choices("segment"):
            return NO_CHECKPOINT["segment"]
        info = self.checkpoints.get(label or "")
        if info is None:
            return "Pick a checkpoint from the list."
        if "segment" not in info.kinds:
            return (f"This page runs segmentation checkpoints on a few files; for {info.path.name} ({info.task}) "
                    "use the command below.")
        return None if paths else UPLOAD_FIRST["batch"]

    def batch(self, paths: list[str] | None, label: str | None, geotiff: bool = True) -> BatchResult:
        """Segment up to ``limits.max_batch_files`` uploaded images with one checkpoint: a zip of their masks and a
        row per file. A file that cannot be segmented is listed with its reason; the batch fails only when none
        can."""
        info = self.checkpoint(label, "segment")
        paths = list(paths or [])
        if not paths:
            raise AppError("upload one or more images first")
        if len(paths) > self.limits.max_batch_files:
            raise AppError(f"{len(paths)} files; this page segments up to {self.limits.max_batch_files} at once "
                           "(for folders use the command below)")
        folder, rows, failures, written = self.workdir / uuid.uuid4().hex, [], [], []
        start = time.perf_counter()
        for n, path in enumerate(paths):
            name = Path(path).name
            try:
                image = images.load_image(path, self.limits)
                mask = self._mask(image, info)
            except AppError as exc:
                failures.append(f"{name}: {exc}" if name not in str(exc) else str(exc))
                continue
            written.append(export.save_mask(mask, folder / f"{n:03d}", image.name, image.georef, geotiff))
            counts = render.class_counts(mask, info.num_classes)
            shares = ", ".join(f"{c} {100 * k / max(counts.sum(), 1):.1f} %" for c, k in zip(info.class_names, counts))
            rows.append((image.name, f"{mask.shape[1]}x{mask.shape[0]} px; {shares}"))
        if not rows:
            raise AppError("no file could be segmented: " + "; ".join(failures))
        archive = folder / "masks.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
            names: set[str] = set()
            for path in written:
                name, k = path.name, 2
                while name in names:  # two uploads of the same name: mask.png, mask_2.png
                    name, k = f"{path.stem}_{k}{path.suffix}", k + 1
                names.add(name)
                zipped.write(path, name)
        return BatchResult(archive, rows, failures, time.perf_counter() - start)

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
        return self.choices("points")

    def point_default(self) -> str | None:
        """The 3D tab's default checkpoint (see :meth:`default`)."""
        return self.default("points")

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
