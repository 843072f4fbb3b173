"""``vadapt infer`` for depth checkpoints: tasks whose capabilities say ``image -> depth_map`` (e.g.
:class:`vadapt.tasks.SelfSupervisedDepthTask`, EndoDAC: Cui et al., 2024, arXiv:2405.08672).

A self-supervised monocular depth model is trained on whole frames resized to one size, and its depth is relative:
right up to one unknown scale. So each image is predicted whole (no tiles): read once, resized whole to the training
frame size of the checkpoint's preprocessing record (``resize``; ``--geometry native`` or a record without it: the
image's own size), fed to ``task.predict_depth`` ``(N, 3, h, w) -> (N, 1, h, w)``, and the depth resampled back to the
image's size (bilinear) and multiplied by ``depth_scale``. Everything around the model is the class-map run's:
discovery and output names (:func:`~vadapt.inference.engine.find_jobs`), the header checks before the model loads
(:class:`~vadapt.inference.preflight.JobCheck`: unreadable files, wrong bands -> ``failed.csv``), the plan
(:class:`~vadapt.inference.preflight.RunPlan`, with a ``depth:`` line), resume, shards, atomic outputs (temporaries
renamed when complete), ``failed.csv`` / ``report.json``.

Outputs per input ``<name>``: the depth map in the run's format: ``png`` 16-bit, value ``round(depth * 256)`` (KITTI's
convention; 0 = no depth; PNG text chunks ``depth_scale=1/256`` and ``nodata=0``), ``tif`` float32 GeoTIFF keeping the
input's georeference (nodata 0), ``npy`` float32 ``(H, W)``; and ``<name>_depth_preview.png``: the depth coloured near
red .. far blue (:func:`vadapt.visualize.depth_colours`, over the image's 2nd..98th percentile) above its colour bar,
at most 1024 px on its longest side.

Options: ``tta flip`` averages the depth of the image and of its horizontal mirror (Monodepth2's post-processing
averages disparities with a ramp at the borders; a plain average of depth is ours); a vertical flip or a rotation is
no symmetry of monocular depth (the ground is below), so ``d4`` is refused, as are ``tta_scales``,
``probabilities``, ``overlay`` and change pairs (one line each, before anything is read). ``tile``, ``overlap``,
``blend`` and ``model_threads`` do not apply and are noted when set.

Resizing: the image is resized to the training size with Pillow's Lanczos filter (per band, in float32), because that
is what training did (:mod:`vadapt.data.depth_video`, as the official
Monodepth2 / EndoDAC loaders); unlike training on 8-bit frames the resized values are neither rounded nor clipped to
0..255 (differences of Lanczos ringing only). The depth comes back with bilinear interpolation.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

from vadapt.data.io import DataError
from vadapt.visualize import depth_colour_bar, depth_colours, depth_range

from .console import Console
from .engine import (
    PRECISIONS,
    PREVIEW_SIDE,
    InferReport,
    _identity,
    _single_thread_worker,
    _survey,
    _todo,
    report_names,
    value_settings,
    write_report,
)
from .files import Job, OutputFile, remove_temporaries, temporary
from .fuse import fold_batch_norms
from .options import InferOptions
from .preflight import CheckpointFacts, JobCheck, RunPlan

PREVIEW_TAIL = "_depth_preview.png"  # <name> + this: the coloured preview
PNG_SCALE = 256  # 16-bit PNG value per unit of depth (KITTI)
DEPTH_NODATA = 0.0  # output value where the input has no data (KITTI: 0 = no depth)
#: largest image (height x width) predicted whole: the image and its depth are held in memory as float32
MAX_WHOLE_PIXELS = 2**27
MIN_BAR_WIDTH = 240  # px: the preview's colour bar is at least this wide, so its labels fit


# ---- what a depth run takes ---------------------------------------------------------------------------------
def refused_settings(opts: InferOptions, input_a: str | None, input_b: str | None) -> str | None:
    """Why a depth run cannot take these settings (one line), or ``None``."""
    if input_a is not None or input_b is not None:
        return "a depth checkpoint predicts single images: give --input, not --input-a / --input-b"
    if opts.probabilities:
        return ("--probabilities writes class probabilities, which a depth checkpoint has not; its outputs are the "
                f"depth map and <name>{PREVIEW_TAIL}")
    if opts.overlay:
        return f"--overlay draws class masks; a depth checkpoint writes <name>{PREVIEW_TAIL} instead"
    if opts.tta == "d4":
        return ("--tta d4 rotates and flips images upside down, which monocular depth is not invariant to: use "
                "--tta flip (horizontal mirror) or none")
    if opts.tta_scales:
        return "--tta-scales does not apply to depth: each image is predicted whole at the training size"
    return None


def ignored_settings(opts: InferOptions) -> list[str]:
    """Notes for settings given that a depth run does not use."""
    defaults = InferOptions()
    given = [f"--{name.replace('_', '-')}" for name in ("tile", "overlap", "blend", "model_threads")
             if getattr(opts, name) != getattr(defaults, name)]
    return [f"{', '.join(given)} ignored: depth checkpoints predict each image whole"] if given else []


@dataclass(frozen=True)
class DepthCheck(JobCheck):
    """:class:`JobCheck` (headers, bands, smallest side) plus the largest image held whole in memory."""

    max_whole_pixels: int = MAX_WHOLE_PIXELS

    def open(self, job: Job) -> tuple[dict[str, Any], list]:
        meta, opened = super().open(job)
        if meta["height"] * meta["width"] > self.max_whole_pixels:
            raise DataError(f"{job.sources[0]} is {meta['width']}x{meta['height']} px: depth is predicted on whole "
                            f"images, at most {self.max_whole_pixels:,} px; split it into smaller images")
        return meta, opened


def depth_text(size: tuple[int, int] | None, flip: bool, depth_scale: float) -> str:
    """The plan's ``depth:`` line."""
    scale = f", x {depth_scale:g} (--depth-scale)" if depth_scale != 1.0 else ""
    how = (f"each image predicted whole at {size[1]}x{size[0]} px (the training size) and resampled back"
           if size is not None else "each image predicted whole at its own size")
    passes = "; test-time augmentation: horizontal flip, 2 passes per image" if flip else ""
    return (f"relative depth (self-supervised: up to an unknown scale{scale}); {how}{passes}; png holds "
            f"round(depth x {PNG_SCALE}), 0 = no depth")


# ---- reading (in DataLoader workers) ------------------------------------------------------------------------
def resize_whole(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(H, W, C)`` float32 -> ``(size[0], size[1], C)``, each band with Pillow's Lanczos filter as training resized
    its frames (:mod:`vadapt.data.depth_video`)."""
    from PIL import Image

    if image.shape[:2] == tuple(size):
        return image
    bands = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], dtype=np.float32))
                        .resize((size[1], size[0]), Image.Resampling.LANCZOS)) for c in range(image.shape[-1])]
    return np.stack(bands, -1)


def resample_back(depth: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Depth ``(1, h, w)`` at the model's size -> ``(H, W)`` at the image's ``size`` (bilinear)."""
    return F.interpolate(depth[None], size=size, mode="bilinear", align_corners=False)[0, 0]


class ImageStream(IterableDataset):
    """Yields, per job, ``("image", i, meta, image (C, h, w) at the model's size, invalid (H, W))`` or
    ``("error", i, reason)`` (``check`` says what must hold before a pixel is read; ``size``: the model's input size,
    ``None``: the image's own)."""

    def __init__(self, jobs: Sequence[Job], check: JobCheck, fill: Sequence[float],
                 size: tuple[int, int] | None) -> None:
        self.jobs, self.check, self.size = list(jobs), check, size
        self.fill = np.asarray(fill, dtype=np.float32)

    def __iter__(self) -> Iterator[tuple]:
        worker = torch.utils.data.get_worker_info()
        first, step = (worker.id, worker.num_workers) if worker else (0, 1)
        for index in range(first, len(self.jobs), step):
            yield self._job(index)

    def _job(self, index: int) -> tuple:
        try:
            meta, opened = self.check.open(self.jobs[index])
            (info, indexes), = opened
            image, invalid = self.check.reader.read(info, indexes)
            image[invalid] = self.fill  # neutral after normalisation, as the class-map tiles
            if self.size is not None:
                image = resize_whole(image, self.size)
            tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
            return ("image", index, meta, tensor, torch.from_numpy(invalid))
        except Exception as exc:  # noqa: BLE001 - DataError, or anything a reader library raises
            return ("error", index, str(exc) or type(exc).__name__)


# ---- the model ----------------------------------------------------------------------------------------------
class DepthModel:
    """A depth task as ``(N, C, h, w)`` raw file values -> depth ``(N, 1, h, w)`` float32 on the CPU (adapter merged
    and batch norms folded with ``merge``; ``flip``: averaged with the mirrored image's depth)."""

    def __init__(self, task: torch.nn.Module, opts: InferOptions) -> None:
        from vadapt.adapters import can_merge, merge_adapter

        if task.capabilities.output != "depth_map":
            raise ValueError(f"{type(task).__name__} predicts a {task.capabilities.output}, not depth")
        if opts.merge and task.adapter_config is not None and can_merge(task.adapter_config):
            merge_adapter(task.backbone, task.adapter_config)
        task.eval()
        if opts.merge and any(isinstance(m, torch.nn.BatchNorm2d) for m in task.modules()):
            example = task.input_mean + task.input_std * torch.randn(1, len(task.input_mean.flatten()), 64, 64)
            fold_batch_norms(task, example)
        self.device = torch.device(opts.device)
        if opts.precision == "fp16" and self.device.type == "cpu":
            raise ValueError("precision fp16 needs a GPU; use bf16 on a CPU")
        self.task = task.to(self.device, memory_format=torch.channels_last)
        self.dtype = PRECISIONS[opts.precision]
        self.flip = opts.tta == "flip"
        self.bands = list(task.backbone.bands)
        self.range = (float(task.hparams.get("min_depth", 0.1)), float(task.hparams.get("max_depth", 150.0)))

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            depth = self.task.predict_depth(x).float()
            if self.flip:
                depth = (depth + self.task.predict_depth(x.flip(-1)).float().flip(-1)) / 2
        return depth.cpu()


# ---- writing (main process) ---------------------------------------------------------------------------------
def to_png_values(depth: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, int]:
    """uint16 ``round(depth * 256)``, 0 where not ``valid``; valid depth is kept in 1..65535 (a depth below 1/512
    would read as "no depth"). Also how many pixels were clipped at 65535 (depth above 255.996)."""
    values = np.rint(np.where(valid, depth, 0.0) * PNG_SCALE)
    clipped = int((values > 65535).sum())
    values = np.where(valid, np.clip(values, 1, 65535), 0).astype(np.uint16)
    return values, clipped


def write_png16(path: Path, values: np.ndarray) -> None:
    """A 16-bit greyscale PNG saying its depth scale and nodata value in text chunks; atomically."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("depth_scale", f"1/{PNG_SCALE}")
    info.add_text("nodata", f"{DEPTH_NODATA:g}")
    tmp = temporary(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(values, dtype=np.uint16)).save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, path)


def preview_picture(depth: np.ndarray, fallback: tuple[float, float]) -> np.ndarray:
    """``(H, W)`` depth (0 = none) -> ``(h', w', 3)`` uint8: the coloured depth (every ``s``-th pixel, at most
    1024 px per side) above its colour bar; ``fallback`` is the range drawn when no pixel has depth."""
    step = max(1, math.ceil(max(depth.shape) / PREVIEW_SIDE))
    small = depth[::step, ::step]
    valid = small > 0
    low, high = depth_range(small, valid) if valid.any() else fallback
    colours = depth_colours(small, low, high)
    bar = np.asarray(depth_colour_bar(low, high, width=max(small.shape[1], MIN_BAR_WIDTH)).convert("RGB"))
    canvas = np.full((colours.shape[0] + bar.shape[0], bar.shape[1], 3), 255, dtype=np.uint8)
    canvas[: colours.shape[0], : colours.shape[1]] = colours
    canvas[colours.shape[0] :] = bar
    return canvas


def write_outputs(job: Job, meta: dict[str, Any], depth: np.ndarray, valid: np.ndarray,
                  fallback: tuple[float, float]) -> list[str]:
    """The preview, then the depth map (its name marks the job complete), each renamed into place when written;
    warnings for the report."""
    from PIL import Image

    warnings = []
    path = job.extras["preview"]
    tmp = temporary(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(preview_picture(depth, fallback)).save(tmp, format="PNG")
    os.replace(tmp, path)
    if job.mask.suffix.lower() == ".png":
        values, clipped = to_png_values(depth, valid)
        if clipped:
            warnings.append(f"{clipped} pixels deeper than {65535 / PNG_SCALE:.6g} clipped to it in the 16-bit PNG "
                            "(--format tif or npy keeps them)")
        write_png16(job.mask, values)
    else:
        write_float_depth(job.mask, depth, valid, meta["geo"] if job.mask.suffix.lower() == ".tif" else None)
    return warnings


def write_float_depth(path: Path, depth: np.ndarray, valid: np.ndarray, geo: dict[str, Any] | None) -> None:
    """float32 depth ``(H, W)`` (``DEPTH_NODATA`` where not ``valid``) as a GeoTIFF (``.tif``: nodata tag, ``geo``'s
    georeference when given) or ``.npy``, renamed into place when complete."""
    tif = path.suffix.lower() == ".tif"
    out = OutputFile(path, *depth.shape, 1, "float32", DEPTH_NODATA if tif else None, geo if tif else None)
    try:
        out.write(0, np.where(valid, depth, DEPTH_NODATA).astype(np.float32))
        out.commit()
    except BaseException:
        out.discard()
        raise


# ---- the run ------------------------------------------------------------------------------------------------
def infer_depth(checkpoint: str | os.PathLike, facts: CheckpointFacts, output: Path, input: str | None,
                input_a: str | None, input_b: str | None, opts: InferOptions, report: InferReport, console: Console,
                started: float) -> InferReport:
    """:func:`vadapt.inference.engine.infer` for a depth checkpoint (``facts.capabilities.output == "depth_map"``);
    see the module docstring."""
    refused = refused_settings(opts, input_a, input_b)
    if refused:
        raise ValueError(refused)
    todo = _todo(output, input, None, None, opts, report, {"preview": PREVIEW_TAIL})
    check = dataclasses.replace(DepthCheck.build(facts.bands, facts.num_classes, facts.record, opts), native=True)
    ready = _survey(todo, facts, opts, report, console, check)
    record = facts.record
    size = record.resize if record is not None and opts.geometry == "trained" else None
    plain = dataclasses.replace(opts, tta="none", tta_scales=None)  # the depth line says the flip
    scale, offset, report.preprocessing, report.notes = value_settings(
        record, plain, nodata_out=f"depth maps write {DEPTH_NODATA:g} where the input has no data")
    report.notes += ignored_settings(opts)
    report.outputs = {"output": "depth_map", "depth": "relative (self-supervised: up to an unknown scale)",
                      "depth_scale": opts.depth_scale, "png_depth_scale": f"1/{PNG_SCALE}",
                      "depth_nodata": DEPTH_NODATA}
    depth = depth_text(size, opts.tta == "flip", opts.depth_scale)
    run_plan = RunPlan(input or "", output, ready, len(report.skipped), len(report.failed), len(report.ignored),
                       facts, report.preprocessing, 2 if opts.tta == "flip" else 1,
                       report_names(opts.num_shards, opts.shard_index), report.notes, depth=depth)
    for line in run_plan.lines():
        console.say(line)
    for name, reason in report.failed:
        console.alert(f"failed: {name}: {reason}")
    jobs = [job for job, _ in ready]
    if jobs:
        DepthRun(checkpoint, facts, jobs, opts, report, console, check, size, (scale, offset)).run(started)
    report.seconds = time.perf_counter() - started
    write_report(report, output, opts.num_shards, opts.shard_index)
    return report


class DepthRun:
    """Loads the model, streams the images through it in batches of one size, writes and books every job."""

    def __init__(self, checkpoint: str | os.PathLike, facts: CheckpointFacts, todo: list[Job], opts: InferOptions,
                 report: InferReport, console: Console, check: JobCheck, size: tuple[int, int] | None,
                 values: tuple[float, float]) -> None:
        self.checkpoint, self.facts, self.todo, self.opts = checkpoint, facts, todo, opts
        self.report, self.console, self.check, self.size, self.values = report, console, check, size, values

    def run(self, started: float) -> None:
        from vadapt.loading import load_task

        with self.console.status(f"loading model {self.facts.model}"):
            task = load_task(self.checkpoint, self.opts.weights)
            task.set_value_transform(*self.values)
            self.model = DepthModel(task, self.opts)
        self.report.load_seconds = time.perf_counter() - started
        batch_size = self.opts.batch_size_on(self.model.device.type)
        workers = self.opts.num_workers
        stream = ImageStream(self.todo, self.check, task.raw_fill_values(), self.size)
        loader = DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=_identity,
                            worker_init_fn=_single_thread_worker if workers else None,
                            prefetch_factor=2 * batch_size if workers else None)
        shard = f" [{self.opts.shard_index + 1}/{self.opts.num_shards}]" if self.opts.num_shards > 1 else ""
        self.bar = self.console.progress(len(self.todo), f"vadapt infer{shard}")
        pending: dict[tuple[int, ...], list[tuple]] = {}  # by the model's input shape: one batch, one size
        for item in loader:
            if item[0] == "error":
                self.fail(item[1], item[2])
                continue
            group = pending.setdefault(tuple(item[3].shape), [])
            group.append(item)
            if len(group) >= batch_size:
                self.predict(pending.pop(tuple(item[3].shape)))
        for group in pending.values():
            self.predict(group)
        self.bar.close()

    def predict(self, items: list[tuple]) -> None:
        try:
            depths = self.model(torch.stack([item[3] for item in items]))
        except Exception as exc:  # noqa: BLE001 - e.g. an image the model cannot take: fail its batch only
            for item in items:
                self.fail(item[1], f"the model failed on it: {exc}")
            return
        self.report.tiles += len(items)
        for (_, index, meta, _, invalid), depth in zip(items, depths):
            full = resample_back(depth, (meta["height"], meta["width"])) * self.opts.depth_scale
            scale = self.opts.depth_scale
            try:
                warnings = write_outputs(self.todo[index], meta, full.numpy(), ~invalid.numpy(),
                                         (self.model.range[0] * scale, self.model.range[1] * scale))
            except Exception as exc:  # noqa: BLE001 - e.g. disk full: report the file, keep going
                remove_temporaries(self.todo[index])
                self.fail(index, f"cannot write its output: {exc}")
                continue
            self.done(index, meta, warnings + self._nan_note(meta, invalid))

    @staticmethod
    def _nan_note(meta: dict[str, Any], invalid: torch.Tensor) -> list[str]:
        count = int(invalid.sum())
        if count and not meta["declares_nodata"]:  # no nodata value: the pixels were NaN
            return [f"{count} NaN pixels written as no depth ({DEPTH_NODATA:g})"]
        return []

    def done(self, index: int, meta: dict[str, Any], warnings: list[str]) -> None:
        name = self.todo[index].name
        self.report.done.append(name)
        for note in [*meta.get("notes", ()), *warnings]:
            self.report.warnings.append((name, note))
        self.bar.update()

    def fail(self, index: int, reason: str) -> None:
        self.report.failed.append((self.todo[index].name, reason))
        self.console.alert(f"failed: {self.todo[index].name}: {reason}")
        self.bar.update()
