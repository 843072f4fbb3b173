"""``vadapt infer``: run an adapter checkpoint over folders of images of any size, and lose nothing.

How it works: DataLoader workers open the files, split each into overlapping tiles (GeoTIFF and ``.npy`` are
read window by window, never whole) and stream the tiles to the main process, which batches tiles across
images through the model (merged with its adapter when the adapter can be merged) and blends each image's
tile predictions row by row (:class:`vadapt.inference.tiling.RowBlender`). Finished rows go straight into the
output file, so memory is bounded by one tile row whatever the image size.

Outputs keep the input's relative path and georeference (GeoTIFF in -> GeoTIFF out with the same CRS,
transform, size; class ids, ``255`` where the input had no data). Every output is written to a temporary
name and renamed when complete; a rerun skips finished outputs. Files that cannot be processed (unreadable,
wrong bands, too small, unpaired ...) are reported on screen and in ``failed.csv`` / ``report.json`` in the
output folder, and the run goes on.

Before the model loads, the run says its plan (:mod:`vadapt.inference.preflight`): every input's header is checked
against the checkpoint's manifest, so files that cannot be predicted are reported at once, and the user sees how
many images and tiles there are and where the outputs go before waiting for the model. Everything a run says goes
through one :class:`~vadapt.inference.console.Console`: the plan and progress on standard output, failures on
standard error; a redrawn status line and progress bar on a terminal, plain lines without control characters in a
log.

Depth checkpoints (capabilities ``image -> depth_map``, read from the manifest) are run by
:mod:`vadapt.inference.depth` on whole images, with the same discovery, header checks, resume and reports.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

from vadapt.data.io import DataError, FileInfo
from vadapt.preprocessing import Preprocessing
from vadapt.tiling import Blend, RowBlender, tile_grid
from vadapt.visualize import PALETTE, overlay, rgb_composite

from .console import Console
from .files import (
    MASK_NODATA,
    Job,
    OutputFile,
    list_inputs,
    make_jobs,
    pair_inputs,
    remove_temporaries,
    temporary,
)
from .fuse import fold_batch_norms
from .options import InferOptions, Precision, check_choice
from .preflight import CheckpointFacts, JobCheck, RunPlan, refusal, survey
from .resampling import Plan
from .tta import TestTimeAugmentation

os.environ.setdefault("GDAL_CACHEMAX", "64")  # MB; GDAL's default (5% of RAM) would dwarf our own buffers
PRECISIONS: dict[Precision, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
assert set(PRECISIONS) == set(get_args(Precision)), "a precision of InferOptions without a torch dtype"
PREVIEW_SIDE = 1024  # longest side of --overlay pictures


@dataclass
class InferReport:
    """What a run did; ``failed`` and ``warnings`` are ``(input, reason)`` rows."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    #: run-wide notes said once (an old checkpoint without its preprocessing record, pixel sizes ...)
    notes: list[str] = field(default_factory=list)
    #: what the run did to the values and geometry (the checkpoint's record, flags applied)
    preprocessing: str = ""
    tiles: int = 0
    #: what the outputs' values mean, merged into report.json (class maps: the mask's nodata value)
    outputs: dict[str, Any] = field(default_factory=lambda: {"mask_nodata": MASK_NODATA})
    seconds: float = 0.0  # the whole run
    load_seconds: float = 0.0  # of which loading the model

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        predicting = self.seconds - self.load_seconds
        rate = self.tiles / predicting if predicting > 0 else 0.0
        text = (f"done {len(self.done)}, skipped {len(self.skipped)} (already complete), failed {len(self.failed)}"
                f" — {self.tiles} tiles in {self.seconds:.1f} s ({rate:.1f} tiles/s after {self.load_seconds:.1f} s"
                " loading the model)")
        if self.ignored:
            text += f"; ignored {len(self.ignored)} files without an image suffix"
        return text


# ---- reading (in DataLoader workers) ------------------------------------------------------------------------
class TileStream(IterableDataset):
    """Yields, per job: ``("start", i, meta)``, ``("tile", i, window, image (C, h, w), invalid (h, w))`` ...,
    then ``("end", i)``, or ``("error", i, reason)`` as soon as something is wrong with the file (``check`` says
    what must hold before a pixel is read)."""

    def __init__(self, jobs: Sequence[Job], check: JobCheck, fill: Sequence[float]) -> None:
        self.jobs, self.check, self.reader = list(jobs), check, check.reader
        self.fill = np.asarray(fill, dtype=np.float32)

    def __iter__(self) -> Iterator[tuple]:
        worker = torch.utils.data.get_worker_info()
        first, step = (worker.id, worker.num_workers) if worker else (0, 1)
        for index in range(first, len(self.jobs), step):
            yield from self._job(index)

    def _job(self, index: int) -> Iterator[tuple]:
        try:
            meta, opened = self.check.open(self.jobs[index])
        except Exception as exc:  # noqa: BLE001 - DataError, or anything a reader library raises
            yield ("error", index, str(exc) or type(exc).__name__)
            return
        yield ("start", index, meta)
        try:
            # formats without windowed reads (PNG/JPEG, .npz) are decoded once; GeoTIFF / .npy by window
            whole = [self.reader.read(info, idx) if info.kind in ("pil", "npz") else None for info, idx in opened]
            for window in tile_grid(meta["height"], meta["width"], meta["plan"].tile, meta["plan"].stride):
                parts, invalid = [], None
                for (info, idx), full in zip(opened, whole):
                    image, bad = self._read(info, idx, full, window)
                    parts.append(image)
                    invalid = bad if invalid is None else invalid | bad
                image = np.concatenate(parts, -1)
                image[invalid] = np.tile(self.fill, len(parts))  # neutral after normalisation
                yield ("tile", index, window, torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                       torch.from_numpy(invalid))
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the workers
            yield ("error", index, str(exc) or type(exc).__name__)
            return
        yield ("end", index)

    def _read(self, info: FileInfo, indexes: list[int], whole: tuple | None,
              window: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        if whole is None:
            return self.reader.read(info, indexes, window)
        y, x, h, w = window
        image, invalid = whole
        return image[y : y + h, x : x + w].copy(), invalid[y : y + h, x : x + w].copy()


def class_argmax(probs: torch.Tensor) -> torch.Tensor:
    """``(K, H, W)`` -> ``(H, W)`` uint8 index of the largest; a loop over the few classes is ~10× faster than
    ``argmax(0)``, which reduces over the outermost (strided) axis. Ties go to the lower class, as argmax."""
    best, index = probs[0].clone(), torch.zeros(probs.shape[1:], dtype=torch.uint8)
    for k in range(1, probs.shape[0]):
        better = probs[k] > best
        index[better] = k
        torch.maximum(best, probs[k], out=best)
    return index


def _identity(item: Any) -> Any:
    return item


def _single_thread_worker(_: int) -> None:
    torch.set_num_threads(1)


# ---- writing (main process) ---------------------------------------------------------------------------------
class OpenJob:
    """One image being predicted: its blender, its output files and its small preview for ``--overlay``."""

    def __init__(self, job: Job, meta: dict[str, Any], blend: Blend, num_classes: int, bands: Sequence[str]) -> None:
        self.job, self.meta, self.bands = job, meta, bands
        height, width = meta["height"], meta["width"]
        self.plan: Plan = meta["plan"]
        self.blender = RowBlender(height, width, self.plan.tile, self.plan.stride, blend)
        self.ended = False
        self.invalid_pixels = 0
        suffix = job.mask.suffix.lower()
        self.outputs: dict[str, OutputFile] = {}
        palette = PALETTE[np.arange(256) % len(PALETTE)].flatten().tolist()
        if "probabilities" in job.extras:
            if suffix == ".png":  # 8-bit confidence of the winning class
                self.outputs["probabilities"] = OutputFile(job.extras["probabilities"], height, width, 1, "uint8", 0)
            else:
                dtype = "float32" if suffix == ".tif" else "float16"
                self.outputs["probabilities"] = OutputFile(job.extras["probabilities"], height, width, num_classes,
                                                           dtype, float("nan"), meta["geo"])
        self.outputs["mask"] = OutputFile(job.mask, height, width, 1, "uint8", MASK_NODATA, meta["geo"], palette)
        self.step = max(1, math.ceil(max(height, width) / PREVIEW_SIDE))
        if "overlay" in job.extras:
            shape = (math.ceil(height / self.step), math.ceil(width / self.step))
            self.preview_image = np.zeros((len(bands), *shape), dtype=np.float32)
            self.preview_mask = np.zeros(shape, dtype=np.uint8)

    @property
    def complete(self) -> bool:
        return self.ended and self.blender.received == len(self.blender)

    def add(self, window: tuple[int, int, int, int], scores: torch.Tensor, image: torch.Tensor) -> None:
        if "overlay" in self.job.extras:
            self._preview(self.preview_image, window[0], window[1], image[: len(self.bands)].numpy())
        for top, rows in self.blender.add(window, scores):
            self._write(top, rows)

    def _preview(self, target: np.ndarray, y: int, x: int, values: np.ndarray) -> None:
        """Copy the pixels of ``values`` (C, h, w) at (y, x) that fall on the preview grid into ``target``."""
        s = self.step
        ry, rx = -y % s, -x % s
        picked = values[..., ry::s, rx::s]
        top, left = (y + ry) // s, (x + rx) // s
        target[..., top : top + picked.shape[-2], left : left + picked.shape[-1]] = picked

    def _write(self, top: int, rows: torch.Tensor) -> None:
        probs, invalid = rows[:-1], rows[-1] > 0.5
        mask = class_argmax(probs)
        mask[invalid] = MASK_NODATA
        self.invalid_pixels += int(invalid.sum())
        if "probabilities" in self.outputs:
            out = self.outputs["probabilities"]
            if out.bands == 1:
                values = (probs.max(0).values * 255).round().to(torch.uint8)
                values[invalid] = 0
            else:
                values = probs.clone()
                values[:, invalid] = float("nan")
            out.write(top, values.numpy())
        self.outputs["mask"].write(top, mask.numpy())
        if "overlay" in self.job.extras:
            self._preview(self.preview_mask, top, 0, mask.numpy())

    def commit(self) -> None:
        if "overlay" in self.job.extras:
            from PIL import Image

            picture = overlay(rgb_composite(self.preview_image, self.bands), self.preview_mask, 0.5,
                              ignore_index=MASK_NODATA)
            path = self.job.extras["overlay"]
            tmp = temporary(path)
            Image.fromarray(picture).save(tmp)
            os.replace(tmp, path)
        for key in ("probabilities", "mask"):  # the mask last: its name marks the job complete
            if key in self.outputs:
                self.outputs[key].commit()

    def discard(self) -> None:
        for out in self.outputs.values():
            out.discard()
        remove_temporaries(self.job)


# ---- the run ------------------------------------------------------------------------------------------------
class Predictor:
    """The checkpoint's model as ``(N, C·inputs, h, w)`` raw values -> ``(N, K, h, w)`` probabilities, optionally
    resampled to the size the model was trained at and back, and with test-time augmentation."""

    def __init__(self, task: torch.nn.Module, device: str, merge: bool = InferOptions.merge,
                 precision: Precision = InferOptions.precision, fold_norms: bool = InferOptions.merge,
                 tta: TestTimeAugmentation | None = None) -> None:
        from vadapt.adapters import can_merge, merge_adapter

        caps = task.capabilities
        refused = refusal(type(task).__name__, caps)
        if refused:
            raise ValueError(refused)
        if caps.output != "class_map":  # depth: vadapt.inference.depth, chosen from the manifest before loading
            raise ValueError(f"{type(task).__name__} predicts a {caps.output}, not class maps: vadapt infer runs it "
                             "from its adapter .safetensors checkpoint (whose manifest says what it predicts)")
        self.merged, self.folded = False, 0
        if merge and task.adapter_config is not None and can_merge(task.adapter_config):
            merge_adapter(task.backbone, task.adapter_config)
            self.merged = True
        task.eval()
        if fold_norms and any(isinstance(m, torch.nn.BatchNorm2d) for m in task.modules()):
            example = [task.input_mean + task.input_std * torch.randn(1, len(task.input_mean.flatten()), 64, 64)
                       for _ in range(caps.num_inputs)]
            self.folded = fold_batch_norms(task, *example)
        # channels-last convolutions are ~10-15% faster on CPU (oneDNN) and on tensor-core GPUs; same results
        self.task = task.to(device, memory_format=torch.channels_last)
        self.device = torch.device(device)
        check_choice("precision", precision)
        if precision == "fp16" and self.device.type == "cpu":
            raise ValueError("precision fp16 needs a GPU; use bf16 on a CPU")
        self.dtype = PRECISIONS[precision]
        self.inputs = caps.num_inputs
        self.bands = list(task.backbone.bands)
        self.num_classes = int(task.hparams.get("num_classes", 2))
        self.class_logits = task.class_logits  # (N, K, h, w) class logits of the task's inputs
        self.tta = tta or TestTimeAugmentation()

    @torch.inference_mode()
    def __call__(self, tiles: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Probabilities ``(N, K, h, w)`` of ``(N, C·inputs, h, w)`` tiles; with ``size``, the tiles are resized to
        it first (bilinear, as training's albumentations ``Resize``) and the probabilities resized back."""
        tiles = tiles.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        height, width = tiles.shape[-2:]
        if size is not None and tuple(size) != (height, width):
            tiles = F.interpolate(tiles, size=tuple(size), mode="bilinear", align_corners=False)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            probs = self.tta(self._logits, tiles).float()
        if probs.shape[-2:] != (height, width):
            probs = F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)
        return probs.cpu()

    def _logits(self, tiles: torch.Tensor) -> torch.Tensor:
        return self.class_logits(*tiles.chunk(self.inputs, dim=1))


class FolderRun:
    """The main-process side of a run: batches the workers' tiles through the model (``model_threads``
    batches in flight), blends and writes each image, and books every file as done or failed."""

    def __init__(self, predictor: Predictor, todo: Sequence[Job], report: InferReport, bar: Any, batch_size: int,
                 model_threads: int, open_job: Callable[[Job, dict[str, Any]], OpenJob],
                 alert: Callable[[str], None] = print) -> None:
        self.predictor, self.todo, self.report, self.bar, self.alert = predictor, todo, report, bar, alert
        self.batch_size, self.model_threads, self.open_job = batch_size, model_threads, open_job
        self.open_jobs: dict[int, OpenJob] = {}
        self.pending: list[tuple] = []
        self.in_flight: deque[tuple[list[tuple], Future]] = deque()
        self.started = time.perf_counter()

    def consume(self, items: Iterable[tuple]) -> None:
        """Handle the stream of :class:`TileStream` items to the end."""
        with ThreadPoolExecutor(self.model_threads, thread_name_prefix="vadapt-model") as self.pool:
            for item in items:
                kind, index = item[0], item[1]
                if kind == "start":
                    try:
                        self.open_jobs[index] = self.open_job(self.todo[index], item[2])
                    except Exception as exc:  # noqa: BLE001
                        self.fail(index, f"cannot create its output: {exc}")
                elif kind == "tile" and index in self.open_jobs:
                    _, _, (_, _, h, w), _, _ = item
                    self.pending.append((*item, self.open_jobs[index].plan.model_size(h, w)))
                    if len(self.pending) >= self.batch_size:
                        self.launch()
                elif kind == "error":
                    self.fail(index, item[2])
                elif kind == "end" and index in self.open_jobs:
                    self.open_jobs[index].ended = True
                    self.finish(index)
            if self.pending:
                self.launch()
            while self.in_flight:
                self.collect()

    def fail(self, index: int, reason: str) -> None:
        state = self.open_jobs.pop(index, None)
        if state is not None:
            state.discard()
        self.pending[:] = [p for p in self.pending if p[1] != index]
        self.report.failed.append((self.todo[index].name, reason))
        self.alert(f"failed: {self.todo[index].name}: {reason}")
        self.bar.update()

    def finish(self, index: int) -> None:
        state = self.open_jobs[index]
        if not state.complete:
            return
        try:
            state.commit()
        except Exception as exc:  # noqa: BLE001 - e.g. disk full: report the file, keep going
            self.fail(index, f"cannot write its output: {exc}")
            return
        self.open_jobs.pop(index)
        self.report.done.append(state.job.name)
        for note in state.meta.get("notes", ()):
            self.report.warnings.append((state.job.name, note))
        if state.invalid_pixels and not state.meta["declares_nodata"]:  # no nodata value: the pixels were NaN
            self.report.warnings.append(
                (state.job.name, f"{state.invalid_pixels} NaN pixels written as nodata ({MASK_NODATA})"))
        self.bar.update()

    def predict_groups(self, batch: list[tuple]) -> list[tuple[list[tuple], torch.Tensor]]:
        """Runs in a model thread: the batch's tiles grouped by size (and the size the model takes them at), each
        group through the model."""
        groups: dict[tuple, list[tuple]] = {}
        for item in batch:
            groups.setdefault((tuple(item[3].shape), item[5]), []).append(item)
        return [(items, self.predictor(torch.stack([item[3] for item in items]), size))
                for (_, size), items in groups.items()]

    def launch(self) -> None:
        batch, self.pending = self.pending, []
        self.in_flight.append((batch, self.pool.submit(self.predict_groups, batch)))
        if len(self.in_flight) > self.model_threads:
            self.collect()

    def collect(self) -> None:
        """Blend and write the oldest batch in flight (oldest first: each image's tiles stay in row order)."""
        batch, future = self.in_flight.popleft()
        try:
            groups = future.result()
        except Exception as exc:  # noqa: BLE001 - e.g. a tile the model cannot take: fail its images only
            for index in sorted({item[1] for item in batch}):
                if index in self.open_jobs:
                    self.fail(index, f"the model failed on it: {exc}")
            return
        touched = set()
        for items, probs in groups:
            self.report.tiles += len(items)
            for (_, index, window, image, invalid, _), p in zip(items, probs):
                if index not in self.open_jobs:
                    continue
                try:
                    self.open_jobs[index].add(window, torch.cat([p, invalid[None].float()]), image)
                except Exception as exc:  # noqa: BLE001
                    self.fail(index, f"cannot write its output: {exc}")
                    continue
                touched.add(index)
        elapsed = time.perf_counter() - self.started
        self.bar.set_postfix(tiles_per_s=f"{self.report.tiles / max(elapsed, 1e-9):.1f}", refresh=False)
        for index in touched:
            if index in self.open_jobs:
                self.finish(index)


def find_jobs(output: Path, input: str | None, input_a: str | None, input_b: str | None, fmt: str,
              probabilities: bool, overlay: bool) -> tuple[list[Job], list[tuple[str, str]], list[str]]:
    """Jobs, discovery failures ``(name, reason)`` and ignored files, sorted by name."""
    if (input is None) == (input_a is None and input_b is None) or (input_a is None) != (input_b is None):
        raise ValueError("give either --input, or --input-a and --input-b (change detection)")
    out = output.resolve()
    problems: list[tuple[str, str]] = []  # directories named like images, broken links, loops, unreadable files

    def listed(source: str) -> tuple[Path, list[Path], list[Path]]:
        root, images, ignored = list_inputs(source, failures=problems)
        keep = [p for p in images if out not in p.resolve().parents]  # never read our own outputs back
        return root, keep, ignored

    if input is not None:
        root, images, ignored = listed(input)
        jobs, failures = make_jobs([(p,) for p in images], root, output, fmt, probabilities, overlay)
    else:
        root, files_a, ignored = listed(input_a)
        root_b, files_b, ignored_b = listed(input_b)
        pairs, failures = pair_inputs(root, files_a, root_b, files_b)
        jobs, collisions = make_jobs(pairs, root, output, fmt, probabilities, overlay)
        failures += collisions
        ignored += ignored_b
    return jobs, sorted(failures + problems), sorted(str(p) for p in ignored)


def infer(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    input: str | None = None,
    input_a: str | None = None,
    input_b: str | None = None,
    *,
    options: InferOptions | None = None,
    **settings: Any,
) -> InferReport:
    """Predict every image under ``input`` (folder, glob or file) into ``output``; see the module docstring.

    Before loading the model the run reads the checkpoint's manifest and every input's header, fails the inputs
    that cannot be predicted, and says its plan on standard error (unless ``progress=False``: then only failures
    are said, one line each).

    Args:
        checkpoint: adapter checkpoint (``.safetensors``) or Lightning ``.ckpt`` of a vadapt task.
        output: the output folder; outputs mirror the inputs' paths relative to ``input``.
        input: folder (searched recursively), glob (``"scenes/**/*.tif"``) or one file.
        input_a, input_b: for change detection (instead of ``input``), the before / after folders, files
            paired by relative path.
        options: the run's settings (:class:`~vadapt.inference.options.InferOptions`; default: its defaults).
        **settings: single settings by name, applied over ``options``: ``infer(ckpt, "out/", input="in/",
            tile=256, overlap=32)``. An unknown name raises :class:`TypeError` with the closest valid one; a
            bad value :class:`ValueError` naming the setting.
    """
    opts = InferOptions.build(options, **settings)
    output = Path(output)
    started = time.perf_counter()
    console = Console(opts.progress)
    report = InferReport()
    # read first to send depth checkpoints to their runner; a missing file is said after the inputs are listed, so
    # that a folder without images says so first (before anything about the model)
    facts = CheckpointFacts.read(checkpoint) if Path(checkpoint).is_file() else None
    if facts is not None and facts.capabilities is not None:
        refused = refusal(facts.task, facts.capabilities)
        if refused:  # what loading the model would say, without the wait
            raise ValueError(refused)
        if facts.capabilities.output == "depth_map":
            from .depth import infer_depth

            return infer_depth(checkpoint, facts, output, input, input_a, input_b, opts, report, console, started)
    todo = _todo(output, input, input_a, input_b, opts, report)
    if facts is None:
        facts = CheckpointFacts.read(checkpoint)
    ready = _survey(todo, facts, opts, report, console)
    if facts is not None:
        _, _, report.preprocessing, report.notes = value_settings(facts.record, opts)
    tta = TestTimeAugmentation(opts.tta, opts.tta_scales or (1.0,))
    source = input if input is not None else f"{input_a} + {input_b}"
    run_plan = RunPlan(source, output, ready, len(report.skipped), len(report.failed), len(report.ignored), facts,
                       report.preprocessing, tta.passes, report_names(opts.num_shards, opts.shard_index), report.notes)
    for line in run_plan.lines():
        console.say(line)
    for name, reason in report.failed:  # found before loading: discovery and headers
        console.alert(f"failed: {name}: {reason}")
    todo = [job for job, _ in ready]
    if todo:
        _predict(checkpoint, facts, todo, opts, report, console, tta, started)
    report.seconds = time.perf_counter() - started
    write_report(report, output, opts.num_shards, opts.shard_index)
    return report


def _todo(output: Path, input: str | None, input_a: str | None, input_b: str | None, opts: InferOptions,
          report: InferReport, extra_outputs: dict[str, str] | None = None) -> list[Job]:
    """This shard's jobs whose outputs are not complete (unless ``overwrite``); the others, discovery failures and
    ignored files go to ``report``. No image at all is a :class:`DataError`, before anything is loaded.
    ``extra_outputs`` adds outputs to every job: key -> what follows the output's stem (``"_depth_preview.png"``)."""
    jobs, failures, report.ignored = find_jobs(output, input, input_a, input_b, opts.format, opts.probabilities,
                                               opts.overlay)
    for job in jobs:
        for key, tail in (extra_outputs or {}).items():
            job.extras[key] = job.mask.with_name(job.mask.stem + tail)
    nothing = not jobs  # no image at all, in any shard (a shard may be empty when files are few)
    jobs, failures = jobs[opts.shard_index :: opts.num_shards], failures[opts.shard_index :: opts.num_shards]
    report.failed += failures
    todo = []
    for job in jobs:
        remove_temporaries(job)  # left by a killed run; each job belongs to exactly one shard
        if job.complete() and not opts.overwrite:
            report.skipped.append(job.name)
        else:
            todo.append(job)
    if nothing:
        where = input if input is not None else f"{input_a} / {input_b}"
        notes = [f"{len(report.ignored)} files without an image suffix ignored"] if report.ignored else []
        if report.failed:
            write_report(report, output, opts.num_shards, opts.shard_index)
            notes.append(f"{len(report.failed)} failed, e.g. {report.failed[0][0]}: {report.failed[0][1]}")
        raise DataError(f"no input images to predict in {where}" + (f" ({'; '.join(notes)})" if notes else ""))
    return todo


def _survey(todo: list[Job], facts: CheckpointFacts | None, opts: InferOptions, report: InferReport,
            console: Console, check: JobCheck | None = None) -> list[tuple[Job, dict[str, Any] | None]]:
    """``(job, metadata)`` of the jobs whose headers pass the checkpoint's checks (``check``: default the class-map
    run's); the others go to ``report.failed``. Without the checkpoint's facts (a Lightning ``.ckpt``) every job,
    metadata ``None``: the workers check them."""
    if facts is None:
        return [(job, None) for job in todo]
    check = check or JobCheck.build(facts.bands, facts.num_classes, facts.record, opts)
    with console.status(f"reading image headers 0/{len(todo)}", transient=True) as status:
        ready, failed = survey(todo, check, lambda n: setattr(status, "text", f"reading image headers {n}/{len(todo)}"))
    report.failed += failed
    return ready


def _predict(checkpoint: str | os.PathLike, facts: CheckpointFacts | None, todo: list[Job], opts: InferOptions,
             report: InferReport, console: Console, tta: TestTimeAugmentation, started: float) -> None:
    """Load the model, then stream ``todo`` through it (see the module docstring); the results go to ``report``."""
    from vadapt.loading import load_task

    with console.status(f"loading model {facts.model if facts is not None else Path(checkpoint).name}"):
        task = load_task(checkpoint, opts.weights)
        record = prepare_values(task, opts, report)
        predictor = Predictor(task, opts.device, opts.merge, opts.precision, fold_norms=opts.merge, tta=tta)
    native = opts.geometry == "native" or record is None or record.resize is None
    largest = getattr(predictor.task, "img_size", None)  # SAM-family tasks take at most their encoder's size
    if largest is not None and opts.tile > largest and native:
        raise ValueError(f"--tile {opts.tile} is larger than this model's input size {largest}: use --tile {largest} "
                         "or smaller")
    if facts is None:  # not said with the plan
        for note in report.notes:
            console.say(f"note: {note}")
    report.load_seconds = time.perf_counter() - started
    device_type = predictor.device.type
    batch_size = opts.batch_size_on(device_type)
    model_threads = opts.model_threads_on(device_type, torch.get_num_threads())
    num_workers = opts.num_workers
    check = JobCheck.build(predictor.bands, predictor.num_classes, record, opts)  # the model's own, as planned
    stream = TileStream(todo, check, predictor.task.raw_fill_values())
    loader = DataLoader(stream, batch_size=None, num_workers=num_workers, collate_fn=_identity,
                        worker_init_fn=_single_thread_worker if num_workers else None,
                        prefetch_factor=2 * batch_size if num_workers else None)
    shard = f" [{opts.shard_index + 1}/{opts.num_shards}]" if opts.num_shards > 1 else ""
    bar = console.progress(len(todo), f"vadapt infer{shard}")
    run = FolderRun(predictor, todo, report, bar, batch_size, model_threads,
                    lambda job, meta: OpenJob(job, meta, opts.blend, predictor.num_classes, predictor.bands),
                    console.alert)
    intra_op = torch.get_num_threads()
    torch.set_num_threads(max(1, intra_op // model_threads))
    try:
        run.consume(loader)
    finally:
        torch.set_num_threads(intra_op)
    bar.close()


def value_settings(record: Preprocessing | None, opts: InferOptions,
                   nodata_out: str = f"masks write {MASK_NODATA} where the input has no data"
                   ) -> tuple[float, float, str, list[str]]:
    """How a run of ``opts`` reads file values, for a checkpoint whose preprocessing record is ``record``
    (``None``: from before the record): ``(scale, offset, the report's preprocessing text, run-wide notes)``; each
    of the checkpoint's settings is replaced by its flag when given. ``nodata_out`` says what the outputs hold
    where the input has no data."""
    scale = opts.scale if opts.scale is not None else record.scale if record else 1.0
    offset = opts.offset if opts.offset is not None else record.offset if record else 0.0
    notes = []
    if record is None and opts.scale is None:
        notes.append("the checkpoint does not record how training scaled its values (written by an older "
                     "vadapt or outside a vadapt datamodule): values are fed as read; give --scale if "
                     "training scaled them (e.g. 0.00392156862745098 for 8-bit photos read as 0..1)")
    geometry = "native scale" if opts.geometry == "native" or record is None or record.resize is None else \
        f"whole images resized to {record.resize[1]}x{record.resize[0]} px as in training"
    if opts.ignore_nodata:
        nodata = "none (--ignore-nodata)"
    elif record is not None and record.nodata is None:
        nodata = "none (as in training)"
    else:
        nodata = f"{record.nodata} ({record.nodata_rule} bands)" if record else "file (all bands)"
    text = (f"values x {scale:.6g}{f' + {offset:.6g}' if offset else ''}; {geometry}; input nodata: {nodata}; "
            f"{nodata_out}")
    if opts.tta != "none" or opts.tta_scales:
        text += f"; test-time augmentation: {TestTimeAugmentation(opts.tta, opts.tta_scales or (1.0,)).describe()}"
    return scale, offset, text, notes


def prepare_values(task: Any, opts: InferOptions, report: InferReport) -> Preprocessing | None:
    """Make ``task`` take file values as they are: the checkpoint's value scale / offset, each replaced by its flag
    when given. Returns the checkpoint's preprocessing record (``None`` for a checkpoint from before it, which is
    noted in ``report``); ``report.preprocessing`` says what the run does."""
    record = getattr(task, "preprocessing", None)
    scale, offset, report.preprocessing, report.notes = value_settings(record, opts)
    task.set_value_transform(scale, offset)
    return record


def report_names(num_shards: int = 1, shard_index: int = 0) -> tuple[str, str]:
    """The names of a run's ``failed.csv`` and ``report.json`` (tagged by shard when there are several)."""
    tag = f".shard{shard_index}of{num_shards}" if num_shards > 1 else ""
    return f"failed{tag}.csv", f"report{tag}.json"


def write_report(report: InferReport, output: Path, num_shards: int = 1, shard_index: int = 0) -> None:
    """``failed.csv`` (input, reason; failures and warnings) and ``report.json`` in ``output``, atomically."""
    output.mkdir(parents=True, exist_ok=True)
    rows = [(name, "failed", reason) for name, reason in report.failed]
    rows += [(name, "warning", reason) for name, reason in report.warnings]
    csv_path, json_path = (output / name for name in report_names(num_shards, shard_index))
    tmp = csv_path.with_name(f".{csv_path.name}.vadapt-partial")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("input", "status", "reason"))
        writer.writerows(rows)
    os.replace(tmp, csv_path)
    summary = {
        "done": report.done, "skipped": report.skipped, "ignored": report.ignored, "tiles": report.tiles,
        "seconds": round(report.seconds, 3), "load_seconds": round(report.load_seconds, 3),
        "preprocessing": report.preprocessing, **report.outputs, "notes": report.notes,
        "failed": [{"input": n, "reason": r} for n, r in report.failed],
        "warnings": [{"input": n, "reason": r} for n, r in report.warnings],
    }
    tmp = json_path.with_name(f".{json_path.name}.vadapt-partial")
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, json_path)
