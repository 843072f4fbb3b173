"""Random-window training on large multi-band rasters: GeoTIFF (rasterio), ``.npy`` and ``.npz`` scenes.

Only the windows used are read from GeoTIFF and ``.npy`` files, so scenes larger than memory work. Bands are
selected by name (from the files' band descriptions, an ``.npz`` ``bands`` array, or ``file_bands``); a
missing band is an error. Nodata pixels (the file's nodata value, a configured value, or NaN) get mask
``ignore_index`` and are excluded from ``vadapt stats``. Example::

    data:
      class_path: vadapt.data.RasterSegmentationDataModule
      init_args:
        root: data/s2
        train_images: [scenes/*.tif]
        train_masks: labels/{stem}_mask.tif
        val_fraction: 0.2            # bottom 20% of every scene's rows
        bands: [B02, B03, B04, B08]
        scale: 0.0001
        label_map: {0: 0, 1: 1, 2: 2}
        crop_size: 256
        samples_per_epoch: 2000
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from .base import (
    Augment,
    Sample,
    SampleLoader,
    SegmentationDataModule,
    augment_pair,
    augmentations,
    find_images,
    pad_to,
    pair_masks,
    resolve_root,
    run_parallel,
    to_tensors,
)
from .io import BandReader, DataError, MaskDecoder, MaskReader, NodataOption


class RandomWindows(Dataset):
    """``length`` random ``size``×``size`` windows (then flips / rotations) from the samples' regions.

    A scene is picked with probability proportional to its region's area. Windows with less than
    ``min_valid_fraction`` labelled pixels are redrawn (up to 10 times).
    """

    def __init__(self, samples: list[Sample], loader: SampleLoader, size: int, length: int,
                 augment: tuple[str, ...], ignore_index: int, min_valid_fraction: float = 0.0) -> None:
        import albumentations as A

        self.samples, self.loader, self.size, self.length = samples, loader, size, length
        self.ignore_index, self.min_valid = ignore_index, min_valid_fraction
        areas = torch.tensor([float(s.region[2] * s.region[3]) for s in samples])
        self.weights = areas / areas.sum()
        self.transform = A.Compose(augmentations(augment)) if augment else None

    def __len__(self) -> int:
        return self.length

    def _draw(self) -> tuple[np.ndarray, np.ndarray]:
        sample = self.samples[int(torch.multinomial(self.weights, 1))]
        y0, x0, h, w = sample.region
        dy = int(torch.randint(0, max(h - self.size, 0) + 1, ()))
        dx = int(torch.randint(0, max(w - self.size, 0) + 1, ()))
        window = (y0 + dy, x0 + dx, min(self.size, h), min(self.size, w))
        image, mask = self.loader.load(sample, window)
        return pad_to(image, mask, (self.size, self.size), self.ignore_index)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        for _ in range(10):
            image, mask = self._draw()
            if self.min_valid <= 0 or (mask != self.ignore_index).mean() >= self.min_valid:
                break
        if self.transform is not None:
            image, mask = augment_pair(self.transform, image, mask)
        return to_tensors(image, mask)


class Tiles(Dataset):
    """Non-overlapping ``size``×``size`` tiles covering the samples' regions; edge tiles are padded with mask
    ``ignore_index`` (not shifted inward, which would count the overlap twice in the metrics)."""

    def __init__(self, samples: list[Sample], loader: SampleLoader, size: int, ignore_index: int) -> None:
        self.samples, self.loader, self.size, self.ignore_index = samples, loader, size, ignore_index
        self.items = []
        for s, sample in enumerate(samples):
            y0, x0, h, w = sample.region
            self.items += [
                (s, y0 + y, x0 + x, min(size, h - y), min(size, w - x))
                for y in range(0, h, size) for x in range(0, w, size)
            ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s, y, x, h, w = self.items[index]
        image, mask = self.loader.load(self.samples[s], (y, x, h, w))
        return to_tensors(*pad_to(image, mask, (self.size, self.size), self.ignore_index))


class RasterSegmentationDataModule(SegmentationDataModule):
    """Multi-band scenes (GeoTIFF / ``.npy`` / ``.npz``) with class masks; random windows for training, tiles
    for validation and test.

    Batches: ``image`` float32 ``(B, len(bands), crop_size, crop_size)`` raw values (times ``scale`` and an
    ``.npz`` ``scale``), ``mask`` int64 ``(B, crop_size, crop_size)`` with ``ignore_index`` at nodata pixels,
    unmapped values (with ``other_class``) and padding.
    """

    def __init__(
        self,
        train_images: str | list[str],
        bands: list[str],
        train_masks: str | list[str] | None = None,
        val_images: str | list[str] | None = None,
        val_masks: str | list[str] | None = None,
        test_images: str | list[str] | None = None,
        test_masks: str | list[str] | None = None,
        root: str = ".",
        mask_stem_replace: dict[str, str] | None = None,
        val_fraction: float = 0.0,
        file_bands: list[str] | None = None,
        scale: float = 1.0,
        nodata: NodataOption = "file",
        nodata_rule: Literal["all", "any"] = "all",
        label_map: dict[int, int] | None = None,
        color_map: dict[str, int] | None = None,
        other_class: int | None = None,
        num_classes: int | None = None,
        ignore_index: int = 255,
        crop_size: int = 256,
        samples_per_epoch: int = 1024,
        min_valid_fraction: float = 0.0,
        augment: tuple[Augment, ...] = ("hflip", "vflip", "rot90"),
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        check_files: bool = True,
    ) -> None:
        """
        Args:
            train_images: scene files or glob patterns (relative to ``root``): ``.tif``/``.tiff`` (any GDAL
                raster), ``.npy`` ``(H, W, C)``, ``.npz`` (``img``, optional ``msk``, ``bands``, ``scale``).
            bands: bands fed to the model, by name (must match the task's ``bands``); missing ones are an error.
            train_masks: mask path template (``{stem}``, ``{name}``, ``{suffix}``, ``{parent}``), e.g.
                ``labels/{stem}_mask.tif``, or a list of mask files in the images' sorted order; null when the
                images are ``.npz`` files holding their mask (``msk``).
            val_images, val_masks, test_images, test_masks: the same for validation / test scenes (optional).
            root: folder the paths are relative to (default: the working directory).
            mask_stem_replace: substring replacements turning an image stem into its mask stem.
            val_fraction: without ``val_images``, hold out this share of every training scene's rows (the
                bottom ones) for validation.
            file_bands: band names for files that do not name their bands (checked against those that do).
            scale: multiplied into the image values (e.g. 0.0001 for reflectance stored as uint16).
            nodata: ``"file"`` (each file's nodata value), a number, or null; NaN is always nodata.
            nodata_rule: a pixel is nodata when ``"all"`` (default, as GDAL) or ``"any"`` of its bands are.
            label_map: mask value -> class id (values not listed are an error unless ``other_class``).
            color_map: mask colour ``"R,G,B"`` -> class id, for colour-coded masks.
            other_class: class id for mask values outside the mapping (``ignore_index`` ignores them).
            num_classes: when set, class ids must be in ``0..num_classes - 1`` (or ``ignore_index``).
            ignore_index: mask value of unknown pixels; set the task's ``ignore_index`` to the same value.
            crop_size: side of the training windows and of the validation / test tiles.
            samples_per_epoch: random training windows per epoch.
            min_valid_fraction: redraw training windows whose share of labelled pixels is below this.
            augment: training augmentations of the windows: ``hflip``, ``vflip``, ``rot90``, and the photometric
                ``band_gain``, ``gamma``, ``haze``, ``blur`` (``docs/travel.md``).
            batch_size, val_batch_size, num_workers: data loader settings.
            check_files: in ``setup``, read every scene and mask once, in strips, so corrupt files and
                unexpected mask values stop the run before training; false checks only names and headers.
        """
        super().__init__()
        # logger=False: Lightning refuses to log when a datamodule and the task share a key (num_classes,
        # ignore_index) with different values; LightningCLI saves the whole config.yaml anyway
        self.save_hyperparameters(logger=False)
        self.root = resolve_root(root)
        for split, images, masks in (("val", val_images, val_masks), ("test", test_images, test_masks)):
            if images is None and masks is not None:
                raise DataError(f"{split}_masks is set but {split}_images is not")
        if val_images is not None and val_fraction:
            raise DataError("set either val_images or val_fraction, not both")
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if crop_size < 1 or samples_per_epoch < 1:
            raise DataError(f"crop_size and samples_per_epoch must be >= 1, got {crop_size}, {samples_per_epoch}")
        self.ignore_index, self.check_files = ignore_index, check_files
        self.loader = SampleLoader(
            BandReader(bands, file_bands, scale, nodata, nodata_rule),
            MaskReader(MaskDecoder(label_map, color_map, None, other_class, num_classes, ignore_index)),
        )
        augmentations(augment)  # unknown entries are an error now

    def has_split(self, split: str) -> bool:
        hp = self.hparams
        return split == "train" or hp.get(f"{split}_images") is not None or (split == "val" and hp.val_fraction > 0)

    def discover(self, split: str) -> list[Sample]:
        hp = self.hparams
        source = "train" if split == "val" and hp.val_fraction > 0 else split
        images = find_images(self.root, hp[f"{source}_images"], f"{source}_images")
        pairs = pair_masks(self.root, images, hp[f"{source}_masks"], f"{source}_masks", hp.mask_stem_replace)
        samples = run_parallel(lambda pair: self.loader.describe(*pair), pairs)
        if hp.val_fraction > 0 and split in ("train", "val"):
            out = []
            for s in samples:
                cut = int(round(s.image.height * (1.0 - hp.val_fraction)))
                if not 0 < cut < s.image.height:
                    raise DataError(f"val_fraction {hp.val_fraction} leaves no rows for training or validation "
                                    f"in {s.image.path} ({s.image.height} rows)")
                out.append(replace(s, rows=(0, cut) if split == "train" else (cut, s.image.height)))
            samples = out
        return samples

    def make_dataset(self, split: str, samples: list[Sample]) -> Dataset:
        hp = self.hparams
        if split == "train":
            return RandomWindows(samples, self.loader, hp.crop_size, hp.samples_per_epoch, tuple(hp.augment),
                                 hp.ignore_index, hp.min_valid_fraction)
        return Tiles(samples, self.loader, hp.crop_size, hp.ignore_index)

