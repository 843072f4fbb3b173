"""Datasets in the mmsegmentation layout, read with the semantics of mmseg's ``BaseSegDataset``.

``data_root/img_dir/{train,val}/**/*{img_suffix}`` with masks at the same relative path under
``ann_dir/{train,val}`` with ``seg_map_suffix`` instead of ``img_suffix``, sorted by image path (or the
names listed one per line, without suffix, in an ``ann_file``, in its order). Masks hold class ids (palette
PNGs give their indices, as mmseg's pillow loading does); ``reduce_zero_label`` turns 0 into 255 (ignore)
and every other value ``v`` into ``v - 1`` (255 stays 255); 255 is the ignore value. So an mmseg config's
dataset options carry over unchanged::

    data:
      class_path: vadapt.data.MMSegDataModule
      init_args:
        data_root: data/ade/ADEChallengeData2016
        train_img_path: images/training
        train_seg_map_path: annotations/training
        val_img_path: images/validation
        val_seg_map_path: annotations/validation
        img_suffix: .jpg
        seg_map_suffix: .png
        reduce_zero_label: true
        num_classes: 150
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from vadapt.bands import RGB

from .base import (
    Augment,
    FileDataset,
    Sample,
    SampleLoader,
    SegmentationDataModule,
    Size,
    as_size,
    eval_transform,
    run_parallel,
    train_transform,
)
from .io import BandReader, DataError, MaskDecoder, MaskReader


def list_mmseg(data_root: Path, img_path: str, seg_map_path: str, img_suffix: str, seg_map_suffix: str,
               ann_file: str | None, split: str) -> list[tuple[Path, Path]]:
    """(image, mask) pairs as ``BaseSegDataset.load_data_list`` finds them; a missing mask is an error."""
    img_dir, ann_dir = data_root / img_path, data_root / seg_map_path
    for key, value, folder in ((f"{split}_img_path", img_path, img_dir), (f"{split}_seg_map_path", seg_map_path,
                                                                          ann_dir)):
        if not folder.is_dir():
            raise FileNotFoundError(f"data folder not found: {folder} (from {key}={value!r})")
    if ann_file is not None:
        listing = Path(ann_file) if os.path.isabs(ann_file) else data_root / ann_file
        if not listing.is_file():
            raise FileNotFoundError(f"{split}_ann_file not found: {listing}")
        names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        pairs = [(img_dir / (n + img_suffix), ann_dir / (n + seg_map_suffix)) for n in names]
        for image, _ in pairs:
            if not image.is_file():
                raise DataError(f"image {image} listed in {listing} does not exist")
    else:
        images = sorted(p for p in img_dir.rglob(f"*{img_suffix}") if p.is_file())
        rels = [str(p.relative_to(img_dir)) for p in images]
        pairs = sorted(((img_dir / r, ann_dir / (r[: -len(img_suffix)] + seg_map_suffix)) for r in rels),
                       key=lambda p: str(p[0]))  # mmseg sorts the directory listing, not an ann_file
    if not pairs:
        raise DataError(f"no images ending in {img_suffix!r} in {img_dir} ({split}_img_path)")
    for image, mask in pairs:
        if not mask.is_file():
            raise DataError(f"image {image} has no mask: {mask} does not exist (seg_map_suffix={seg_map_suffix!r})")
    return pairs


class MMSegDataModule(SegmentationDataModule):
    """mmsegmentation-layout datasets (``img_dir``/``ann_dir`` per split, suffixes, ``reduce_zero_label``).

    Batches and sizes as ``FolderSegmentationDataModule``: training ``train_size`` random crops (optionally
    after a random rescale, as mmseg's ``RandomResize`` + ``RandomCrop``) or resizes with flips; validation full
    size, padded per batch with ``ignore_index``, unless ``val_size`` is set.
    """

    def __init__(
        self,
        data_root: str,
        img_suffix: str = ".jpg",
        seg_map_suffix: str = ".png",
        reduce_zero_label: bool = False,
        train_img_path: str = "img_dir/train",
        train_seg_map_path: str = "ann_dir/train",
        val_img_path: str | None = "img_dir/val",
        val_seg_map_path: str | None = "ann_dir/val",
        test_img_path: str | None = None,
        test_seg_map_path: str | None = None,
        train_ann_file: str | None = None,
        val_ann_file: str | None = None,
        test_ann_file: str | None = None,
        num_classes: int | None = None,
        ignore_index: int = 255,
        bands: tuple[str, ...] = RGB,
        scale: float = 1.0,
        train_size: Size | None = 512,
        train_mode: Literal["random_crop", "resize"] = "random_crop",
        scale_range: tuple[float, float] | None = None,
        val_size: Size | None = None,
        augment: tuple[Augment, ...] = ("hflip",),
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        check_files: bool = True,
    ) -> None:
        """
        Args:
            data_root: dataset folder (mmseg ``data_root``).
            img_suffix, seg_map_suffix: file name endings of images and masks (mmseg semantics: the mask of
                ``img_dir/a/b{img_suffix}`` is ``ann_dir/a/b{seg_map_suffix}``).
            reduce_zero_label: mmseg's option: mask 0 -> ignore (255), ``v`` -> ``v - 1``, 255 stays 255.
            train_img_path, train_seg_map_path: the split's folders under ``data_root`` (mmseg ``data_prefix``
                ``img_path`` / ``seg_map_path``); likewise ``val_*`` (null: no validation) and ``test_*``.
            train_ann_file, val_ann_file, test_ann_file: optional text files listing the split's names without
                suffix (mmseg ``ann_file``), relative to ``data_root``.
            num_classes: when set, mask classes (after ``reduce_zero_label``) must be in ``0..num_classes - 1``
                or ``ignore_index``; others are an error listing them.
            ignore_index: ignored mask value (mmseg: 255); set the task's ``ignore_index`` to the same value.
            bands: input bands, by name (images are read as RGB like mmseg's ``color`` loading).
            scale: multiplied into the image values (1/255 for [0, 1] inputs; default 1: raw 0..255).
            train_size, train_mode, scale_range, val_size, augment, batch_size, val_batch_size, num_workers,
                check_files: as in ``FolderSegmentationDataModule``.
        """
        super().__init__()
        # logger=False: Lightning refuses to log when a datamodule and the task share a key (num_classes,
        # ignore_index) with different values; LightningCLI saves the whole config.yaml anyway
        self.save_hyperparameters(logger=False)
        self.root = Path(data_root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"data folder not found: data_root={data_root!r} "
                                    f"(resolved to {self.root.resolve()})")
        for split in ("val", "test"):
            img, seg = self.hparams[f"{split}_img_path"], self.hparams[f"{split}_seg_map_path"]
            if (img is None) != (seg is None):
                raise DataError(f"{split}_img_path and {split}_seg_map_path go together: set both or neither")
        for key, suffix in (("img_suffix", img_suffix), ("seg_map_suffix", seg_map_suffix)):
            if not suffix:
                raise DataError(f"{key} must not be empty")
        self.train_size, self.val_size = as_size(train_size, "train_size"), as_size(val_size, "val_size")
        if self.val_size is None and train_mode == "resize":
            self.val_size = self.train_size  # validate the way the model will predict: whole images resized
        self.ignore_index, self.check_files = ignore_index, check_files
        decoder = MaskDecoder(num_classes=num_classes, ignore_index=ignore_index, reduce_zero_label=reduce_zero_label)
        self.loader = SampleLoader(BandReader(bands, scale=scale, nodata=None), MaskReader(decoder))
        self.train_tf = train_transform(self.train_size, train_mode, augment, scale_range, ignore_index)
        self.eval_tf = eval_transform(self.val_size)

    def has_split(self, split: str) -> bool:
        return self.hparams[f"{split}_img_path"] is not None

    def discover(self, split: str) -> list[Sample]:
        hp = self.hparams
        pairs = list_mmseg(self.root, hp[f"{split}_img_path"], hp[f"{split}_seg_map_path"], hp.img_suffix,
                           hp.seg_map_suffix, hp[f"{split}_ann_file"], split)
        return run_parallel(lambda pair: self.loader.describe(*pair), pairs)

    def make_dataset(self, split: str, samples: list[Sample]) -> FileDataset:
        return FileDataset(samples, self.loader, self.train_tf if split == "train" else self.eval_tf)
