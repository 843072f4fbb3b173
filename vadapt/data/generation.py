"""Data for diffusion-adapter training (``vadapt.tasks.generation.DiffusionAdapterTask``): captioned image folders
with mixed-resolution buckets and synthetic shapes (images, videos, multi-view renderings).

Batches (dicts, stacked by the default collate; strings become lists):

* ``image``: ``{"image": float32 (B, 3, H, W) in [0, 1], "prompt": list[str], "key": list[str]}``;
* ``video``: ``{"video": float32 (B, F, 3, H, W) in [0, 1], "prompt", "key"}``;
* ``multiview``: ``{"views": float32 (B, N, 3, H, W), "cameras": float32 (B, N, 6, H, W) in [0, 1] (MV-Adapter's
  orthographic camera maps), "reference": float32 (B, 3, H, W) (view 0), "prompt", "key"}``.

``key`` is a stable id per sample (the image's path relative to ``root``, or ``<kind>/<seed>/<index>``), used by
the task to cache latents (with ``cache_latents`` the first epoch's crop and flip are what is cached).

Datamodules:

* ``CaptionedImageDataModule`` -- a folder of images (png / jpg / webp / bmp, searched recursively). The caption
  of ``a/b.png`` is, in this order: the sidecar ``a/b.txt``; its row in a ``metadata.csv`` / ``metadata.jsonl``
  (the diffusers / Hugging Face imagefolder convention: columns ``file_name`` relative to the metadata file's
  folder and ``text``, or ``caption`` / ``prompt``); the name of its folder when that is not ``root``
  (``red_circle/`` -> ``red circle``); the ``prompt`` option; else the empty prompt (with one warning).
  Unreadable images are skipped with one warning listing them.
* ``ShapesImageDataModule``, ``ShapesVideoDataModule``, ``ShapesMultiviewDataModule`` -- synthetic, offline data
  generated on the fly and deterministic from ``seed``: one coloured filled shape on a plain background ("a red
  circle"), a clip of one shape moving on a straight line ("a red circle moving left"), and six orthographic
  views of one shaded 3D primitive ("a red cube"). ``write_shape_images`` writes the image set as files
  (``NNNN.png`` + ``metadata.jsonl``) for ``CaptionedImageDataModule``.

Mixed-resolution buckets (ResAdapter trains on many sizes and aspect ratios per epoch): with ``buckets``
(``[[h, w], ...]``) every image goes to the bucket whose aspect ratio is closest (in log ratio; ties: the first
listed), is resized (shorter side, so it covers the bucket) and cropped to the bucket's size, and a
``BucketBatchSampler`` yields batches of ONE bucket each, shuffled per epoch and deterministic from ``seed``: each
batch has its own size. In multi-GPU (DDP) runs set the trainer's ``use_distributed_sampler: false``; the sampler
gives every rank its own share of the batches. Example::

    data:
      class_path: vadapt.data.generation.CaptionedImageDataModule
      init_args:
        root: data/my_images
        buckets: [[512, 512], [384, 640], [640, 384]]
        batch_size: 4

What the datamodules are built from lives in small modules beside this one: ``vadapt.data.buckets`` (the bucket
parsing and ``BucketBatchSampler``), ``vadapt.data.generation_base`` (the shared datamodule base and helpers),
``vadapt.data.captioned`` (caption lookup, image probing and loading, ``CaptionedImageDataset``) and
``vadapt.data.shapes_render`` (the palette and the 2D / 3D renderers). The measures that check generated images
(``count_objects``, ``dominant_colour``, ``colour_name``) are in ``vadapt.data.measures``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .buckets import Bucket, nearest_bucket, parse_buckets
from .captioned import IMAGE_SUFFIXES, CaptionedImageDataset, ImageRecord, _probe, metadata_captions, probe_files
from .generation_base import _check_common, _GenerationDataModule, _size, _split, _to_tensor
from .io import DataError
from .shapes_render import COLOURS, SHAPES_2D, SHAPES_3D, _colour, draw_shape, multiview_cameras, render_primitive

DIRECTIONS = ("left", "right", "up", "down")


# ---- captioned image folders -----------------------------------------------------------------------------------
class CaptionedImageDataModule(_GenerationDataModule):
    """A folder of captioned images for ``DiffusionAdapterTask(kind="image")`` (module docstring for captions).

    Batches ``{"image": (B, 3, H, W) in [0, 1], "prompt": list[str], "key": list[str]}``. One ``resolution``,
    or mixed-resolution ``buckets`` (one bucket per batch, each batch its own size). Training images are cropped
    at the centre (or at random with ``center_crop: false``) and flipped at random (``random_flip``);
    validation images are centre-cropped, never flipped.
    """

    def __init__(
        self,
        root: str,
        resolution: int | tuple[int, int] = 512,
        buckets: list[tuple[int, int]] | None = None,
        batch_size: int = 4,
        val_fraction: float = 0.1,
        num_workers: int = 0,
        center_crop: bool = True,
        random_flip: bool = True,
        prompt: str | None = None,
        drop_last: bool = False,
        check_files: bool = True,
        seed: int = 0,
    ) -> None:
        """
        Args:
            root: the image folder (searched recursively; relative roots to the working dir).
            resolution: the training size, ``512`` or ``[height, width]`` (unused with ``buckets``).
            buckets: ``[[height, width], ...]`` sizes; each image goes to the one of closest aspect ratio.
            batch_size, num_workers: data loader settings.
            val_fraction: share of the images held out for validation (seeded; 0: none).
            center_crop: crop training images at the centre (else at a random position).
            random_flip: mirror training images left-right with probability 0.5.
            prompt: caption of images with no sidecar, metadata row or folder name.
            drop_last: drop the incomplete last training batch (of each bucket).
            check_files: decode every image once in ``setup`` (else only the headers are read there).
            seed: seed of the validation hold-out and the bucket batch order."""
        super().__init__()
        self.save_hyperparameters(logger=False)
        _check_common(batch_size, num_workers, val_fraction)
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"data folder not found: root={str(root)!r} (resolved to {self.root.resolve()})")
        self.resolution = _size(resolution, "resolution")
        self.buckets = parse_buckets(buckets)
        self.sizes = self.buckets or [self.resolution]
        self.records: list[ImageRecord] = []
        self.skipped: list[Path] = []

    def find(self) -> list[Path]:
        """Image files under ``root`` (sorted, hidden files and folders left out)."""
        files = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files += [Path(dirpath) / f for f in filenames
                      if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
        return sorted(files)

    def captions(self, files: Sequence[Path]) -> list[str | None]:
        """Caption of every file by the rules of the module docstring (``None``: none found)."""
        table = metadata_captions(self.root)
        out: list[str | None] = []
        for path in files:
            sidecar = path.with_suffix(".txt")
            text = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""
            if not text:
                text = table.get(os.path.normpath(path), "")
            if not text and path.parent != self.root:
                text = path.parent.name.replace("_", " ").replace("-", " ").strip()
            if not text and self.hparams.prompt is not None:
                text = self.hparams.prompt
            out.append(text or None)
        return out

    def make_datasets(self) -> None:
        hp = self.hparams
        files = self.find()
        if not files:
            raise DataError(f"{self.root} has no images ({', '.join(IMAGE_SUFFIXES)}); put images there, captions in "
                            "<name>.txt files or a metadata.csv with file_name,text")
        good, self.skipped = probe_files(files, lambda p: _probe(p, hp.check_files), self.root, "images")
        captions = self.captions([p for p, _ in good])
        missing = [p for (p, _), c in zip(good, captions) if c is None]
        if missing:
            warnings.warn(f"{len(missing)} image(s) in {self.root} have no caption (no <name>.txt, metadata row or "
                          f"folder name; e.g. {missing[0].name}): they train with the empty prompt; set prompt to "
                          "give them one", UserWarning, stacklevel=2)
        self.records = [ImageRecord(p, c or "", p.relative_to(self.root).as_posix(), s)
                        for (p, s), c in zip(good, captions)]
        bucket_of = [nearest_bucket(*r.size, self.buckets) for r in self.records] if self.buckets else None
        train, val = _split(len(self.records), hp.val_fraction, hp.seed)
        for split, idx in (("train", train), ("val", val)):
            self.datasets[split] = CaptionedImageDataset(
                [self.records[i] for i in idx], self.sizes, [bucket_of[i] for i in idx] if bucket_of else None,
                train=split == "train", center_crop=hp.center_crop, random_flip=hp.random_flip)


# ---- synthetic 2D shapes ---------------------------------------------------------------------------------------
def _radius_range(size: Bucket, scale: tuple[float, float]) -> tuple[float, float]:
    short = min(size)
    lo, hi = (s * short / 2 for s in scale)
    return max(lo, 2.0), max(min(hi, short / 2 - 2.0), 2.0)


class _ShapesBase(_GenerationDataModule):
    """Seeded item generator: item ``i`` of a split draws everything from ``default_rng([seed, split, i])``."""

    kind = "shapes"

    def _init_common(self, shapes: Sequence[str], known: Sequence[str], colours: Sequence[str],
                     background: str | Sequence[int], num_samples: int, batch_size: int, num_workers: int,
                     val_fraction: float, scale: Sequence[float]) -> None:
        _check_common(batch_size, num_workers, val_fraction)
        if num_samples < 1:
            raise DataError(f"num_samples must be at least 1, got {num_samples}")
        self.shapes = list(shapes)
        wrong = [s for s in self.shapes if s not in known]
        if wrong or not self.shapes:
            raise DataError(f"shapes has {wrong[0] if wrong else 'nothing'!r}; choose from {', '.join(known)}")
        self.colours = {name: _colour(name, "colours") for name in colours}
        if not self.colours:
            raise DataError(f"colours is empty; choose from {', '.join(COLOURS)}")
        self.background = _colour(background, "background")
        same = [n for n, rgb in self.colours.items() if rgb == self.background]
        if same:
            raise DataError(f"colour {same[0]!r} is the background colour, so its shapes would be invisible")
        lo, hi = (float(v) for v in scale)
        if not 0 < lo <= hi <= 1:
            raise DataError(f"scale must be [low, high] with 0 < low <= high <= 1, got {list(scale)}")
        self.scale = (lo, hi)
        self.num_val = len(_split(num_samples, val_fraction, 0)[1])

    def make_datasets(self) -> None:
        n = self.hparams.num_samples
        counts = {"train": n - self.num_val, "val": self.num_val}
        for split, count in counts.items():
            self.datasets[split] = SyntheticDataset(self, split, count)

    def pick(self, rng: np.random.Generator) -> tuple[str, str]:
        """(shape, colour name)."""
        names = list(self.colours)
        return self.shapes[int(rng.integers(len(self.shapes)))], names[int(rng.integers(len(names)))]

    def item_size(self, index: int) -> Bucket:
        return self.resolution

    def item(self, rng: np.random.Generator, index: int) -> dict[str, Any]:
        raise NotImplementedError


class SyntheticDataset(Dataset):
    """Items of a ``_ShapesBase`` datamodule, generated on the fly (``key`` = ``<kind>/<seed>/<split>/<i>``)."""

    def __init__(self, owner: _ShapesBase, split: str, count: int) -> None:
        self.owner, self.split, self.count = owner, split, count
        buckets = getattr(owner, "buckets", None)
        self.bucket_of = [i % len(buckets) for i in range(count)] if buckets else None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.count:
            raise IndexError(index)
        seed = self.owner.hparams.seed
        rng = np.random.default_rng([seed, 0 if self.split == "train" else 1, index])
        item = self.owner.item(rng, index)
        item["key"] = f"{self.owner.kind}/{seed}/{self.split}/{index}"
        return item


class ShapesImageDataModule(_ShapesBase):
    """Synthetic images of ONE coloured filled shape on a plain background, prompt ``"a red circle"``.

    The shape (circle, square, triangle, diamond) has a random position and a radius of ``scale`` times half the
    image's shorter side, always fully inside. With ``buckets`` the items take the sizes in turn (item ``i``:
    ``buckets[i % len(buckets)]``), the shape's size relative to the image in the same range: the ResAdapter demo
    (a base pretrained at one resolution, the adapter trained on several). Batches ``{"image": (B, 3, H, W) in
    [0, 1], "prompt", "key"}``.
    """

    kind = "shapes-image"

    def __init__(
        self,
        resolution: int | tuple[int, int] = 32,
        num_samples: int = 256,
        shapes: tuple[str, ...] = ("circle", "square", "triangle"),
        colours: tuple[str, ...] = ("red", "green", "blue", "yellow"),
        background: str | tuple[int, int, int] = "black",
        scale: tuple[float, float] = (0.35, 0.7),
        buckets: list[tuple[int, int]] | None = None,
        batch_size: int = 8,
        val_fraction: float = 0.1,
        num_workers: int = 0,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        """
        Args:
            resolution: image size, ``32`` or ``[height, width]`` (unused with ``buckets``).
            num_samples: number of images, training and validation together.
            shapes: shapes to draw from (``circle``, ``square``, ``triangle``, ``diamond``).
            colours: colour names to draw from (``COLOURS``: red, green, blue, yellow, magenta, cyan, orange, white).
            background: ``black``, ``white``, ``grey`` or ``[r, g, b]``.
            scale: the shape's radius as a share of half the shorter image side, ``[low, high]``.
            buckets: ``[[height, width], ...]``: mixed sizes, one size per batch.
            batch_size, num_workers, drop_last: data loader settings.
            val_fraction: share of the items used for validation.
            seed: everything is drawn from it."""
        super().__init__()
        self.save_hyperparameters(logger=False)
        self._init_common(shapes, SHAPES_2D, colours, background, num_samples, batch_size, num_workers, val_fraction,
                          scale)
        self.resolution = _size(resolution, "resolution")
        self.buckets = parse_buckets(buckets)

    def item_size(self, index: int) -> Bucket:
        return self.buckets[index % len(self.buckets)] if self.buckets else self.resolution

    def render(self, rng: np.random.Generator, size: Bucket) -> tuple[np.ndarray, str]:
        """uint8 ``(h, w, 3)`` and its prompt."""
        shape, colour = self.pick(rng)
        h, w = size
        lo, hi = _radius_range(size, self.scale)
        radius = float(rng.uniform(lo, hi))
        cx = float(rng.uniform(radius + 1, w - 1 - radius))
        cy = float(rng.uniform(radius + 1, h - 1 - radius))
        return draw_shape(size, shape, self.colours[colour], (cx, cy), radius, self.background), f"a {colour} {shape}"

    def item(self, rng: np.random.Generator, index: int) -> dict[str, Any]:
        array, prompt = self.render(rng, self.item_size(index))
        return {"image": _to_tensor(array), "prompt": prompt}


def write_shape_images(output: str | Path, num_samples: int = 64, resolution: int | tuple[int, int] = 32,
                       buckets: list[tuple[int, int]] | None = None, seed: int = 0, **options: Any) -> Path:
    """Write ``ShapesImageDataModule``'s images as ``output/NNNN.png`` with captions in ``output/metadata.jsonl``
    (readable by ``CaptionedImageDataModule``); ``options`` are its other arguments. Returns ``output``."""
    module = ShapesImageDataModule(resolution=resolution, num_samples=num_samples, buckets=buckets, seed=seed,
                                   val_fraction=0.0, **options)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(num_samples):
        array, prompt = module.render(np.random.default_rng([seed, 0, i]), module.item_size(i))
        name = f"{i:04d}.png"
        Image.fromarray(array).save(output / name)
        lines.append(json.dumps({"file_name": name, "text": prompt}))
    (output / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return output


class ShapesVideoDataModule(_ShapesBase):
    """Synthetic clips of ONE coloured shape moving on a straight line, prompt ``"a red circle moving left"``.

    Shape and colour stay constant; the shape travels a random 60-100 % of the free room along ``left``,
    ``right``, ``up`` or ``down`` at constant speed, always fully inside. Batches ``{"video": (B, F, 3, H, W) in
    [0, 1], "prompt", "key"}``.
    """

    kind = "shapes-video"

    def __init__(
        self,
        resolution: int | tuple[int, int] = 32,
        num_frames: int = 8,
        num_samples: int = 128,
        shapes: tuple[str, ...] = ("circle", "square", "triangle"),
        colours: tuple[str, ...] = ("red", "green", "blue", "yellow"),
        directions: tuple[str, ...] = DIRECTIONS,
        background: str | tuple[int, int, int] = "black",
        scale: tuple[float, float] = (0.3, 0.5),
        batch_size: int = 4,
        val_fraction: float = 0.1,
        num_workers: int = 0,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        """
        Args:
            resolution: frame size, ``32`` or ``[height, width]``.
            num_frames: frames per clip (at least 2).
            num_samples: number of clips, training and validation together.
            shapes, colours, background, scale: as ``ShapesImageDataModule``.
            directions: directions to draw from (``left``, ``right``, ``up``, ``down``).
            batch_size, num_workers, drop_last: data loader settings.
            val_fraction: share of the clips used for validation.
            seed: everything is drawn from it."""
        super().__init__()
        self.save_hyperparameters(logger=False)
        self._init_common(shapes, SHAPES_2D, colours, background, num_samples, batch_size, num_workers, val_fraction,
                          scale)
        self.resolution = _size(resolution, "resolution")
        if num_frames < 2:
            raise DataError(f"num_frames must be at least 2, got {num_frames}")
        wrong = [d for d in directions if d not in DIRECTIONS]
        if wrong or not directions:
            raise DataError(f"directions has {wrong[0] if wrong else 'nothing'!r}; choose from {', '.join(DIRECTIONS)}")
        self.directions = list(directions)

    def render(self, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        """uint8 ``(F, h, w, 3)`` and its prompt."""
        shape, colour = self.pick(rng)
        direction = self.directions[int(rng.integers(len(self.directions)))]
        h, w = self.resolution
        lo, hi = _radius_range(self.resolution, self.scale)
        radius = float(rng.uniform(lo, hi))
        x_range, y_range = (radius + 1, w - 1 - radius), (radius + 1, h - 1 - radius)
        along = x_range if direction in ("left", "right") else y_range
        across = y_range if direction in ("left", "right") else x_range
        travel = float(rng.uniform(0.6, 1.0)) * (along[1] - along[0])
        start = float(rng.uniform(along[0], along[1] - travel))
        sign = -1.0 if direction in ("left", "up") else 1.0
        if sign < 0:
            start += travel
        other = float(rng.uniform(*across))
        frames = []
        for t in np.linspace(0.0, 1.0, self.hparams.num_frames):
            pos = start + sign * travel * t
            centre = (pos, other) if direction in ("left", "right") else (other, pos)
            frames.append(draw_shape(self.resolution, shape, self.colours[colour], centre, radius, self.background))
        return np.stack(frames), f"a {colour} {shape} moving {direction}"

    def item(self, rng: np.random.Generator, index: int) -> dict[str, Any]:
        frames, prompt = self.render(rng)
        video = torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))).float().div_(255.0)
        return {"video": video, "prompt": prompt}


# ---- synthetic multi-view renderings ---------------------------------------------------------------------------
class ShapesMultiviewDataModule(_ShapesBase):
    """Synthetic multi-view objects: ONE coloured 3D primitive (sphere, cube, cylinder, cone) rendered from
    MV-Adapter's official six orthographic cameras with Lambert shading, prompt ``"a red cube"``.

    The object has a random size (``scale``) and turn about the up axis. Batches ``{"views": (B, N, 3, H, W) in
    [0, 1], "cameras": (B, N, 6, H, W)`` (``ortho_camera_maps`` of the cameras) ``, "reference": (B, 3, H, W)``
    (view 0) ``, "prompt", "key"}``.
    """

    kind = "shapes-multiview"

    def __init__(
        self,
        resolution: int | tuple[int, int] = 32,
        num_views: int = 6,
        num_samples: int = 64,
        shapes: tuple[str, ...] = SHAPES_3D,
        colours: tuple[str, ...] = ("red", "green", "blue", "yellow"),
        background: str | tuple[int, int, int] = "black",
        scale: tuple[float, float] = (0.7, 1.0),
        batch_size: int = 2,
        val_fraction: float = 0.1,
        num_workers: int = 0,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        """
        Args:
            resolution: view size, ``32`` or ``[height, width]``.
            num_views: views per object (6: the official cameras; else evenly spaced azimuths).
            num_samples: number of objects, training and validation together.
            shapes: primitives to draw from (``sphere``, ``cube``, ``cylinder``, ``cone``).
            colours, background: as ``ShapesImageDataModule``.
            scale: the object's size, ``[low, high]`` in (0, 1] (1: the largest that fits every view).
            batch_size, num_workers, drop_last: data loader settings.
            val_fraction: share of the objects used for validation.
            seed: everything is drawn from it."""
        super().__init__()
        self.save_hyperparameters(logger=False)
        self._init_common(shapes, SHAPES_3D, colours, background, num_samples, batch_size, num_workers, val_fraction,
                          scale)
        self.resolution = _size(resolution, "resolution")
        if num_views < 1:
            raise DataError(f"num_views must be at least 1, got {num_views}")
        self.c2w = multiview_cameras(num_views)
        from vadapt.geometry.cameras import ortho_camera_maps

        self.camera_maps = ortho_camera_maps(self.c2w, *self.resolution)

    def render(self, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        """uint8 ``(N, h, w, 3)`` views and the prompt."""
        shape, colour = self.pick(rng)
        size = float(rng.uniform(*self.scale))
        yaw = float(rng.uniform(0.0, 90.0))
        views = render_primitive(shape, self.c2w, self.resolution, self.colours[colour], self.background,
                                 object_size=size, yaw_deg=yaw)
        return views, f"a {colour} {shape}"

    def item(self, rng: np.random.Generator, index: int) -> dict[str, Any]:
        views, prompt = self.render(rng)
        tensor = torch.from_numpy(np.ascontiguousarray(views.transpose(0, 3, 1, 2))).float().div_(255.0)
        return {"views": tensor, "cameras": self.camera_maps.clone(), "reference": tensor[0].clone(),
                "prompt": prompt}
