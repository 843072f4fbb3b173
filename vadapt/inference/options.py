"""The settings of a ``vadapt infer`` run, as one typed, validated, frozen dataclass: :class:`InferOptions`.

Every default and every help text of ``vadapt infer`` / :func:`vadapt.infer` is written here once: the engine
reads its settings from an :class:`InferOptions`, the command line builds its flags from the fields (name,
type, choices, default, help from the ``Attributes:`` section below) and the app takes its defaults from it.

This module imports no torch (nor numpy), so that ``vadapt infer --help`` stays quick.
"""

from __future__ import annotations

import inspect
import math
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, get_args

Precision = Literal["fp32", "bf16", "fp16"]
OutputFormat = Literal["auto", "png", "tif", "npy"]
Blend = Literal["ramp", "mean"]  # the engine's blends: vadapt.tiling.Blend (a test checks they agree)
Geometry = Literal["trained", "native"]
Tta = Literal["none", "flip", "d4"]  # vadapt.inference.tta.TTA_MODES (a test checks they agree)

CHOICES: dict[str, tuple[str, ...]] = {"precision": get_args(Precision), "format": get_args(OutputFormat),
                                       "blend": get_args(Blend), "geometry": get_args(Geometry),
                                       "tta": get_args(Tta)}
#: item type of the settings that are sequences
TUPLE_ITEMS: dict[str, type] = {"file_bands": str, "tta_scales": float}
MAX_OVERLAP = 64  # pixels: the overlap when none is given, for tiles of 4 × MAX_OVERLAP px and more


@dataclass(frozen=True)
class InferOptions:
    """Settings of a ``vadapt infer`` run (everything but the checkpoint, input and output paths).

    ``vadapt.infer(checkpoint, output, input=..., options=InferOptions(tile=256))``, or the same as keywords:
    ``vadapt.infer(checkpoint, output, input=..., tile=256)``. ``None`` means "chosen for the device" where
    the text says so. Bad values raise :class:`ValueError` naming the setting.

    Attributes:
        tile: tile side in pixels; images up to this size are predicted in one pass.
        overlap: overlap of neighbouring tiles in pixels, less than tile (default: 64, or a quarter of a
            tile smaller than 256 px).
        batch_size: tiles per forward pass, tiles of different images batched together (default: 1 on a CPU,
            where larger batches measured slower, 8 on a GPU).
        num_workers: DataLoader processes decoding files (0: decode in the main process).
        device: torch device to run the model on (cpu, cuda, cuda:1 ...).
        precision: autocast precision: fp32, or bf16 (recent CPUs, GPUs) / fp16 (GPUs only), faster with
            slightly different probabilities.
        model_threads: batches in the model at once, each with its share of the threads (default: 2 on a
            CPU, where two single-threaded forwards beat one two-threaded forward, 1 on a GPU).
        format: output format; auto: GeoTIFF in -> tif, .npy/.npz in -> npy, anything else -> png.
        probabilities: also write <name>_prob.<ext> (float class probabilities; 8-bit confidence for png).
        overlay: also write <name>_overlay.png, the prediction over an RGB composite (at most 1024 px).
        overwrite: redo outputs that already exist (otherwise a rerun skips them).
        num_shards: split the job over this many processes: each takes every num_shards-th file (sorted by
            name), so processes or nodes can share one output folder.
        shard_index: which shard this process runs, 0-based, less than num_shards.
        weights: backbone weights file to use instead of the path stored in the checkpoint.
        file_bands: band names of inputs that do not name their bands (in file order).
        scale: positive factor applied to the file values, replacing the one training used (default: the
            checkpoint's own, e.g. 1/255 for 8-bit photos; 1 for checkpoints that do not record it).
        offset: added to the values after scale, replacing training's (default: the checkpoint's own, else 0).
        geometry: trained: images are resized whole the way training resized them (checkpoints trained on
            resized images), then predictions are resampled back onto the input's grid; native: every image
            is predicted at its own pixel size.
        ignore_nodata: treat every pixel as data, even those equal to the input's declared nodata value (for
            files whose nodata flag is wrong, e.g. white paper in scanned maps declared nodata 255); default:
            nodata is read as training read it.
        tta: test-time augmentation, averaged in probability space: none, flip (3 passes: x3 the model time)
            or d4 (8 rotations / flips: x8); depth checkpoints take none or flip (horizontal only: 2 passes,
            depth averaged).
        tta_scales: also predict at these scales (e.g. 0.75 1 1.25), each pass resampled back: multiplies the
            model time by their number (and their area).
        blend: overlap blending: ramp (seamless) or mean (plain average, as mmsegmentation's slide mode).
        merge: fold LoRA/DoRA/SALT into the backbone weights and inference-mode batch norms into their
            convolutions first (faster, same predictions within float rounding).
        max_pixels: largest input read (height x width, checked from the file header before any pixel is
            read); larger files are reported as failed (default 2**34, about 131072 x 131072).
        allow_vrt: also read GDAL VRT files and /vsi... or URL paths (a VRT can read other files on this
            machine: only for inputs you trust; raw-file VRT bands stay disabled).
        align: change detection: reproject each "after" image onto its "before" image's pixel grid (bilinear)
            when their CRS, pixel size or origin differ, instead of refusing the pair.
        depth_scale: depth checkpoints: multiply the predicted depth by this factor (self-supervised depth is
            known only up to scale; give it when you know your camera's, e.g. from median scaling against truth).
        progress: show a progress bar.
    """

    tile: int = 512
    overlap: int | None = None
    batch_size: int | None = None
    num_workers: int = 1
    device: str = "cpu"
    precision: Precision = "fp32"
    model_threads: int | None = None
    format: OutputFormat = "auto"
    probabilities: bool = False
    overlay: bool = False
    overwrite: bool = False
    num_shards: int = 1
    shard_index: int = 0
    weights: str | None = None
    file_bands: tuple[str, ...] | None = None
    scale: float | None = None
    offset: float | None = None
    geometry: Geometry = "trained"
    ignore_nodata: bool = False
    tta: Tta = "none"
    tta_scales: tuple[float, ...] | None = None
    blend: Blend = "ramp"
    max_pixels: int = 2**34  # vadapt.data.safe_open.DEFAULT_MAX_PIXELS (not imported: no numpy here)
    allow_vrt: bool = False
    align: bool = False
    depth_scale: float = 1.0
    # settings that are on by default: the command line has a flag that turns them off
    merge: bool = field(default=True, metadata={"flag": "--no-merge"})
    progress: bool = field(default=True, metadata={"flag": "--quiet"})

    def __post_init__(self) -> None:
        # normalise what is equivalent (a list of bands, a Path, an int scale), so equal settings compare equal
        for name in TUPLE_ITEMS:
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.tta_scales, tuple):  # 1 or "0.75" (the command line) -> float
            try:
                object.__setattr__(self, "tta_scales", tuple(
                    float(v) if isinstance(v, (int, str)) and not isinstance(v, bool) else v for v in self.tta_scales))
            except ValueError:
                _bad("tta_scales", self.tta_scales, "must be a non-empty sequence of numbers above 0")
        if isinstance(self.weights, os.PathLike):
            object.__setattr__(self, "weights", os.fspath(self.weights))
        for name in ("scale", "offset", "depth_scale"):
            if type(getattr(self, name)) is int:
                object.__setattr__(self, name, float(getattr(self, name)))
        for f in fields(self):
            kind, optional, choices = setting_type(f.name)
            value = getattr(self, f.name)
            if value is None and optional:
                continue
            if choices:
                check_choice(f.name, value)
            elif kind is tuple and TUPLE_ITEMS[f.name] is str:
                if not isinstance(value, tuple) or not value or not all(isinstance(v, str) and v for v in value):
                    _bad(f.name, value, "must be a non-empty sequence of names")
            elif kind is tuple:
                if not isinstance(value, tuple) or not value or not all(
                        isinstance(v, float) and math.isfinite(v) and v > 0 for v in value):
                    _bad(f.name, value, "must be a non-empty sequence of numbers above 0")
            elif not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                _bad(f.name, value, f"must be {_TYPE_WORDS[kind]}{' or None' if optional else ''}")
        if self.tile < 1:
            _bad("tile", self.tile, "must be at least 1 pixel")
        if self.overlap is not None and not 0 <= self.overlap < self.tile:
            _bad("overlap", self.overlap, f"must be in [0, tile={self.tile})")
        for name in ("batch_size", "model_threads", "num_shards", "max_pixels"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                _bad(name, getattr(self, name), "must be at least 1")
        if self.num_workers < 0:
            _bad("num_workers", self.num_workers, "must be 0 or more")
        if not 0 <= self.shard_index < self.num_shards:
            _bad("shard_index", self.shard_index, f"must be in [0, num_shards={self.num_shards})")
        if not self.device.strip():
            _bad("device", self.device, "must name a torch device such as cpu or cuda:0")
        if self.scale is not None and not (math.isfinite(self.scale) and self.scale > 0):
            _bad("scale", self.scale, "must be a finite number above 0")
        if self.offset is not None and not math.isfinite(self.offset):
            _bad("offset", self.offset, "must be a finite number")
        if not (math.isfinite(self.depth_scale) and self.depth_scale > 0):
            _bad("depth_scale", self.depth_scale, "must be a finite number above 0")

    # ---- what None means ----------------------------------------------------------------------------------
    @property
    def tile_overlap(self) -> int:
        """The overlap in pixels: ``overlap``, or when ``None`` 64 (a quarter of a tile under 256 px)."""
        return min(MAX_OVERLAP, self.tile // 4) if self.overlap is None else self.overlap

    @property
    def stride(self) -> int:
        """Pixels from one tile to the next: ``tile - tile_overlap``."""
        return self.tile - self.tile_overlap

    def batch_size_on(self, device_type: str) -> int:
        """``batch_size``, or when ``None`` the default for a device type (``"cpu"``, ``"cuda"`` ...)."""
        return self.batch_size or (1 if device_type == "cpu" else 8)

    def model_threads_on(self, device_type: str, threads: int) -> int:
        """``model_threads``, or when ``None`` the default for a device type with ``threads`` intra-op threads."""
        return self.model_threads or (2 if device_type == "cpu" and threads >= 2 else 1)

    # ---- building -----------------------------------------------------------------------------------------
    @classmethod
    def build(cls, options: InferOptions | None = None, **overrides: Any) -> InferOptions:
        """``options`` (default: ``InferOptions()``) with ``overrides`` applied; an unknown keyword raises a
        :class:`TypeError` that names it and suggests the closest setting."""
        names = field_names()
        for key in overrides:
            if key not in names:
                import difflib

                close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise TypeError(f"unknown inference setting {key!r}{hint} (the settings are the fields of "
                                f"vadapt.inference.InferOptions: {', '.join(names)})")
        if options is None:
            return cls(**overrides)
        if not isinstance(options, InferOptions):
            raise TypeError(f"options must be an InferOptions, got {type(options).__name__}")
        return replace(options, **overrides) if overrides else options


def field_names() -> list[str]:
    """The settings' names, in declaration order."""
    return [f.name for f in fields(InferOptions)]


def field_help() -> dict[str, str]:
    """Each setting's help text (one line), from the ``Attributes:`` section of :class:`InferOptions`."""
    texts: dict[str, list[str]] = {}
    current: list[str] | None = None
    in_section = False
    # cleandoc: the same indentation whether or not the interpreter dedents docstrings (3.13 does); inspect is
    # imported by dataclasses anyway. The docstring is empty under python -OO: no help then, still works.
    for line in inspect.cleandoc(InferOptions.__doc__ or "").splitlines():
        stripped = line.strip()
        if stripped == "Attributes:":
            in_section = True
        elif in_section and line.startswith(" " * 4) and not line.startswith(" " * 5):
            name, _, text = stripped.partition(":")
            current = texts[name] = [text.strip()]
        elif in_section and current is not None and line.startswith(" " * 8):
            current.append(stripped)
        elif in_section and stripped:
            break
    return {name: " ".join(parts) for name, parts in texts.items()}


# the annotations (strings: ``from __future__ import annotations``) -> (type, None allowed, choices)
_TYPES: dict[str, tuple[type, bool]] = {"int": (int, False), "int | None": (int, True), "float": (float, False),
                                        "float | None": (float, True), "bool": (bool, False), "str": (str, False),
                                        "str | None": (str, True), "tuple[str, ...] | None": (tuple, True),
                                        "tuple[float, ...] | None": (tuple, True)}
_TYPE_WORDS = {int: "a whole number", float: "a number", bool: "True or False", str: "a string"}


def setting_type(name: str) -> tuple[type, bool, tuple[str, ...]]:
    """``(type, None allowed, choices)`` of a setting, read from its annotation: what the validation and the
    command line go by. Choices (``Literal``) are strings; a new kind of annotation must be added here."""
    if name in CHOICES:
        return str, False, CHOICES[name]
    annotation = next(f.type for f in fields(InferOptions) if f.name == name)
    kind, optional = _TYPES[annotation]
    return kind, optional, ()


def check_choice(name: str, value: Any) -> None:
    """Raise :class:`ValueError` naming the setting if ``value`` is not one of the choices of ``name``."""
    if value not in CHOICES[name]:
        _bad(name, value, f"must be one of {', '.join(CHOICES[name])}")


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        _bad(name, value, "must be a whole number")


def _bad(name: str, value: Any, rule: str) -> None:
    raise ValueError(f"{name} {rule}, got {value!r}")
