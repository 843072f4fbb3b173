"""Shared pieces of the segmentation datamodules: file discovery and pairing, checks, transforms, loaders.

Every datamodule yields batches ``{"image": float32 (B, C, H, W) raw band values, "mask": int64 (B, H, W)}``
with ``ignore_index`` where the class is unknown (nodata, padding, unmapped). Augmentations are
albumentations pipelines applied to image and mask together, so both see the same geometry.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vadapt.preprocessing import Preprocessing

from .io import BandReader, DataError, FileInfo, MaskReader, Window, row_windows
from .record import describe

# training augmentations by name (table and details: vadapt.data.augment): geometric, then photometric "travel" ones
Augment = Literal["hflip", "vflip", "rot90", "band_gain", "gamma", "haze", "blur"]
Size = int | tuple[int, int]
SPLITS = ("train", "val", "test")


def as_size(value: Size | Sequence[int] | None, key: str) -> tuple[int, int] | None:
    """``256`` or ``(h, w)`` -> ``(h, w)``; ``None`` stays ``None``."""
    if value is None:
        return None
    size = (int(value), int(value)) if isinstance(value, (int, np.integer)) else tuple(int(v) for v in value)
    if len(size) != 2 or min(size) < 1:
        raise DataError(f"{key} must be a positive int or [height, width], got {value!r}")
    return size  # type: ignore[return-value]


def resolve_root(root: str | Path | None, key: str = "root") -> Path:
    path = Path(root if root is not None else ".").expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"data folder not found: {key}={str(root)!r} (resolved to {path.resolve()})")
    return path


def find_images(root: Path, patterns: str | Sequence[str], key: str) -> list[Path]:
    """Files matching the glob pattern(s) (relative to ``root`` unless absolute), sorted, without duplicates."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    if not patterns:
        raise DataError(f"{key} is empty: give a glob pattern like 'images/*.png'")
    found: dict[str, Path] = {}
    for pattern in patterns:
        full = pattern if os.path.isabs(pattern) else str(root / pattern)
        if not glob.has_magic(full):
            if not Path(full).is_file():
                parent = Path(full).parent
                what = "data folder" if not parent.is_dir() else "image file"
                missing = parent if not parent.is_dir() else full
                raise FileNotFoundError(f"{what} not found: {missing} (from {key}={pattern!r})")
            found.setdefault(str(Path(full)), Path(full))
            continue
        matches = sorted(p for p in glob.glob(full, recursive=True) if Path(p).is_file())
        if not matches:
            static = full[: min(i for i in (full.find(c) for c in "*?[") if i >= 0)]
            folder = Path(static[: static.rfind(os.sep) + 1] or ".")
            if not folder.is_dir():
                raise FileNotFoundError(f"data folder not found: {folder} (from {key}={pattern!r})")
            raise DataError(f"no files match {key}={pattern!r} in {folder}")
        for m in matches:
            found.setdefault(str(Path(m)), Path(m))
    return sorted(found.values())


def pair_masks(root: Path, images: Sequence[Path], masks: str | Sequence[str] | None, key: str,
               stem_replace: dict[str, str] | None = None) -> list[tuple[Path, Path | None]]:
    """(image, mask) pairs: the mask from a template (``{stem}``, ``{name}``, ``{suffix}``, ``{parent}``), a list
    in the images' order, or ``None`` (masks inside ``.npz`` images). A missing mask is an error. With a
    template, matched files that are the mask of another matched image are not images (``images/*.png`` with
    ``images/{stem}_mask.png`` works)."""
    images = list(images)
    if masks is None:
        not_npz = [str(p) for p in images if p.suffix.lower() != ".npz"]
        if not_npz:
            raise DataError(f"{key} is not set, so masks must be inside .npz images, but {not_npz[0]} is not .npz")
        return [(image, None) for image in images]
    if not isinstance(masks, str):
        masks = list(masks)
        if len(masks) != len(images):
            raise DataError(f"{key} lists {len(masks)} masks for {len(images)} images")
        out = [Path(m) if os.path.isabs(m) else root / m for m in masks]
    else:
        if not any(f"{{{k}}}" in masks for k in ("stem", "name")):
            raise DataError(f"{key}={masks!r} must contain {{stem}} or {{name}} (like 'masks/{{stem}}.png'), "
                            "or be a list of mask files")
        out = []
        for image in images:
            stem = image.stem
            for old, new in (stem_replace or {}).items():
                stem = stem.replace(old, new)
            try:
                rel = masks.format(stem=stem, name=image.name, suffix=image.suffix, parent=image.parent.name)
            except (KeyError, IndexError, ValueError) as exc:
                raise DataError(f"{key}={masks!r} uses an unknown placeholder {exc}; use {{stem}}, {{name}}, "
                                "{suffix} or {parent}") from None
            out.append(Path(rel) if os.path.isabs(rel) else root / rel)
        mask_files = {os.path.normpath(m) for i, m in zip(images, out) if os.path.normpath(m) != os.path.normpath(i)}
        keep = [i for i, image in enumerate(images) if os.path.normpath(image) not in mask_files]
        images, out = [images[i] for i in keep], [out[i] for i in keep]
    for image, mask in zip(images, out):
        if not mask.is_file():
            raise DataError(f"image {image} has no mask: {mask} does not exist (from {key})")
    return list(zip(images, out))


def run_parallel(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``[fn(x) for x in items]`` on a few threads (readers release the GIL); the first error is raised."""
    if len(items) < 4:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(fn, items))


@dataclass(frozen=True)
class Sample:
    """One image with its mask: headers, the band indexes to read and, for scenes, the usable rows."""

    image: FileInfo
    indexes: tuple[int, ...]
    mask: FileInfo | None
    rows: tuple[int, int] | None = None  # (first, end) rows of the region used; None = all

    @property
    def region(self) -> tuple[int, int, int, int]:
        """(row, col, height, width) of the usable region."""
        y0, y1 = self.rows if self.rows is not None else (0, self.image.height)
        return (y0, 0, y1 - y0, self.image.width)


class SampleLoader:
    """Reads (image, mask) windows of samples: float32 ``(h, w, C)`` and int64 ``(h, w)``."""

    def __init__(self, bands: BandReader, masks: MaskReader) -> None:
        self.bands, self.masks = bands, masks

    def describe(self, image: str | Path, mask: str | Path | None) -> Sample:
        """Headers of one pair, checked against the config (bands, mask channels, sizes)."""
        info, indexes = self.bands.info(image)
        minfo = self.masks.info(mask if mask is not None else image)
        if (minfo.height, minfo.width) != (info.height, info.width):
            raise DataError(f"mask {minfo.path} is {minfo.height}x{minfo.width} but its image {image} is "
                            f"{info.height}x{info.width}")
        return Sample(info, tuple(indexes), minfo)

    def load(self, sample: Sample, window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
        image, invalid = self.bands.read(sample.image, sample.indexes, window)
        mask = self.masks.read(sample.mask, window, invalid)
        return image, mask

    def check(self, sample: Sample) -> None:
        """Decode the whole sample once (in strips): corrupt files and unexpected mask values raise here."""
        for window in sample_windows(sample):
            self.load(sample, window)


def sample_windows(sample: Sample) -> Iterator[Window]:
    """Strips covering the sample's region (one window for files that are read whole anyway)."""
    y0, _, h, w = sample.region
    if sample.image.kind in ("pil", "npz"):
        yield sample.region
    else:
        yield from row_windows(y0 + h, w, top=y0)


def pad_to(image: np.ndarray, mask: np.ndarray, size: tuple[int, int], ignore_index: int,
           fill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Pad bottom/right to at least ``size`` (image with ``fill``, mask with ``ignore_index``)."""
    dh, dw = max(size[0] - image.shape[0], 0), max(size[1] - image.shape[1], 0)
    if dh or dw:
        image = np.pad(image, ((0, dh), (0, dw), (0, 0)), constant_values=fill)
        mask = np.pad(mask, ((0, dh), (0, dw)), constant_values=ignore_index)
    return image, mask


def _pad_if_needed(size: tuple[int, int], ignore_index: int):
    import inspect

    import albumentations as A
    import cv2

    params = inspect.signature(A.PadIfNeeded).parameters
    fill = {"fill": 0, "fill_mask": ignore_index} if "fill" in params else {"value": 0, "mask_value": ignore_index}
    return A.PadIfNeeded(size[0], size[1], border_mode=cv2.BORDER_CONSTANT, **fill)


def augmentations(augment: Sequence[str]) -> list:
    """albumentations transforms of the ``augment`` entries, in the order given: geometric ones (``hflip``,
    ``vflip``, ``rot90``) move image and mask alike, photometric ones (``band_gain``, ``gamma``, ``haze``,
    ``blur``) change only the images. Unknown entries are a ``DataError`` listing the valid names."""
    from .augment import build_augmentations

    return build_augmentations(augment)


def train_transform(size: tuple[int, int] | None, mode: str, augment: Sequence[str],
                    scale_range: Sequence[float] | None, ignore_index: int):
    """albumentations pipeline for training: (random scale) + random crop (padded) or resize, then the
    ``augment`` entries (flips / rotations, photometric changes of the image only).

    A ``SeededCompose``: re-seeding it per item (``set_random_seed``) seeds one stream for all its transforms."""
    import albumentations as A
    import cv2

    from .augment import SeededCompose

    steps: list = []
    if scale_range is not None:
        lo, hi = (float(v) for v in scale_range)
        if not 0 < lo <= hi:
            raise DataError(f"scale_range must be [low, high] with 0 < low <= high, got {list(scale_range)}")
        steps.append(A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR, p=1.0))
    if size is not None:
        if mode == "random_crop":
            steps += [_pad_if_needed(size, ignore_index), A.RandomCrop(size[0], size[1])]
        elif mode == "resize":
            steps.append(A.Resize(size[0], size[1], interpolation=cv2.INTER_LINEAR))
        else:
            raise DataError(f"train_mode must be 'random_crop' or 'resize', got {mode!r}")
    if "rot90" in augment and (size is None or size[0] != size[1]):
        raise DataError("augment 'rot90' needs a square train size (it would change the crop's shape)")
    return SeededCompose(steps + augmentations(augment))


def eval_transform(size: tuple[int, int] | None):
    if size is None:
        return None
    import albumentations as A
    import cv2

    return A.Compose([A.Resize(size[0], size[1], interpolation=cv2.INTER_LINEAR)])


def augment_pair(transform, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply an albumentations pipeline to image and mask together (same geometry for both).

    albumentations 2 keeps its own random state, copied unchanged into every DataLoader worker and deaf to
    ``seed_everything``; re-seeding it from torch (seeded per worker by PyTorch) makes the augmentations
    differ between workers and repeat with the seed. One stream is shared by all the pipeline's transforms
    (``vadapt.data.augment.seed_transform``): seeding each alike would correlate their draws.
    """
    from .augment import seed_transform

    seed_transform(transform, int(torch.randint(0, 2**31 - 1, ())))
    out = transform(image=image, mask=mask.astype(np.int32))
    return out["image"], out["mask"]


def to_tensors(image: np.ndarray, mask: np.ndarray) -> dict[str, torch.Tensor]:
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)),
        "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)),
    }


class PadCollate:
    """Stack samples; when sizes differ, pad bottom/right to the largest (image 0, mask ``ignore_index``),
    so full-size evaluation of images of different sizes batches without touching the metrics."""

    def __init__(self, ignore_index: int) -> None:
        self.ignore_index = ignore_index

    def __call__(self, batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        shapes = {tuple(b["image"].shape) for b in batch}
        if len(shapes) == 1:
            return {"image": torch.stack([b["image"] for b in batch]), "mask": torch.stack([b["mask"] for b in batch])}
        h = max(b["image"].shape[-2] for b in batch)
        w = max(b["image"].shape[-1] for b in batch)
        images = torch.zeros((len(batch), batch[0]["image"].shape[0], h, w), dtype=torch.float32)
        masks = torch.full((len(batch), h, w), self.ignore_index, dtype=torch.int64)
        for i, b in enumerate(batch):
            _, bh, bw = b["image"].shape
            images[i, :, :bh, :bw] = b["image"]
            masks[i, :bh, :bw] = b["mask"]
        return {"image": images, "mask": masks}


class FileDataset(Dataset):
    """One item per file pair, read whole, transformed by ``transform`` (albumentations) if given."""

    def __init__(self, samples: Sequence[Sample], loader: SampleLoader, transform=None) -> None:
        self.samples, self.loader, self.transform = list(samples), loader, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, mask = self.loader.load(self.samples[index])
        if self.transform is not None:
            image, mask = augment_pair(self.transform, image, mask)
        return to_tensors(image, mask)


class SegmentationDataModule(L.LightningDataModule):
    """Base of the segmentation datamodules: splits of ``Sample``s, loaders, checks and band statistics.

    Subclasses implement ``discover(split)`` (the samples of a split, headers checked) and ``make_dataset``.
    """

    loader: SampleLoader
    ignore_index: int = 255
    check_files: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.datasets: dict[str, Dataset] = {}
        self._samples: dict[str, list[Sample]] = {}

    # -- to implement -------------------------------------------------------------------------------------
    def discover(self, split: str) -> list[Sample]:
        raise NotImplementedError

    def has_split(self, split: str) -> bool:
        raise NotImplementedError

    def make_dataset(self, split: str, samples: list[Sample]) -> Dataset:
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------------------
    @property
    def bands(self) -> tuple[str, ...]:
        return self.loader.bands.bands

    def samples(self, split: str) -> list[Sample]:
        """The checked samples of ``split`` (headers; whole files too when ``check_files``), cached."""
        if split not in self._samples:
            samples = self.discover(split)
            if self.check_files:
                run_parallel(self.loader.check, samples)
            self._samples[split] = samples
        return self._samples[split]

    def setup(self, stage: str | None = None) -> None:
        """Find, pair and check the files of the splits ``stage`` needs; bad input stops here."""
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",),
                  "predict": ("test",) if self.has_split("test") else ("val",)}.get(stage or "", SPLITS)
        for split in wanted:
            if split not in self.datasets and self.has_split(split):
                self.datasets[split] = self.make_dataset(split, self.samples(split))

    def _loader(self, split: str) -> DataLoader | list:
        if split not in self.datasets:
            if not self.has_split(split):
                return []
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        hp = self.hparams
        batch = hp.batch_size if split == "train" else (hp.get("val_batch_size") or hp.batch_size)
        return DataLoader(
            self.datasets[split], batch_size=batch, shuffle=split == "train", num_workers=hp.num_workers,
            collate_fn=PadCollate(self.ignore_index), persistent_workers=hp.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader | list:
        return self._loader("test" if self.has_split("test") else "val")

    def preprocessing(self) -> Preprocessing:
        """How the model saw the images (value scale, nodata, whole-image resize, pixel size): the task stores it
        in its checkpoints so that prediction reads raw files the same way."""
        resize = getattr(self, "val_size", None)
        if self.hparams.get("train_mode") == "resize":
            resize = getattr(self, "train_size", None)
        return describe(self.loader.bands, [s.image for s in self.samples("train")], resize)

    def iter_stat_pixels(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(image (h, w, C) float32, valid (h, w) bool)`` strips of every training file's training region,
        un-augmented, exactly as the model sees the values (bands selected, ``scale`` applied)."""
        for sample in self.discover("train"):
            for window in sample_windows(sample):
                image, invalid = self.loader.bands.read(sample.image, sample.indexes, window)
                yield image, ~invalid
