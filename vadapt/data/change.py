"""Bi-temporal change detection pairs in the LEVIR-CD / WHU-CD / SYSU-CD layout.

A pair is ``A/NAME``, ``B/NAME`` (the two dates, same size) and ``label/NAME`` (0 = unchanged, 255 = changed
by default; ``label_map`` for other codes). A split's names come from, in this order:

* a list file ``{split}_list`` (relative to ``root``), one name per line; a line of several paths (PeftCD's
  ``pathA  pathB  pathLabel`` lists) gives the file name of its first path;
* glob pattern(s) ``{split}_images`` of names inside the split's ``A`` folder, e.g. ``"train_*.png"``;
* every file of ``root/{split}/A`` when that folder exists (LEVIR-CD's ``train/A``, ``train/B``, ``train/label``).

The split's folders are ``root/{split}/{A,B,label}`` when ``root/{split}/A`` exists, else ``root/{A,B,label}``.
``predict_a`` / ``predict_b`` name two folders of matching file names for ``vadapt predict`` (no labels);
without them prediction runs on the test (else validation) split. Example::

    data:
      class_path: vadapt.data.ChangeDetectionDataModule
      init_args:
        root: ../shared/data/levir_cd
        train_images: "train_*.png"
        val_images: "val_*.png"
        test_images: "test_*.png"
        scale: 0.00392156862745098    # 8-bit photos to [0, 1]
        train_size: 256

Batches: ``image_a``, ``image_b`` float32 ``(B, len(bands), H, W)`` raw values (times ``scale``), ``mask``
int64 ``(B, H, W)`` (0 / 1, ``ignore_index`` where unknown or padded; absent when predicting), ``name`` (list
of file names) and ``size`` int64 ``(B, 2)`` (each pair's height and width before padding). Training items are
``train_size`` random crops with flips / 90° rotations, the *same* geometry for both dates and the label
(albumentations ``additional_targets``); evaluation items are full size (the task tiles large images).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vadapt.bands import RGB
from vadapt.preprocessing import Preprocessing

from .base import Augment, Size, as_size, resolve_root, run_parallel, train_transform
from .io import BandReader, DataError, FileInfo, MaskDecoder, MaskReader
from .record import describe

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ChangePair:
    """Headers of one pair: the two dates (with the indexes of the configured bands) and the label, if any."""

    name: str
    a: FileInfo
    b: FileInfo
    indexes_a: tuple[int, ...]
    indexes_b: tuple[int, ...]
    label: FileInfo | None


class PairReader:
    """Reads whole pairs: two float32 ``(H, W, C)`` images and an int64 ``(H, W)`` label (or None)."""

    def __init__(self, bands: BandReader, labels: MaskReader) -> None:
        self.bands, self.labels = bands, labels

    def describe(self, name: str, a: Path, b: Path, label: Path | None) -> ChangePair:
        """Headers of one pair; a missing partner or a size mismatch is a ``DataError`` naming the files."""
        for path, role in ((b, "date B"), (label, "label")):
            if path is not None and not path.is_file():
                raise DataError(f"pair {name!r}: {a} has no {role} partner ({path} does not exist)")
        info_a, idx_a = self.bands.info(a)
        info_b, idx_b = self.bands.info(b)
        info_l = self.labels.info(label) if label is not None else None
        for info, role in ((info_b, "date B"), (info_l, "label")):
            if info is not None and (info.height, info.width) != (info_a.height, info_a.width):
                raise DataError(f"pair {name!r}: {role} {info.path} is {info.height}x{info.width} but date A {a} "
                                f"is {info_a.height}x{info_a.width}")
        return ChangePair(name, info_a, info_b, tuple(idx_a), tuple(idx_b), info_l)

    def load(self, pair: ChangePair) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        image_a, invalid_a = self.bands.read(pair.a, pair.indexes_a)
        image_b, invalid_b = self.bands.read(pair.b, pair.indexes_b)
        label = self.labels.read(pair.label, None, invalid_a | invalid_b) if pair.label is not None else None
        return image_a, image_b, label


class ChangeDataset(Dataset):
    """One item per pair, read whole; ``transform`` (albumentations, targets ``image``, ``image_b``, ``mask``)."""

    def __init__(self, pairs: Sequence[ChangePair], reader: PairReader, transform=None) -> None:
        self.pairs, self.reader, self.transform = list(pairs), reader, transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        pair = self.pairs[index]
        image_a, image_b, label = self.reader.load(pair)
        if self.transform is not None:
            # albumentations keeps its own random state (see vadapt.data.base.augment_pair): re-seed from torch
            self.transform.set_random_seed(int(torch.randint(0, 2**31 - 1, ())))
            out = self.transform(image=image_a, image_b=image_b, mask=label.astype(np.int32))
            image_a, image_b, label = out["image"], out["image_b"], out["mask"]
        item = {
            "image_a": torch.from_numpy(np.ascontiguousarray(image_a.transpose(2, 0, 1), dtype=np.float32)),
            "image_b": torch.from_numpy(np.ascontiguousarray(image_b.transpose(2, 0, 1), dtype=np.float32)),
            "name": pair.name,
            "size": torch.tensor(image_a.shape[:2], dtype=torch.int64),
        }
        if label is not None:
            item["mask"] = torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))
        return item


class ChangeCollate:
    """Stack items; pairs of different sizes are padded bottom/right to the largest (images 0, mask
    ``ignore_index``), so full-size evaluation batches without touching the metrics."""

    def __init__(self, ignore_index: int) -> None:
        self.ignore_index = ignore_index

    def __call__(self, items: list[dict]) -> dict:
        h = max(int(it["size"][0]) for it in items)
        w = max(int(it["size"][1]) for it in items)
        batch: dict = {"name": [it["name"] for it in items], "size": torch.stack([it["size"] for it in items])}
        for key, fill in (("image_a", 0.0), ("image_b", 0.0), ("mask", self.ignore_index)):
            if key not in items[0]:
                continue
            first = items[0][key]
            out = torch.full((len(items), *first.shape[:-2], h, w), fill, dtype=first.dtype)
            for i, it in enumerate(items):
                out[i, ..., : it[key].shape[-2], : it[key].shape[-1]] = it[key]
            batch[key] = out
        return batch


class ChangeDetectionDataModule(L.LightningDataModule):
    """Change pairs ``A/``, ``B/``, ``label/`` with list files, name patterns or split folders (module docs)."""

    def __init__(
        self,
        root: str,
        train_images: str | list[str] | None = None,
        val_images: str | list[str] | None = None,
        test_images: str | list[str] | None = None,
        train_list: str | None = None,
        val_list: str | None = None,
        test_list: str | None = None,
        predict_a: str | None = None,
        predict_b: str | None = None,
        a_folder: str = "A",
        b_folder: str = "B",
        label_folder: str = "label",
        bands: tuple[str, ...] = RGB,
        scale: float = 1.0,
        offset: float = 0.0,
        label_map: dict[int, int] | None = None,
        ignore_index: int = 255,
        train_size: Size | None = 256,
        augment: tuple[Augment, ...] = ("hflip", "vflip", "rot90"),
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        check_files: bool = True,
    ) -> None:
        """
        Args:
            root: dataset folder; patterns, list files and ``predict_*`` folders are relative to it.
            train_images, val_images, test_images: glob pattern(s) of file names in the split's ``A`` folder.
            train_list, val_list, test_list: list files of names (one per line), instead of patterns.
            predict_a, predict_b: folders of the two dates for ``predict`` (files paired by name).
            a_folder, b_folder, label_folder: folder names of the first date, second date and labels
                (SYSU-CD: ``time1``, ``time2``, ``label``).
            bands: bands of both dates, by name (must match the task's ``bands``).
            scale: multiplied into the image values (``1/255`` for 8-bit photos and the default statistics);
                recorded in the adapter checkpoint, so ``vadapt infer`` applies it to raw files by itself.
            offset: added after ``scale``; recorded like it.
            label_map: label value -> class (default ``{0: 0, 255: 1}``; ``{0: 0, 1: 1}`` for 0/1 labels);
                other values are an error naming the file.
            ignore_index: label value of unknown / padded pixels (set the task's ``ignore_index`` to it).
            train_size: random-crop size ``S`` or ``[H, W]`` (padded where a pair is smaller); null = whole pairs.
            augment: training flips / rotations among ``hflip``, ``vflip``, ``rot90`` and the photometric
                ``band_gain``, ``gamma``, ``haze``, ``blur`` (``docs/travel.md``), applied to both dates
                and the label alike.
            batch_size, val_batch_size, num_workers: data loader settings.
            check_files: in ``setup``, decode every pair once, so corrupt files and bad label values stop the
                run before training.
        """
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.root = resolve_root(root)
        if (predict_a is None) != (predict_b is None):
            raise DataError("predict_a and predict_b go together: set both or neither")
        for split, images, listed in zip(SPLITS, (train_images, val_images, test_images),
                                         (train_list, val_list, test_list)):
            if images is not None and listed is not None:
                raise DataError(f"set either {split}_images or {split}_list, not both")
        self.ignore_index, self.check_files = ignore_index, check_files
        decoder = MaskDecoder(label_map={0: 0, 255: 1} if label_map is None else label_map, num_classes=2,
                              ignore_index=ignore_index)
        self.reader = PairReader(BandReader(bands, scale=scale, offset=offset), MaskReader(decoder))
        self.train_size = as_size(train_size, "train_size")
        self.train_tf = train_transform(self.train_size, "random_crop", augment, None, ignore_index)
        self.train_tf.add_targets({"image_b": "image"})
        self.datasets: dict[str, ChangeDataset] = {}

    # ---- finding pairs -----------------------------------------------------------------------------------
    def split_dir(self, split: str) -> Path:
        folder = self.root / split
        return folder if (folder / self.hparams.a_folder).is_dir() else self.root

    def has_split(self, split: str) -> bool:
        hp = self.hparams
        if split == "predict":
            return hp.predict_a is not None or self.has_split("test") or self.has_split("val")
        return (split == "train" or hp[f"{split}_images"] is not None or hp[f"{split}_list"] is not None
                or (self.root / split / hp.a_folder).is_dir())

    def names(self, split: str) -> list[str]:
        """File names of a split (relative to its ``A`` folder), in list-file order or sorted."""
        hp = self.hparams
        folder_a = self.split_dir(split) / hp.a_folder
        if hp[f"{split}_list"] is not None:
            return _read_list(self.root / hp[f"{split}_list"], f"{split}_list")
        patterns = hp[f"{split}_images"]
        if patterns is None:
            if self.split_dir(split) == self.root:
                raise DataError(f"no {split} pairs: set {split}_images (a pattern of names in {folder_a}) or "
                                f"{split}_list, or make the folder {self.root / split / hp.a_folder}")
            patterns = "*"
        if not folder_a.is_dir():
            raise FileNotFoundError(f"data folder not found: {folder_a} (the {split} split's first date)")
        names: set[str] = set()
        for pattern in [patterns] if isinstance(patterns, str) else list(patterns):
            found = [os.path.relpath(p, folder_a) for p in glob.glob(str(folder_a / pattern), recursive=True)
                     if os.path.isfile(p)]
            if not found:
                raise DataError(f"no files match {split}_images={pattern!r} in {folder_a}")
            names.update(found)
        return sorted(names)

    @property
    def bands(self) -> tuple[str, ...]:
        return self.reader.bands.bands

    def iter_stat_pixels(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(image (H, W, C), valid (H, W))`` of both dates of every training pair, for ``vadapt stats``."""
        for pair in self.find_pairs("train"):
            for info, indexes in ((pair.a, pair.indexes_a), (pair.b, pair.indexes_b)):
                image, invalid = self.reader.bands.read(info, indexes)
                yield image, ~invalid

    def preprocessing(self) -> Preprocessing:
        """How the model saw the pairs (value scale, nodata; native-scale crops): stored in its checkpoints."""
        return describe(self.reader.bands, [pair.a for pair in self.find_pairs("train")])

    def find_pairs(self, split: str) -> list[ChangePair]:
        hp = self.hparams
        if split == "predict" and hp.predict_a is not None:
            return self._predict_pairs()
        if split == "predict":
            split = "test" if self.has_split("test") else "val"
        base = self.split_dir(split)
        folders = [base / hp.a_folder, base / hp.b_folder, base / hp.label_folder]

        def describe(name: str) -> ChangePair:
            a, b, label = (folder / name for folder in folders)
            if not a.is_file():
                raise DataError(f"pair {name!r} (from {split}_list) has no date A file: {a} does not exist")
            return self.reader.describe(name, a, b, label)

        return run_parallel(describe, self.names(split))

    def _predict_pairs(self) -> list[ChangePair]:
        hp = self.hparams
        folder_a, folder_b = (Path(p) if os.path.isabs(p) else self.root / p for p in (hp.predict_a, hp.predict_b))
        for folder, key in ((folder_a, "predict_a"), (folder_b, "predict_b")):
            if not folder.is_dir():
                raise FileNotFoundError(f"data folder not found: {folder} (from {key})")
        names_a = sorted(p.name for p in folder_a.iterdir() if p.is_file())
        names_b = {p.name for p in folder_b.iterdir() if p.is_file()}
        only_b = sorted(names_b - set(names_a))
        if only_b:
            raise DataError(f"{folder_b / only_b[0]} has no date A partner in {folder_a} "
                            f"({len(only_b)} unpaired file(s) in predict_b)")
        if not names_a:
            raise DataError(f"no files in predict_a folder {folder_a}")
        return run_parallel(lambda n: self.reader.describe(n, folder_a / n, folder_b / n, None), names_a)

    def _check(self, pair: ChangePair) -> None:
        self.reader.load(pair)

    # ---- Lightning hooks --------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Find, pair and check the pairs of the splits ``stage`` needs; bad input stops here."""
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",),
                  "predict": ("predict",)}.get(stage or "", SPLITS)
        for split in wanted:
            if split in self.datasets or not self.has_split(split):
                continue
            pairs = self.find_pairs(split)
            if self.check_files:
                run_parallel(self._check, pairs)
            self.datasets[split] = ChangeDataset(pairs, self.reader, self.train_tf if split == "train" else None)

    def _loader(self, split: str) -> DataLoader | list:
        if split not in self.datasets:
            if not self.has_split(split):
                return []
            self.setup({"train": "fit", "val": "validate", "test": "test", "predict": "predict"}[split])
        hp = self.hparams
        batch = hp.batch_size if split == "train" else (hp.val_batch_size or hp.batch_size)
        return DataLoader(self.datasets[split], batch_size=batch, shuffle=split == "train",
                          num_workers=hp.num_workers, collate_fn=ChangeCollate(self.ignore_index),
                          persistent_workers=hp.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader | list:
        return self._loader("predict")


def _read_list(path: Path, key: str) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"list file not found: {path} (from {key})")
    names = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(Path(line.split()[0]).name if len(line.split()) > 1 else line)
    if not names:
        raise DataError(f"list file {path} (from {key}) names no pairs")
    return names
