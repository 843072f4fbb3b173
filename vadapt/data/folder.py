"""Segmentation datasets stored as image and mask files in folders (JPEG, PNG, GeoTIFF, .npy, .npz ...).

Images of each split are found with glob patterns; each image's mask path is made from a template with
the image's ``{stem}``. Masks are read as values (``label_map``), colours (``color_map``) or thresholded grey
(``mask_threshold``); see ``vadapt.data.io.MaskDecoder``. Example (Kvasir-SEG, JPEG masks, grey > 127 = polyp)::

    data:
      class_path: vadapt.data.FolderSegmentationDataModule
      init_args:
        root: ../shared/data/kvasir_seg
        train_images: train/images/*.jpg
        train_masks: train/masks/{stem}.jpg
        val_images: val/images/*.jpg
        val_masks: val/masks/{stem}.jpg
        mask_threshold: 127
        train_size: 256

and colour-coded masks where black is background and every other colour is road::

        train_images: images/*.tif
        train_masks: masks/{stem}.tif
        mask_stem_replace: {"DH_1940_Clipped_": "GT_colored_"}
        color_map: {"0,0,0": 0}
        other_class: 1
        val_fraction: 0.2
"""

from __future__ import annotations

from typing import Literal

import numpy as np

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
    find_images,
    pair_masks,
    resolve_root,
    run_parallel,
    train_transform,
)
from .io import BandReader, DataError, MaskDecoder, MaskReader, NodataOption


def split_off(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic (seeded) split into (kept, held-out ``fraction``, at least one item)."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {fraction}")
    if len(items) < 2:
        raise DataError(f"val_fraction needs at least 2 training images to hold some out, found {len(items)}")
    n_val = min(max(1, int(round(len(items) * fraction))), len(items) - 1)
    order = np.random.default_rng(seed).permutation(len(items))
    held = set(order[:n_val].tolist())
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


class FolderSegmentationDataModule(SegmentationDataModule):
    """Image/mask folders with glob patterns per split; random-crop (or resize) training, full-size validation.

    Batches: ``image`` float32 ``(B, len(bands), H, W)`` raw values (times ``scale``), ``mask`` int64
    ``(B, H, W)`` with ``ignore_index`` where unknown. Training items are ``train_size`` crops or resizes
    with flips (same geometry for image and mask). Validation and test items are full-size by default
    (``val_size: null``): images of different sizes in one batch are padded bottom/right to the largest, the
    padding has mask ``ignore_index`` (set the task's ``ignore_index`` to the same value), so metrics cover
    exactly the original pixels; set ``val_size`` to resize them instead (the masks too, nearest neighbour).
    """

    def __init__(
        self,
        root: str,
        train_images: str | list[str],
        train_masks: str | list[str],
        val_images: str | list[str] | None = None,
        val_masks: str | list[str] | None = None,
        test_images: str | list[str] | None = None,
        test_masks: str | list[str] | None = None,
        mask_stem_replace: dict[str, str] | None = None,
        val_fraction: float = 0.0,
        bands: tuple[str, ...] = RGB,
        file_bands: list[str] | None = None,
        scale: float = 1.0,
        offset: float = 0.0,
        nodata: NodataOption = "file",
        nodata_rule: Literal["all", "any"] = "all",
        label_map: dict[int, int] | None = None,
        color_map: dict[str, int] | None = None,
        mask_threshold: float | None = None,
        other_class: int | None = None,
        num_classes: int | None = None,
        ignore_index: int = 255,
        train_size: Size | None = 256,
        train_mode: Literal["random_crop", "resize"] = "random_crop",
        scale_range: tuple[float, float] | None = None,
        val_size: Size | None = None,
        augment: tuple[Augment, ...] = ("hflip", "vflip"),
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        check_files: bool = True,
        seed: int = 0,
    ) -> None:
        """
        Args:
            root: data folder; patterns and templates are relative to it (relative roots to the working dir).
            train_images: glob pattern(s) of the training images, e.g. ``train/images/*.jpg`` (``**`` recurses).
            train_masks: mask path template with ``{stem}`` (image file name without suffix, after
                ``mask_stem_replace``), ``{name}``, ``{suffix}`` (``.jpg``) or ``{parent}`` (the image's folder
                name), e.g. ``train/masks/{stem}.png``; or a list of mask files in the images' (sorted) order.
            val_images, val_masks, test_images, test_masks: the same for validation / test (optional).
            mask_stem_replace: substring replacements turning an image stem into its mask stem,
                e.g. ``{"_leftImg8bit": "_gtFine_labelIds"}``.
            val_fraction: without ``val_images``, hold out this share of the training images (seeded by ``seed``).
            bands: bands fed to the model, by name (must match the task's ``bands``); photos are ``red, green,
                blue`` (grey / palette photos are converted to RGB).
            file_bands: band names of files that do not name their bands (``.npy``, GeoTIFFs without
                descriptions); checked against the files' own names when they have them.
            scale: multiplied into the image values, e.g. ``0.00392156862745098`` (1/255) to feed 8-bit photos in
                [0, 1] as the backbones' default (pretraining) ``mean``/``std`` expect. Default 1: raw values.
                Recorded in the adapter checkpoint: ``vadapt infer`` applies it to raw files by itself.
            offset: added after ``scale`` (e.g. -0.1 for Sentinel-2 L2A from processing baseline 04.00); recorded
                like ``scale``.
            nodata: ``"file"`` (each file's nodata value), a number, or null; NaN is always nodata. Nodata
                pixels get mask ``ignore_index`` and image value 0.
            nodata_rule: a pixel is nodata when ``"all"`` (default, as GDAL) or ``"any"`` of its bands are.
            label_map: mask value -> class id (values not listed are an error unless ``other_class``).
            color_map: mask colour ``"R,G,B"`` (or ``"#rrggbb"``) -> class id, for colour-coded masks.
            mask_threshold: grey mask value ``> mask_threshold`` is class 1, else 0 (e.g. 127 for JPEG masks).
            other_class: class id for mask values/colours outside the mapping (``ignore_index`` to ignore them);
                null makes them an error listing the values and the file.
            num_classes: when set, mask class ids must lie in ``0..num_classes - 1`` (or be ``ignore_index``).
            ignore_index: mask value for unknown pixels; set the task's ``ignore_index`` to the same value.
            train_size: training item size, ``S`` or ``[H, W]``; null keeps the full image (needs equal sizes or
                padding in the batch).
            train_mode: ``random_crop`` (padded where the image is smaller) or ``resize`` (whole image).
            scale_range: random rescale ``[low, high]`` before cropping (e.g. ``[0.5, 2.0]``); null: none.
            val_size: null = full size (padded per batch, see the class docs), or with ``train_mode: resize``
                the ``train_size`` (as prediction will resize); ``S`` / ``[H, W]`` to resize to that size.
            augment: training augmentations: flips / rotations among ``hflip``, ``vflip``, ``rot90`` (square sizes
                only), and the photometric ``band_gain``, ``gamma``, ``haze``, ``blur`` for models that must
                work on other sensors or places (``docs/travel.md``).
            batch_size, val_batch_size, num_workers: data loader settings (``val_batch_size`` defaults to
                ``batch_size``).
            check_files: in ``setup``, decode every image and mask once (threads), so corrupt files and
                unexpected mask values stop the run before training; false checks only names, headers, sizes.
            seed: seed of the ``val_fraction`` split.
        """
        super().__init__()
        # logger=False: Lightning refuses to log when a datamodule and the task share a key (num_classes,
        # ignore_index) with different values; LightningCLI saves the whole config.yaml anyway
        self.save_hyperparameters(logger=False)
        self.root = resolve_root(root)
        if (val_images is None) != (val_masks is None):
            raise DataError("val_images and val_masks go together: set both or neither")
        if (test_images is None) != (test_masks is None):
            raise DataError("test_images and test_masks go together: set both or neither")
        if val_images is not None and val_fraction:
            raise DataError("set either val_images or val_fraction, not both")
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.train_size = as_size(train_size, "train_size")
        self.val_size = as_size(val_size, "val_size")
        if self.val_size is None and train_mode == "resize":
            self.val_size = self.train_size  # validate the way the model will predict: whole images resized
        self.ignore_index, self.check_files = ignore_index, check_files
        self.loader = SampleLoader(
            BandReader(bands, file_bands, scale, nodata, nodata_rule, offset=offset),
            MaskReader(MaskDecoder(label_map, color_map, mask_threshold, other_class, num_classes, ignore_index)),
        )
        self.train_tf = train_transform(self.train_size, train_mode, augment, scale_range, ignore_index)
        self.eval_tf = eval_transform(self.val_size)
        self._pairs_cache: dict[str, list] = {}

    def has_split(self, split: str) -> bool:
        hp = self.hparams
        return split == "train" or hp.get(f"{split}_images") is not None or (split == "val" and hp.val_fraction > 0)

    def _pairs(self, split: str) -> list:
        if split not in self._pairs_cache:
            hp = self.hparams
            if split in ("train", "val") and hp.val_fraction > 0:
                pairs = self._find("train")
                self._pairs_cache["train"], self._pairs_cache["val"] = split_off(pairs, hp.val_fraction, hp.seed)
            else:
                self._pairs_cache[split] = self._find(split)
        return self._pairs_cache[split]

    def _find(self, split: str) -> list:
        hp = self.hparams
        images = find_images(self.root, hp[f"{split}_images"], f"{split}_images")
        return pair_masks(self.root, images, hp[f"{split}_masks"], f"{split}_masks", hp.mask_stem_replace)

    def discover(self, split: str) -> list[Sample]:
        return run_parallel(lambda pair: self.loader.describe(*pair), self._pairs(split))

    def make_dataset(self, split: str, samples: list[Sample]) -> FileDataset:
        return FileDataset(samples, self.loader, self.train_tf if split == "train" else self.eval_tf)
