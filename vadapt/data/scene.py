"""Training on random crops of large multi-band scenes stored as ``.npz`` arrays.

Each file holds ``img`` ``(H, W, C)`` (any numeric dtype), ``msk`` ``(H, W)`` or ``(H, W, 1)`` integer codes,
and optionally ``bands`` (C names) and ``scale`` (multiplied into ``img``, e.g. 1e-4 for reflectance stored as
uint16). Bands are selected by name (a missing band is an error). The bottom ``val_fraction`` of every scene's
rows is held out: validation tiles it without overlap, training samples random crops with flips and
90-degree rotations (albumentations, applied identically to image and mask) from the rest. ``val_fraction: 0``
trains on whole scenes without validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vadapt.bands import select_bands
from vadapt.preprocessing import Preprocessing

from .base import Augment, augment_pair, augmentations
from .safe_open import DataError, load_npz_arrays, npz_keys


def load_scene(
    path: str | Path, bands: Sequence[str], file_bands: Sequence[str] | None = None,
    label_map: dict[int, int] | None = None, ignore_index: int = 255,
) -> tuple[np.ndarray, np.ndarray]:
    """Read one scene: image ``(H, W, len(bands))`` float32 and mask ``(H, W)`` int64 class ids.

    Member sizes are checked from their npy headers (pixel limit, load limit, compression bombs: see
    :mod:`vadapt.data.safe_open`) before anything is inflated; pickles are never loaded.
    """
    files = npz_keys(path)
    for key in ("img", "msk"):
        if key not in files:
            raise ValueError(f"{path} has no {key!r} array (found {sorted(files)})")
    data = load_npz_arrays(path, ["img", "msk", "bands", "scale"])
    names = [str(b) for b in data["bands"]] if "bands" in data else file_bands
    if names is None:
        count = data["img"].shape[-1] if data["img"].ndim == 3 else 1
        guess = f" (if they are the configured bands in this order: file_bands: [{', '.join(bands)}])" \
            if count == len(bands) else ""
        raise ValueError(f"{path} does not name its {count} bands: set file_bands in the data config{guess}, or "
                         "save the file with a `bands` array of names")
    image = select_bands(data["img"], names, bands).astype(np.float32)
    if "scale" in data:
        image *= np.float32(data["scale"])
    mask = data["msk"].reshape(data["msk"].shape[:2]).astype(np.int64)
    if image.shape[:2] != mask.shape:
        raise ValueError(f"{path}: image {image.shape[:2]} and mask {mask.shape} differ in size")
    if label_map is not None:
        lut = np.full(max(max(label_map), int(mask.max())) + 1, ignore_index, dtype=np.int64)
        for code, cls in label_map.items():
            lut[int(code)] = cls
        mask = lut[mask]
    return image, mask


class RandomCrops(Dataset):
    """``length`` random ``size``×``size`` crops (then the ``augment`` entries: flips / rotations, photometric
    changes) from the given scene regions."""

    def __init__(self, scenes: list[tuple[np.ndarray, np.ndarray]], size: int, length: int,
                 augment: Sequence[str] = ("hflip", "vflip", "rot90")) -> None:
        import albumentations as A

        self.scenes, self.length = scenes, length
        for image, _ in scenes:
            if min(image.shape[:2]) < size:
                raise ValueError(f"crop_size {size} is larger than a training region {image.shape[:2]}")
        self.transform = A.Compose([A.RandomCrop(size, size), *augmentations(augment)])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, mask = self.scenes[index % len(self.scenes)]
        image, mask = augment_pair(self.transform, image, mask)  # seeded from torch: repeatable runs
        return {"image": torch.from_numpy(image.transpose(2, 0, 1).copy()), "mask": torch.from_numpy(mask).long()}


class Tiles(Dataset):
    """Non-overlapping ``size``×``size`` tiles covering the scene regions; edge tiles are padded (image 0, mask
    ``ignore_index``) rather than shifted inward, so every pixel counts once in the metrics."""

    def __init__(self, scenes: list[tuple[np.ndarray, np.ndarray]], size: int, ignore_index: int) -> None:
        self.items = [
            (s, y, x) for s, (image, _) in enumerate(scenes)
            for y in range(0, image.shape[0], size) for x in range(0, image.shape[1], size)
        ]
        self.scenes, self.size, self.ignore_index = scenes, size, ignore_index

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s, y, x = self.items[index]
        image, mask = self.scenes[s]
        crop = (slice(y, y + self.size), slice(x, x + self.size))
        tile, truth = image[crop], mask[crop]
        height, width = truth.shape
        padded = np.zeros((self.size, self.size, image.shape[2]), dtype=np.float32)
        padded[:height, :width] = tile
        labels = np.full((self.size, self.size), self.ignore_index, dtype=np.int64)
        labels[:height, :width] = truth
        return {"image": torch.from_numpy(padded.transpose(2, 0, 1).copy()), "mask": torch.from_numpy(labels)}


class SceneDataModule(L.LightningDataModule):
    """Random-crop training on ``.npz`` scenes, validation/test on held-out rows (see module docstring)."""

    def __init__(
        self,
        paths: list[str],
        bands: list[str],
        file_bands: list[str] | None = None,
        label_map: dict[int, int] | None = None,
        ignore_index: int = 255,
        crop_size: int = 128,
        batch_size: int = 8,
        samples_per_epoch: int = 256,
        val_fraction: float = 0.25,
        augment: tuple[Augment, ...] = ("hflip", "vflip", "rot90"),
        pixel_size: float | None = None,
        num_workers: int = 0,
    ) -> None:
        """
        Args:
            paths: ``.npz`` scene files (relative paths are resolved against the working directory).
            bands: bands to feed the model, by name; must match the task's ``bands``.
            file_bands: band names of the files when they do not store ``bands`` themselves.
            label_map: mask code -> class id; unmapped codes become ``ignore_index``.
            samples_per_epoch: random training crops per epoch.
            val_fraction: share of each scene's rows (from the bottom) held out for validation and test; 0 trains
                on the whole scenes, without validation.
            augment: training augmentations of the crops: ``hflip``, ``vflip``, ``rot90`` and the photometric
                ``band_gain``, ``gamma``, ``haze``, ``blur`` (``docs/travel.md``).
            pixel_size: ground size of a pixel of the scenes (e.g. 10 for Sentinel-2 in metres), which ``.npz``
                files cannot carry: recorded in the checkpoint, so ``vadapt infer`` resamples georeferenced inputs
                of another pixel size (30 m Landsat) to it. Use the units of the inputs' CRS.
        """
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"val_fraction must be in [0, 1) (0: train on whole scenes, no validation), got "
                            f"{val_fraction}")
        for p in paths:
            if not Path(p).is_file():
                raise FileNotFoundError(f"scene file not found: {p}")
        if pixel_size is not None and not pixel_size > 0:
            raise DataError(f"pixel_size must be a positive ground size (e.g. 10 for 10 m), got {pixel_size}")
        if crop_size < 1 or samples_per_epoch < 1:
            raise DataError(f"crop_size and samples_per_epoch must be >= 1, got {crop_size}, {samples_per_epoch}")
        # logger=False: Lightning refuses to log when a datamodule and the task share a key (num_classes,
        # ignore_index) with different values; LightningCLI saves the whole config.yaml anyway
        self.save_hyperparameters(logger=False)
        augmentations(augment)  # unknown entries are an error now

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        label_map = {int(k): int(v) for k, v in hp.label_map.items()} if hp.label_map else None
        train, held = [], []
        for p in hp.paths:
            image, mask = load_scene(p, hp.bands, hp.file_bands, label_map, hp.ignore_index)
            cut = int(round(image.shape[0] * (1.0 - hp.val_fraction)))
            train.append((image[:cut], mask[:cut]))
            held.append((image[cut:], mask[cut:]))
        self.train_set = RandomCrops(train, hp.crop_size, hp.samples_per_epoch, hp.augment)
        self.val_set = Tiles(held, hp.crop_size, hp.ignore_index) if hp.val_fraction > 0 else None

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset, batch_size=self.hparams.batch_size, shuffle=shuffle, num_workers=self.hparams.num_workers
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, shuffle=False) if self.val_set is not None else []

    def test_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()

    def preprocessing(self) -> Preprocessing:
        """How the model saw the scenes: the files' own ``scale`` only, native scale, no nodata value (NaN), the
        declared ``pixel_size``."""
        return Preprocessing(nodata=None, pixel_size=self.hparams.pixel_size)

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(self.hparams.bands)

    def iter_stat_pixels(self):
        """``(image, valid)`` of every scene's training rows (all valid), for ``vadapt stats``."""
        hp = self.hparams
        label_map = {int(k): int(v) for k, v in hp.label_map.items()} if hp.label_map else None
        for p in hp.paths:
            image, _ = load_scene(p, hp.bands, hp.file_bands, label_map, hp.ignore_index)
            cut = int(round(image.shape[0] * (1.0 - hp.val_fraction)))
            yield image[:cut], np.ones(image[:cut].shape[:2], dtype=bool)
