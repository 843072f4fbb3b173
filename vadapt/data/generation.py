"""Data for diffusion-adapter training (``vadapt.tasks.generation.DiffusionAdapterTask``): captioned image folders
with mixed-resolution buckets, synthetic shapes (images, videos, multi-view renderings) and measures on images.

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

Measures (``count_objects``, ``dominant_colour``, ``colour_name``) check generated images: exactly one object,
of the prompt's colour, the same in every view or frame.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps
from torch.utils.data import DataLoader, Dataset, Sampler

from .io import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
METADATA_FILES = ("metadata.csv", "metadata.jsonl")
CAPTION_COLUMNS = ("text", "caption", "prompt")
#: named colours (RGB 0-255) of the synthetic data; distinct in hue, so shaded versions keep their name
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 70, 235),
    "yellow": (235, 215, 25),
    "magenta": (215, 35, 215),
    "cyan": (25, 205, 215),
    "orange": (240, 135, 20),
    "white": (240, 240, 240),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "white": (255, 255, 255), "grey": (128, 128, 128)}
SHAPES_2D = ("circle", "square", "triangle", "diamond")
SHAPES_3D = ("sphere", "cube", "cylinder", "cone")
DIRECTIONS = ("left", "right", "up", "down")
Bucket = tuple[int, int]


class CorruptImageWarning(UserWarning):
    """Some images could not be read and are skipped."""


# ---- small helpers ---------------------------------------------------------------------------------------------
def _size(value: int | Sequence[int], key: str) -> Bucket:
    size = (int(value), int(value)) if isinstance(value, (int, np.integer)) else tuple(int(v) for v in value)
    if len(size) != 2 or min(size) < 1:
        raise DataError(f"{key} must be a positive int or [height, width], got {value!r}")
    return size  # type: ignore[return-value]


def parse_buckets(buckets: Sequence[Sequence[int]] | None) -> list[Bucket] | None:
    """``[[h, w], ...]`` -> a list of distinct ``(h, w)`` in the given order (``None`` stays ``None``)."""
    if buckets is None:
        return None
    out: list[Bucket] = []
    for b in buckets:
        if isinstance(b, (int, np.integer)) or len(b) != 2 or min(int(v) for v in b) < 1:
            raise DataError(f"buckets must be a list of [height, width] pairs of positive ints, got {b!r} in it")
        if tuple(int(v) for v in b) not in out:
            out.append((int(b[0]), int(b[1])))
    if not out:
        raise DataError("buckets is empty: give [[height, width], ...] or null for one resolution")
    return out


def nearest_bucket(height: int, width: int, buckets: Sequence[Bucket]) -> int:
    """Index of the bucket whose aspect ratio ``h / w`` is closest to the image's (log ratio; ties: the first)."""
    ratio = math.log(height / width)
    gaps = [abs(math.log(h / w) - ratio) for h, w in buckets]
    best = min(gaps)
    return next(i for i, g in enumerate(gaps) if g <= best + 1e-9)


def _split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded (train, val) indices with ``fraction`` held out (at least one when ``fraction > 0`` and ``n >= 2``)."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {fraction}")
    if fraction == 0 or n < 2:
        return list(range(n)), []
    n_val = min(max(1, int(round(n * fraction))), n - 1)
    held = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    return [i for i in range(n) if i not in held], sorted(held)


def _listing(values: Sequence[Any], limit: int = 10) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` -> float32 ``(3, H, W)`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float().div_(255.0)


def _colour(name: str | Sequence[int], key: str) -> tuple[int, int, int]:
    if isinstance(name, str):
        table = {**COLOURS, **BACKGROUNDS}
        if name not in table:
            raise DataError(f"{key} {name!r} is not a known colour; choose from {sorted(table)} or give [r, g, b]")
        return table[name]
    rgb = tuple(int(v) for v in name)
    if len(rgb) != 3 or min(rgb) < 0 or max(rgb) > 255:
        raise DataError(f"{key} must be a colour name or [r, g, b] in 0..255, got {name!r}")
    return rgb  # type: ignore[return-value]


# ---- bucket batch sampler --------------------------------------------------------------------------------------
class _EpochHook:
    """Lightning calls ``set_epoch`` on ``dataloader.batch_sampler.sampler``: forward it to the batch sampler."""

    def __init__(self, owner: BucketBatchSampler) -> None:
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of indices that all share one bucket (so one image size per batch).

    Each epoch the indices of every bucket are shuffled and cut into batches of ``batch_size`` (the last one of
    a bucket may be smaller unless ``drop_last``), then the batches of all buckets are shuffled together; all
    from ``numpy.random.default_rng([seed, epoch])``, so the same seed and epoch give the same batches. The epoch
    is the one ``set_epoch`` gave (Lightning calls it every epoch), else it counts the passes. With
    ``num_replicas > 1`` (default: the ``torch.distributed`` world size) rank ``r`` takes every
    ``num_replicas``-th batch (the list wrapped around so every rank gets as many).
    """

    def __init__(self, buckets: Sequence[int], batch_size: int, shuffle: bool = True, drop_last: bool = False,
                 seed: int = 0, num_replicas: int | None = None, rank: int | None = None) -> None:
        """
        Args:
            buckets: the bucket id of every dataset index ``(N,)``.
            batch_size: the most indices per batch."""
        if batch_size < 1:
            raise DataError(f"batch_size must be at least 1, got {batch_size}")
        self.bucket_of = np.asarray(buckets, dtype=np.int64).reshape(-1)
        # deliberately not named ``batch_size`` / ``drop_last``: Lightning would then try to re-create this
        # sampler around a DistributedSampler (DDP needs ``use_distributed_sampler: false`` instead)
        self.per_batch, self.drop_incomplete, self.shuffle, self.seed = int(batch_size), drop_last, shuffle, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self.sampler = _EpochHook(self)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _world(self) -> tuple[int, int]:
        replicas, rank = self.num_replicas, self.rank
        if replicas is None:
            dist = torch.distributed
            replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            dist = torch.distributed
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return replicas, rank

    def batches(self, epoch: int) -> list[list[int]]:
        """All batches of an epoch (every rank's), in order."""
        rng = np.random.default_rng([self.seed, epoch])
        out: list[list[int]] = []
        for bucket in np.unique(self.bucket_of):
            idx = np.flatnonzero(self.bucket_of == bucket)
            if self.shuffle:
                idx = rng.permutation(idx)
            for start in range(0, len(idx), self.per_batch):
                chunk = idx[start: start + self.per_batch].tolist()
                if len(chunk) == self.per_batch or not self.drop_incomplete:
                    out.append(chunk)
        if self.shuffle:
            out = [out[i] for i in rng.permutation(len(out))]
        return out

    def _shard(self, batches: list[list[int]]) -> list[list[int]]:
        replicas, rank = self._world()
        if replicas <= 1 or not batches:
            return batches
        total = math.ceil(len(batches) / replicas) * replicas
        padded = [batches[i % len(batches)] for i in range(total)]
        return padded[rank::replicas]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._shard(self.batches(self.epoch))
        self.epoch += 1  # a later pass without set_epoch gets the next epoch's order
        return iter(batches)

    def __len__(self) -> int:
        counts = np.bincount(self.bucket_of - self.bucket_of.min()) if len(self.bucket_of) else np.zeros(0, int)
        counts = counts[counts > 0]
        per = counts // self.per_batch if self.drop_incomplete else -(-counts // self.per_batch)
        replicas, _ = self._world()
        return math.ceil(int(per.sum()) / replicas)


# ---- shared datamodule base ------------------------------------------------------------------------------------
class _GenerationDataModule(L.LightningDataModule):
    """Datasets in ``self.datasets[split]`` (with an optional ``bucket_of`` list); loaders with one size a batch."""

    def __init__(self) -> None:
        super().__init__()
        self.datasets: dict[str, Dataset] = {}

    def make_datasets(self) -> None:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Build the train / val datasets (once); bad input stops here."""
        if not self.datasets:
            self.make_datasets()

    def _loader(self, split: str) -> DataLoader | list:
        self.setup()
        dataset = self.datasets.get(split)
        if dataset is None or len(dataset) == 0:
            return []
        hp = self.hparams
        workers = dict(num_workers=hp.num_workers, persistent_workers=hp.num_workers > 0)
        bucket_of = getattr(dataset, "bucket_of", None)
        if bucket_of is not None:
            sampler = BucketBatchSampler(bucket_of, hp.batch_size, shuffle=split == "train",
                                         drop_last=split == "train" and hp.drop_last, seed=hp.seed)
            return DataLoader(dataset, batch_sampler=sampler, **workers)
        return DataLoader(dataset, batch_size=hp.batch_size, shuffle=split == "train",
                          drop_last=split == "train" and hp.drop_last, **workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val")


def _check_common(batch_size: int, num_workers: int, val_fraction: float) -> None:
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    if num_workers < 0:
        raise DataError(f"num_workers must be >= 0, got {num_workers}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")


# ---- captioned image folders -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageRecord:
    """One image: its file, caption, stable key and (EXIF-oriented) size ``(h, w)``."""

    path: Path
    caption: str
    key: str
    size: Bucket


def _read_metadata(path: Path) -> dict[str, str]:
    """``{resolved image path: caption}`` of a ``metadata.csv`` / ``metadata.jsonl``."""
    rows: list[dict[str, Any]] = []
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    else:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {n} is not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path} line {n} is not a JSON object with file_name and text")
            rows.append(row)
        columns = sorted({k for row in rows for k in row})
    if not rows:
        return {}
    if "file_name" not in columns:
        raise DataError(f"{path} has no file_name column (it has: {', '.join(columns)}); expected file_name,text")
    text_key = next((c for c in CAPTION_COLUMNS if c in columns), None)
    if text_key is None:
        raise DataError(f"{path} has no caption column: expected one of {', '.join(CAPTION_COLUMNS)} (it has: "
                        f"{', '.join(columns)})")
    out = {}
    for row in rows:
        if row.get("file_name") and row.get(text_key) is not None:
            out[os.path.normpath(path.parent / str(row["file_name"]))] = str(row[text_key]).strip()
    return out


def metadata_captions(root: Path) -> dict[str, str]:
    """``{resolved file path: caption}`` of every ``metadata.csv`` / ``metadata.jsonl`` under ``root``."""
    table: dict[str, str] = {}
    for name in METADATA_FILES:
        for meta in sorted(root.rglob(name)):
            table.update(_read_metadata(meta))
    return table


def probe_files(paths: Sequence[Path], probe: Any, root: Path, noun: str) -> tuple[list[tuple[Path, Any]], list[Path]]:
    """Run ``probe(path)`` (a value, or a string saying why the file cannot be used) over ``paths`` in threads;
    warn once listing the unusable ones and raise when none is usable. Returns the usable ``(path, value)`` pairs
    and the skipped paths."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        probes = list(pool.map(probe, paths))
    bad = [(p, why) for p, why in zip(paths, probes) if isinstance(why, str)]
    if len(bad) == len(paths):
        raise DataError(f"none of the {len(paths)} {noun} in {root} can be used (the first: {bad[0][0]}: "
                        f"{bad[0][1]})")
    if bad:
        warnings.warn(f"{len(bad)} of {len(paths)} {noun} in {root} are skipped: "
                      f"{_listing([f'{p.relative_to(root)} ({why})' for p, why in bad])}",
                      CorruptImageWarning, stacklevel=3)
    return [(p, v) for p, v in zip(paths, probes) if not isinstance(v, str)], [p for p, _ in bad]


def _probe(path: Path, full: bool) -> Bucket | str:
    """The oriented ``(h, w)`` of an image, or why it cannot be read."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF rotations by 90 degrees
                width, height = height, width
            if full:
                im.load()
        if min(width, height) < 1:
            return "it has no pixels"
        return height, width
    except Exception as exc:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError ...)
        return f"{type(exc).__name__}: {exc}"


def load_rgb(path: str | Path) -> Image.Image:
    """An image file as an EXIF-oriented RGB PIL image (alpha dropped, palettes and grey expanded)."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        return im.convert("RGB")


def resize_crop(image: Image.Image, size: Bucket, offset: tuple[float, float] | None = None,
                flip: bool = False) -> np.ndarray:
    """Resize (shorter side: the image just covers ``size``) and crop to ``size`` = ``(h, w)``: uint8 ``(h, w, 3)``.

    ``offset`` = (vertical, horizontal) crop position in [0, 1] (``None``: the centre); ``flip`` mirrors it."""
    h, w = size
    scale = max(h / image.height, w / image.width)
    new_w, new_h = max(w, round(image.width * scale)), max(h, round(image.height * scale))
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    oy, ox = offset if offset is not None else (0.5, 0.5)
    top, left = round((new_h - h) * oy), round((new_w - w) * ox)
    array = np.asarray(image.crop((left, top, left + w, top + h)), dtype=np.uint8)
    return array[:, ::-1] if flip else array


class CaptionedImageDataset(Dataset):
    """Items ``{"image": float32 (3, h, w) in [0, 1], "prompt": str, "key": str}`` of image records.

    Each record is resized and cropped to ``sizes[bucket_of[i]]`` (random crop and flip when ``train``). An
    image that fails to load is replaced by the next readable one of its bucket (one warning per file)."""

    def __init__(self, records: Sequence[ImageRecord], sizes: Sequence[Bucket], bucket_of: Sequence[int] | None,
                 train: bool, center_crop: bool = True, random_flip: bool = True) -> None:
        self.records, self.sizes = list(records), list(sizes)
        self.bucket_of = list(bucket_of) if bucket_of is not None else None
        self.train, self.center_crop, self.random_flip = train, center_crop, random_flip
        self.bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.records)

    def _bucket(self, index: int) -> int:
        return self.bucket_of[index] if self.bucket_of is not None else 0

    def _load(self, index: int, bucket: int) -> dict[str, Any]:
        record = self.records[index]
        image = load_rgb(record.path)
        offset, flip = None, False
        if self.train:
            if not self.center_crop:
                offset = (float(torch.rand(())), float(torch.rand(())))
            flip = self.random_flip and bool(torch.rand(()) < 0.5)
        array = resize_crop(image, self.sizes[bucket], offset, flip)
        return {"image": _to_tensor(array), "prompt": record.caption, "key": record.key}

    def _try(self, index: int, bucket: int) -> dict[str, Any] | None:
        if index in self.bad:
            return None
        try:
            return self._load(index, bucket)
        except Exception as exc:  # a file that changed or broke after setup: never crash the epoch
            self.bad.add(index)
            warnings.warn(f"image {self.records[index].path} could not be read ({type(exc).__name__}: {exc}); "
                          "it is skipped", CorruptImageWarning, stacklevel=2)
            return None

    def __getitem__(self, index: int) -> dict[str, Any]:
        bucket = self._bucket(index)
        item = self._try(index, bucket)
        if item is not None:
            return item
        same = [i for i in range(len(self)) if self._bucket(i) == bucket]  # only after a failure
        start = same.index(index)
        for i in same[start + 1:] + same[:start]:
            item = self._try(i, bucket)  # the replacement keeps the requested bucket's size
            if item is not None:
                return item
        raise DataError(f"none of the {len(same)} images of size {self.sizes[bucket]} could be read (the first: "
                        f"{self.records[index].path})")


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
def shape_polygon(shape: str, cx: float, cy: float, radius: float) -> list[tuple[float, float]] | None:
    """Corners of a polygonal shape centred at ``(cx, cy)`` (pixels) inside a circle of ``radius``; ``None`` for
    a circle."""
    if shape == "circle":
        return None
    if shape == "square":
        r = radius / math.sqrt(2)
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":  # pointing up
        return [(cx + radius * math.cos(a), cy - radius * math.sin(a)) for a in (math.pi / 2, 7 * math.pi / 6,
                                                                                  11 * math.pi / 6)]
    if shape == "diamond":
        return [(cx, cy - radius), (cx + radius, cy), (cx, cy + radius), (cx - radius, cy)]
    raise DataError(f"shape {shape!r} is not known; choose from {', '.join(SHAPES_2D)}")


def draw_shape(size: Bucket, shape: str, colour: Sequence[int], centre: tuple[float, float], radius: float,
               background: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """One filled ``shape`` of ``colour`` at ``centre`` = ``(x, y)`` pixels on a plain background: uint8
    ``(h, w, 3)``; ``size`` = ``(h, w)``."""
    h, w = size
    image = Image.new("RGB", (w, h), tuple(int(v) for v in background))
    draw = ImageDraw.Draw(image)
    cx, cy = centre
    corners = shape_polygon(shape, cx, cy, radius)
    fill = tuple(int(v) for v in colour)
    if corners is None:
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    else:
        draw.polygon(corners, fill=fill)
    return np.asarray(image, dtype=np.uint8).copy()


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
def primitive_sdf(shape: str, p: np.ndarray, size: float) -> np.ndarray:
    """Signed distance of points ``p`` ``(..., 3)`` (z up) to a primitive of ``size`` centred at the origin: the
    sphere (radius 0.45 size), cube (half side 0.32 size), cylinder and cone (radius 0.36 / 0.42 size, half
    height 0.38 / 0.4 size, axis z)."""
    if shape == "sphere":
        return np.linalg.norm(p, axis=-1) - 0.45 * size
    if shape == "cube":
        q = np.abs(p) - 0.32 * size
        return np.linalg.norm(np.maximum(q, 0.0), axis=-1) + np.minimum(q.max(-1), 0.0)
    radial = np.linalg.norm(p[..., :2], axis=-1)
    if shape == "cylinder":
        d = np.stack([radial - 0.36 * size, np.abs(p[..., 2]) - 0.38 * size], -1)
        return np.minimum(d.max(-1), 0.0) + np.linalg.norm(np.maximum(d, 0.0), axis=-1)
    if shape == "cone":  # capped cone (Quilez) with the top radius 0: base radius r1 at z = -h, apex at z = h
        h, r1 = 0.4 * size, 0.42 * size
        qx, qy = radial, p[..., 2]
        ca_x = qx - np.minimum(qx, np.where(qy < 0, r1, 0.0))
        ca_y = np.abs(qy) - h
        k2x, k2y = -r1, 2 * h
        t = np.clip(((0.0 - qx) * k2x + (h - qy) * k2y) / (k2x**2 + k2y**2), 0.0, 1.0)
        cb_x, cb_y = qx + k2x * t, qy - h + k2y * t
        sign = np.where((cb_x < 0) & (ca_y < 0), -1.0, 1.0)
        return sign * np.sqrt(np.minimum(ca_x**2 + ca_y**2, cb_x**2 + cb_y**2))
    raise DataError(f"shape {shape!r} is not known; choose from {', '.join(SHAPES_3D)}")


def render_primitive(shape: str, c2w: torch.Tensor | np.ndarray, size: Bucket, colour: Sequence[int],
                     background: Sequence[int] = (0, 0, 0), object_size: float = 1.0, yaw_deg: float = 0.0,
                     half_extent: float = 0.6,
                     lights: Sequence[Sequence[float]] = ((0.45, -0.6, 0.65, 0.6), (-0.7, 0.6, 0.15, 0.3)),
                     ambient: float = 0.25, steps: int = 64) -> np.ndarray:
    """Orthographic renderings of a flat-coloured, Lambert-shaded primitive (sphere tracing of its SDF): uint8
    ``(N, h, w, 3)`` for cameras ``c2w`` ``(N, 4, 4)`` (``vadapt.geometry.cameras`` convention: world z
    up, camera looks along -z). The views span ``[-half_extent, half_extent]`` vertically; the object turns by
    ``yaw_deg`` about z. ``lights`` are ``(x, y, z, strength)`` directional lights fixed in the world (a key and a
    weaker fill from the other side), so views from different sides differ, even of a sphere or a cylinder."""
    c2w = np.asarray(c2w, dtype=np.float64).reshape(-1, 4, 4)
    h, w = size
    half_w = half_extent * w / h
    ys = (1.0 - 2.0 * (np.arange(h) + 0.5) / h) * half_extent
    xs = (2.0 * (np.arange(w) + 0.5) / w - 1.0) * half_w
    yaw = math.radians(yaw_deg)
    rot = np.array([[math.cos(yaw), -math.sin(yaw), 0.0], [math.sin(yaw), math.cos(yaw), 0.0], [0.0, 0.0, 1.0]])
    light_arr = np.asarray(lights, dtype=np.float64).reshape(-1, 4)
    light_dirs = light_arr[:, :3] / np.linalg.norm(light_arr[:, :3], axis=1, keepdims=True)

    def sdf(points: np.ndarray) -> np.ndarray:  # world -> object frame (rotate by -yaw)
        return primitive_sdf(shape, points @ rot, object_size)

    out = np.empty((len(c2w), h, w, 3), dtype=np.uint8)
    for v, cam in enumerate(c2w):
        right, up, forward, pos = cam[:3, 0], cam[:3, 1], -cam[:3, 2], cam[:3, 3]
        origins = pos + xs[None, :, None] * right + ys[:, None, None] * up  # (h, w, 3)
        dist = float(np.linalg.norm(pos))
        t = np.full((h, w), max(dist - 1.0, 0.0))
        for _ in range(steps):
            d = sdf(origins + t[..., None] * forward)
            t = t + np.where(d > 1e-4, d, 0.0)
        points = origins + t[..., None] * forward
        hit = (np.abs(sdf(points)) < 2e-3) & (t < dist + 1.0)
        eps = 1e-3
        normal = np.stack([sdf(points + eps * e) - sdf(points - eps * e) for e in np.eye(3)], -1)
        normal /= np.linalg.norm(normal, axis=-1, keepdims=True) + 1e-12
        shade = np.minimum(ambient + np.clip(normal @ light_dirs.T, 0.0, None) @ light_arr[:, 3], 1.0)
        colour_px = np.asarray(colour, dtype=np.float64) * shade[..., None]
        image = np.where(hit[..., None], colour_px, np.asarray(background, dtype=np.float64))
        out[v] = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return out


def multiview_cameras(num_views: int = 6) -> torch.Tensor:
    """``c2w`` ``(N, 4, 4)``: MV-Adapter's official six views for ``num_views == 6``, else ``num_views`` views at
    elevation 0 and evenly spaced azimuths (starting at the official front view)."""
    from vadapt.geometry.cameras import official_six_view_cameras, orbit_cameras

    if num_views == 6:
        return official_six_view_cameras()
    return orbit_cameras([0.0] * num_views, [360.0 * k / num_views - 90.0 for k in range(num_views)])


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


# ---- measures ----------------------------------------------------------------------------------------------------
def _as_hwc255(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """An RGB image, ``(H, W, 3)`` or ``(3, H, W)``, uint8 or float in [0, 1] -> float64 ``(H, W, 3)`` in 0..255."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.ndim != 3:
        raise ValueError(f"expected an RGB image (H, W, 3) or (3, H, W), got shape {array.shape}")
    if array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        array = array.transpose(1, 2, 0)
    array = array[..., :3]
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float64) * 255.0
    return array.astype(np.float64)


def _background(array: np.ndarray, background: str | Sequence[int] | None) -> np.ndarray:
    if background is None:  # the median colour of the border pixels
        border = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]])
        return np.median(border, axis=0)
    return np.asarray(_colour(background, "background"), dtype=np.float64)


def foreground_mask(image: np.ndarray | torch.Tensor, background: str | Sequence[int] | None = None,
                    tolerance: float = 40.0) -> np.ndarray:
    """bool ``(H, W)``: pixels farther than ``tolerance`` (0..255, largest channel difference) from the background
    (a name, ``[r, g, b]`` in 0..255, or ``None``: the median colour of the image border)."""
    array = _as_hwc255(image)
    return np.abs(array - _background(array, background)).max(-1) > tolerance


def count_objects(image: np.ndarray | torch.Tensor, background: str | Sequence[int] | None = None,
                  min_size: int = 4, tolerance: float = 40.0) -> int:
    """Connected components (8-connected) of non-background pixels with at least ``min_size`` pixels, in an RGB
    image ``(H, W, 3)`` / ``(3, H, W)`` (uint8, or float in [0, 1]); see ``foreground_mask`` for the rest."""
    from scipy import ndimage

    labels, count = ndimage.label(foreground_mask(image, background, tolerance), structure=np.ones((3, 3), bool))
    if count == 0:
        return 0
    sizes = np.bincount(labels.reshape(-1))[1:]
    return int((sizes >= min_size).sum())


def dominant_colour(image: np.ndarray | torch.Tensor, background: str | Sequence[int] | None = None,
                    tolerance: float = 40.0) -> tuple[float, float, float] | None:
    """The median colour ``(r, g, b)`` in [0, 1] of the non-background pixels (``None`` when there are none)."""
    array = _as_hwc255(image)
    mask = np.abs(array - _background(array, background)).max(-1) > tolerance
    if not mask.any():
        return None
    r, g, b = (float(v) / 255.0 for v in np.median(array[mask], axis=0))
    return r, g, b


def colour_name(rgb: Sequence[float] | None, names: Sequence[str] | None = None) -> str | None:
    """The ``COLOURS`` name (among ``names``) nearest to ``rgb`` in [0, 1] by hue: both scaled to a largest
    channel of 1, so a shaded red is still red (``None`` for ``None`` or black)."""
    if rgb is None:
        return None
    value = np.asarray(rgb, dtype=np.float64)
    if value.max() <= 1e-6:
        return None
    value = value / value.max()
    best, gap = None, math.inf
    for name in names or COLOURS:
        ref = np.asarray(COLOURS[name], dtype=np.float64)
        d = float(np.linalg.norm(value - ref / ref.max()))
        if d < gap:
            best, gap = name, d
    return best
