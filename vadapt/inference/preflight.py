"""What a ``vadapt infer`` run will do, known before the model loads: the checkpoint's manifest, every input's header,
and the plan said from them.

Building a model takes seconds to a minute; reading a manifest and a few image headers takes milliseconds. So a run
first reads what it can without building the model (:class:`CheckpointFacts`), checks every input the way the
workers will (:class:`JobCheck`: a readable header with the checkpoint's bands, the size limits, a change pair on one
pixel grid, and the :class:`~vadapt.inference.resampling.Plan` of its tiles), fails the inputs that cannot be
predicted, and says the plan (:func:`plan_lines`): how many images, their sizes, how they will be read, how many
tiles, where the outputs go. The workers run the same :class:`JobCheck` again when they open a file (it may have
changed in between), so the plan and the run cannot disagree about what a file is.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vadapt.checkpoint import AdapterCheckpointError, read_manifest
from vadapt.contracts import TaskCapabilities
from vadapt.data.io import BandReader, DataError, FileInfo
from vadapt.data.registration import Grid, grid_mismatch
from vadapt.data.safe_open import open_raster
from vadapt.preprocessing import Preprocessing, georeferenced_pixel_size, pixel_size_note
from vadapt.tiling import tile_starts

from .files import Job
from .options import InferOptions
from .resampling import Plan, plan

MIN_SIDE = 16  # pixels: smaller images are reported rather than predicted from padding
#: the most memory one image's row of blended tiles may take (``(classes + 1) x tile x width`` float32): 1 GiB takes
#: a 170,000 px wide raster at tile 512 with 2 classes; wider ones are refused with the reason, not swapped to death
MAX_ROW_BYTES = 2**30
MAX_LISTED = 3  # distinct per-image notes the plan spells out (all of them are in report.json)


# ---- the checkpoint, from its manifest ----------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointFacts:
    """What an adapter checkpoint's manifest says about prediction, read without building the model.

    Attributes:
        model: ``"efficientnet_lite0 + lora"`` (``"... (merged)"``, or the backbone alone without an adapter).
        task: the task's class name, for messages.
        bands: the bands the model reads, in order.
        num_classes: classes of the masks it writes.
        record: how training read its images (:class:`~vadapt.preprocessing.Preprocessing`), ``None`` for a
            checkpoint from before the record.
        capabilities: what the task can do, when the manifest stores it.
    """

    model: str
    task: str
    bands: tuple[str, ...]
    num_classes: int
    record: Preprocessing | None
    capabilities: TaskCapabilities | None = None

    @classmethod
    def read(cls, path: str | os.PathLike) -> CheckpointFacts | None:
        """The facts of an adapter checkpoint (``.safetensors``); ``None`` for a Lightning ``.ckpt`` (its settings
        come only with its tensors) or a manifest without bands or class count. A file that is no vadapt checkpoint
        raises what loading it would (``FileNotFoundError``, :class:`~vadapt.checkpoint.AdapterCheckpointError`)."""
        if Path(path).suffix != ".safetensors":
            return None
        manifest = read_manifest(path)
        backbone = manifest.get("backbone") if isinstance(manifest.get("backbone"), dict) else {}
        bands = manifest.get("bands") or backbone.get("bands")
        init_args = manifest.get("init_args") if isinstance(manifest.get("init_args"), dict) else {}
        num_classes = init_args.get("num_classes", 2)
        if not isinstance(bands, list) or not all(isinstance(b, str) for b in bands) or type(num_classes) is not int:
            return None  # loading the model says what is wrong with such a file
        try:
            record = Preprocessing.from_dict(manifest.get("preprocessing"), str(path))
        except ValueError as exc:
            raise AdapterCheckpointError(str(exc)) from None
        stored = manifest.get("capabilities")
        try:
            capabilities = TaskCapabilities.from_dict(stored) if isinstance(stored, dict) else None
        except (TypeError, ValueError):
            capabilities = None
        return cls(model=_model_name(manifest, backbone), task=str(manifest.get("task", "")).rpartition(".")[2],
                   bands=tuple(bands), num_classes=num_classes, record=record,
                   capabilities=capabilities)


def _model_name(manifest: dict[str, Any], backbone: dict[str, Any]) -> str:
    """``backbone + adapter method`` as users name them (``efficientnet_lite0 + lora``)."""
    from vadapt.adapters import as_adapter_config

    name = str(backbone.get("name", "?"))
    if manifest.get("merged"):
        return f"{name} (merged)"
    try:
        config = as_adapter_config(manifest.get("adapter"))
    except (TypeError, ValueError):  # loading the model names what is wrong with it
        return f"{name} + adapter"
    return f"{name} + {config.method}" if config is not None else name


def refusal(task: str, capabilities: TaskCapabilities) -> str | None:
    """Why ``vadapt infer`` cannot run a task with ``capabilities`` (``None`` when it can)."""
    if capabilities.prompts == "required":
        return (f"{task} checkpoints need point / box prompts per image; vadapt infer runs segmentation and "
                "change-detection checkpoints (use the app or Python for prompts)")
    if capabilities.output == "depth_map" and capabilities.input == "image":
        return None  # whole images, not tiles: vadapt.inference.depth
    if capabilities.output != "class_map" or not capabilities.tiles:
        return (f"the checkpoint holds a {task} ({capabilities.input} -> {capabilities.output}); vadapt infer runs "
                "checkpoints that map images to classes (segmentation, change detection) or to depth; use vadapt "
                "predict-points for point clouds and vadapt generate for diffusion adapters")
    return None


# ---- every input, from its header ---------------------------------------------------------------------------
@dataclass(frozen=True)
class JobCheck:
    """What an input must pass before a pixel is read, and the metadata its prediction needs.

    :meth:`open` reads the headers of a job's files (the configured bands present, the pixel limits), checks a change
    pair lies on one pixel grid (or, with ``align``, reads the second warped onto the first's), the smallest side and
    the memory of one blended tile row, and plans its tiles. Picklable: DataLoader workers run it again.
    """

    reader: BandReader
    tile: int
    stride: int
    num_classes: int = 2  # sizes the blender's row buffer
    record: Preprocessing | None = None  # how training saw images (geometry), unless native
    native: bool = False
    align: bool = False
    min_side: int = MIN_SIDE

    @classmethod
    def build(cls, bands: Sequence[str], num_classes: int, record: Preprocessing | None,
              opts: InferOptions) -> JobCheck:
        """The check of a run of ``opts`` with a model of ``bands``: values read as they are in the files (the task
        applies the value scale), nodata as training read it unless ``ignore_nodata``."""
        if opts.ignore_nodata:
            nodata, rule = None, "all"
        else:
            nodata, rule = (record.nodata, record.nodata_rule) if record else ("file", "all")
        reader = BandReader(bands, opts.file_bands, nodata=nodata, nodata_rule=rule, max_pixels=opts.max_pixels,
                            allow_vrt=opts.allow_vrt)
        return cls(reader, opts.tile, opts.stride, num_classes, record, opts.geometry == "native", opts.align)

    def open(self, job: Job) -> tuple[dict[str, Any], list[tuple[FileInfo, list[int]]]]:
        """The job's metadata (``height``, ``width``, ``geo``, ``plan``, ``declares_nodata``, ``notes``) and its files'
        ``(info, band indexes)`` to read it with; a file that cannot be predicted raises (a :class:`DataError`, or
        what its reader library raises)."""
        opened = [self.reader.info(path) for path in job.sources]
        meta, infos = self._check(job, [info for info, _ in opened])
        return meta, [(info, indexes) for info, (_, indexes) in zip(infos, opened)]

    def _check(self, job: Job, infos: list[FileInfo]) -> tuple[dict[str, Any], list[FileInfo]]:
        """A change pair must lie on one pixel grid (size, CRS, geotransform), else it is refused with the numbers,
        or with ``align`` the second image is read warped onto the first's grid."""
        first, geo = infos[0], _georeference(infos[0])
        grid = _grid(first, geo)
        checked = [first]
        for other in infos[1:]:
            other_grid = _grid(other, _georeference(other))
            problem = grid_mismatch(grid, other_grid, (first.height, first.width), (other.height, other.width))
            if problem and self.align and grid is not None and other_grid is not None:
                other = dataclasses.replace(other, warp_to=grid, height=first.height, width=first.width)
            elif problem:
                hint = (" (--align reprojects the second onto the first)" if grid and other_grid else
                        " (--align needs both georeferenced)" if grid or other_grid else "")
                raise DataError(f"the pair {job.name} does not lie on one pixel grid: {problem}: {first.path} vs "
                                f"{other.path}{hint}")
            checked.append(other)
        if min(first.height, first.width) < self.min_side:
            raise DataError(f"{first.path} is {first.width}×{first.height} px; images need at least "
                            f"{self.min_side} px per side")
        found = georeferenced_pixel_size(geo)
        job_plan, note = plan(self.record, first.height, first.width, self.tile, self.stride, self.native, found)
        # the blender holds one tile row of float32 scores and weights: memory grows with the width, not the height
        row_bytes = 4 * (self.num_classes + 1) * min(job_plan.tile, first.height) * first.width
        if row_bytes > MAX_ROW_BYTES:
            raise DataError(f"{first.path} is {first.width:,} px wide: one row of {self.tile}-px tiles would hold "
                            f"{row_bytes / 2**30:.1f} GiB of scores (the limit is {MAX_ROW_BYTES / 2**30:.0f} GiB); "
                            f"use a smaller --tile (it scales with the tile) or split the raster into strips")
        meta = {"height": first.height, "width": first.width, "geo": geo, "plan": job_plan,
                "declares_nodata": self.reader.nodata is not None and (
                    self.reader.nodata != "file" or any(v is not None for v in first.nodata)),
                "notes": [note] if note else []}
        if self.record is not None and job_plan.factor is None and job_plan.size is None:  # predicted at native size
            size_note = pixel_size_note(self.record.pixel_size, found)
            if size_note:
                meta["notes"].append(size_note)
        return meta, checked


def _grid(info: FileInfo, geo: dict[str, Any] | None) -> Grid | None:
    """The pixel grid of a georeferenced (by geotransform) input; None otherwise."""
    if geo is None or "transform" not in geo:
        return None
    return Grid.of(geo["crs"], geo["transform"], info.height, info.width)


def _georeference(info: FileInfo) -> dict[str, Any] | None:
    if info.kind != "gdal":
        return None
    with open_raster(info.path, info.allow_vrt) as src:  # the drivers and options probe opened it with
        if src.crs is None and src.transform.is_identity and not src.gcps[0]:
            return None
        geo: dict[str, Any] = {"crs": src.crs, "transform": src.transform}
        if src.gcps[0]:
            geo = {"gcps": src.gcps[0], "crs": src.gcps[1]}
        return geo


def survey(jobs: Sequence[Job], check: JobCheck, counted: Callable[[int], None] | None = None
           ) -> tuple[list[tuple[Job, dict[str, Any]]], list[tuple[str, str]]]:
    """``(job, metadata)`` of the jobs that pass ``check`` and ``(name, reason)`` of those that do not, in order;
    ``counted(n)`` is told after each of them (for a status line)."""
    ready, failed = [], []
    for done, job in enumerate(jobs, 1):
        try:
            ready.append((job, check.open(job)[0]))
        except Exception as exc:  # noqa: BLE001 - DataError, or anything a reader library raises (as in the workers)
            failed.append((job.name, str(exc) or type(exc).__name__))
        if counted is not None:
            counted(done)
    return ready, failed


def tile_count(meta: dict[str, Any]) -> int:
    """How many tiles the workers cut the image of ``meta`` into (:func:`vadapt.tiling.tile_grid`'s length)."""
    job_plan: Plan = meta["plan"]
    return (len(tile_starts(meta["height"], job_plan.tile, job_plan.stride))
            * len(tile_starts(meta["width"], job_plan.tile, job_plan.stride)))


# ---- the plan, in words -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunPlan:
    """What a run will do, gathered before the model loads; :meth:`lines` says it.

    Attributes:
        source: the input as given (folder, glob, file, or the two folders of a change pair).
        output: the output folder.
        ready: ``(job, metadata)`` of the images to predict (metadata ``None`` when the checkpoint could not be read
            before loading it: a Lightning ``.ckpt``).
        skipped: images whose outputs exist (a rerun).
        failed: inputs that cannot be predicted, found so far.
        ignored: files without an image suffix.
        facts: the checkpoint's manifest (``None``: a Lightning ``.ckpt``).
        reading: how the values are read (the report's ``preprocessing`` text; empty when not known yet).
        passes: model passes per tile (test-time augmentation).
        reports: the names of the run's report files.
        notes: run-wide notes (an old checkpoint without its preprocessing record ...).
        depth: for a depth checkpoint, how its images are predicted and what the depth means (said instead of the
            tiles); empty for class maps.
    """

    source: str
    output: Path
    ready: Sequence[tuple[Job, dict[str, Any] | None]]
    skipped: int
    failed: int
    ignored: int
    facts: CheckpointFacts | None
    reading: str
    passes: int
    reports: Sequence[str]
    notes: Sequence[str] = ()
    depth: str = ""

    def lines(self) -> list[str]:
        """The plan: a headline, then indented lines (sizes, model, reading, tiles, outputs, notes)."""
        total = len(self.ready) + self.skipped + self.failed
        head = (f"vadapt infer: {total} input{'s' * (total != 1)} in {self.source}: {len(self.ready)} to predict, "
                f"{self.skipped} already done (skipped), {self.failed} failed")
        if self.ignored:
            head += f"; {self.ignored} file{'s' * (self.ignored != 1)} without an image suffix ignored"
        lines = [head]
        metas = [meta for _, meta in self.ready if meta is not None]
        if self.facts is None:
            lines.append("  sizes, bands and tiles: known once the model is loaded (the checkpoint has no manifest "
                         "to read them from first); files are checked as they are read")
        if metas:
            lines.append(f"  sizes: {_sizes(metas)} px (width x height)")
        if self.facts is not None:
            what = "depth" if self.depth else f"{self.facts.num_classes} classes"
            lines.append(f"  model: {self.facts.model}, {what} from {len(self.facts.bands)} bands: "
                         f"{' '.join(self.facts.bands)}")
        if self.reading:
            lines.append(f"  reading: {self.reading}")
        if self.depth:
            lines.append(f"  depth: {self.depth}")
        elif metas:
            lines.append(f"  tiles: {self._tiles(metas)}")
        lines.append(f"  outputs: {self._outputs()}")
        lines += [f"  note: {note}" for note in self.notes]
        lines += [f"  note: {note}" for note in self._image_notes()]
        return lines

    def _tiles(self, metas: list[dict[str, Any]]) -> str:
        counts = [tile_count(meta) for meta in metas]
        low, high = min(counts), max(counts)
        text = f"{sum(counts)} in all ({low if low == high else f'{low} to {high}'} per image)"
        ways = Counter(_geometry(meta["plan"]) for meta in metas)
        text += "; " + "; ".join(way if len(ways) == 1 else f"{way} ({n})" for way, n in ways.most_common())
        if self.passes > 1:
            text += f"; {self.passes} model passes per tile (test-time augmentation)"
        return text

    def _outputs(self) -> str:
        jobs = [job for job, _ in self.ready]
        main = "depth maps" if self.depth else "masks"
        kinds = [f"{main} ({', '.join(sorted({job.mask.suffix for job in jobs}))})"] if jobs else []
        for key, label in (("probabilities", "probabilities"), ("overlay", "overlays"), ("preview", "previews")):
            suffixes = sorted({job.extras[key].name.removeprefix(job.mask.stem) for job in jobs if key in job.extras})
            if suffixes:
                kinds.append(f"{label} (*{', *'.join(suffixes)})")
        return f"{self.output}: {', '.join(kinds + list(self.reports))}"

    def _image_notes(self) -> list[str]:
        """Per-image notes (resampled to the training pixel size ...), each with how many images it concerns."""
        named: dict[str, list[str]] = {}
        for job, meta in self.ready:
            for note in (meta or {}).get("notes", ()):
                named.setdefault(note, []).append(job.name)
        shown = [f"{note} ({names[0]}{f' and {len(names) - 1} more' if len(names) > 1 else ''})"
                 for note, names in list(named.items())[:MAX_LISTED]]
        if len(named) > MAX_LISTED:
            shown.append(f"{len(named) - MAX_LISTED} more kinds of notes: see report.json once done")
        return shown


def _sizes(metas: list[dict[str, Any]]) -> str:
    """``300x256 to 384x384`` (the smallest and largest by area) or one size."""
    by_area = sorted((m["height"] * m["width"], m["width"], m["height"]) for m in metas)
    (_, w0, h0), (_, w1, h1) = by_area[0], by_area[-1]
    return f"{w0}x{h0}" if (w0, h0) == (w1, h1) else f"{w0}x{h0} to {w1}x{h1}"


def _geometry(job_plan: Plan) -> str:
    """How an image goes through the model, with the overlap of its tiles."""
    if job_plan.size is not None:
        return job_plan.describe()
    return f"{job_plan.describe()}, overlap {job_plan.tile - job_plan.stride} px"
