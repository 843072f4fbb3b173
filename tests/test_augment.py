"""Training augmentations by name (vadapt.data.augment): photometric "travel" entries change the image only, keep
float32 (H, W, C) for any band count and value scale, repeat with the torch seed; the pipeline's draws are
independent; the datamodules take the new entries."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import get_args

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image

from vadapt.data import FolderSegmentationDataModule, RasterSegmentationDataModule
from vadapt.data.augment import AUGMENTATIONS, PHOTOMETRIC, BandGain, BandGamma, Blur, Haze
from vadapt.data.base import Augment, augment_pair, train_transform
from vadapt.data.change import ChangeDetectionDataModule
from vadapt.data.io import DataError

pytestmark = pytest.mark.usefixtures("one_thread")

NEW = ["band_gain", "gamma", "haze", "blur"]
SIX = ["B02", "B03", "B04", "B08", "B11", "B12"]
ALWAYS = {"band_gain": lambda: BandGain(p=1.0), "gamma": lambda: BandGamma(p=1.0), "haze": lambda: Haze(p=1.0),
          "blur": lambda: Blur(p=1.0)}


def reflectance(bands: int = 6, size: int = 24, seed: int = 0) -> np.ndarray:
    """Smooth-ish float32 ``(size, size, bands)`` image with values ~0-0.6, a different level per band."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    base = 0.3 + 0.2 * np.sin(6 * yy) * np.cos(4 * xx)
    img = base[..., None] * np.linspace(0.6, 1.0, bands) + 0.05 * rng.random((size, size, bands))
    return img.astype(np.float32)


def pipeline(names: list[str]):
    return train_transform(None, "random_crop", names, None, 255)


# ---- each entry ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NEW)
def test_each_entry_changes_the_image_but_never_the_mask(name):
    image = reflectance()
    mask = np.random.default_rng(1).integers(0, 3, image.shape[:2])
    mask[:3] = 255
    transform, changed = pipeline([name]), 0
    torch.manual_seed(0)
    for _ in range(20):  # p < 1: some draws leave the image alone
        out, out_mask = augment_pair(transform, image.copy(), mask)
        assert out.dtype == np.float32 and out.shape == image.shape and np.isfinite(out).all()
        assert out_mask.shape == mask.shape and np.array_equal(out_mask, mask)
        changed += int(not np.array_equal(out, image))
    assert 0 < changed < 20


@pytest.mark.parametrize("bands", [1, 3, 13])
@pytest.mark.parametrize("name", NEW)
def test_any_band_count_and_value_scale(name, bands):
    for scale in (1.0, 10000.0):  # reflectance and raw digital numbers: nothing is clipped to [0, 1]
        image = reflectance(bands) * scale
        image[:4, :4] = 0.0  # nodata: 0 in every band
        out = ALWAYS[name]()(image=image)["image"]
        assert out.dtype == np.float32 and out.shape == image.shape and np.isfinite(out).all()
        assert not np.array_equal(out, image)
        assert (out[:4, :4] == 0).all()
        assert out.max() > 0.5 * image.max() and np.abs(out - image).mean() < 0.5 * image.mean()
    two_d = reflectance(1)[..., 0]
    assert ALWAYS[name]()(image=two_d)["image"].shape == two_d.shape


def test_gamma_keeps_zeros_and_negatives_and_is_monotone_per_band():
    image = reflectance(6) * np.array([1, 2, 5, 10, 100, 1000], dtype=np.float32)  # a different scale per band
    image[0, :6] = 0.0
    image[1, :3] = -0.05
    for seed in range(5):
        gamma = BandGamma(p=1.0)
        gamma.set_random_seed(seed)
        out = gamma(image=image)["image"]
        assert out.dtype == np.float32 and not np.allclose(out, image)
        assert (out[0, :6] == 0).all() and np.array_equal(out[1, :3], image[1, :3])
        for b in range(image.shape[-1]):
            order = np.argsort(image[..., b], axis=None, kind="stable")
            assert (np.diff(out[..., b].ravel()[order]) >= 0).all(), f"band {b} not monotone (seed {seed})"


def test_band_gain_scales_bands_by_different_factors():
    image = reflectance(6)
    gain = BandGain(offset=0.0, p=1.0)
    gain.set_random_seed(3)
    ratio = gain(image=image)["image"] / image
    per_band = ratio.reshape(-1, 6).mean(0)
    np.testing.assert_allclose(ratio, np.broadcast_to(per_band, ratio.shape), rtol=1e-5)  # one factor per band
    assert ((0.8 <= per_band) & (per_band <= 1.2)).all()
    assert len(np.unique(per_band.round(4))) == 6
    with_offset = BandGain(p=1.0)  # default +-2 % offsets of the robust range on top
    with_offset.set_random_seed(3)
    shift = with_offset(image=image)["image"] - image * per_band
    top = np.percentile(image.reshape(-1, 6), 98, axis=0)
    assert (np.abs(shift.reshape(-1, 6)).max(0) <= 0.02 * top + 1e-6).all() and np.abs(shift).max() > 0


def test_haze_pulls_values_towards_a_bright_level():
    image = reflectance(6)
    haze = Haze(strength=(0.3, 0.3), p=1.0)
    out = haze(image=image)["image"]
    airlight = np.percentile(image.reshape(-1, 6), 99, axis=0)
    np.testing.assert_allclose(out, 0.7 * image + 0.3 * airlight, rtol=1e-5)
    assert out.std() < image.std() and out.mean() > image.mean()


# ---- the pipeline ----------------------------------------------------------------------------------------------
def test_seeded_pipeline_repeats_and_varies():
    image, mask = reflectance(6, size=32), np.zeros((32, 32), dtype=np.int64)
    transform = train_transform((24, 24), "random_crop", ["hflip", "vflip", "rot90", *NEW], None, 255)
    outs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        outs.append([augment_pair(transform, image, mask)[0] for _ in range(2)])
    for a, b in zip(outs[0], outs[1]):
        assert np.array_equal(a, b)
    assert not np.array_equal(outs[0][0], outs[0][1])  # successive items differ
    assert not all(np.array_equal(a, c) for a, c in zip(outs[0], outs[2]))


def test_transforms_of_a_pipeline_draw_independently():
    """albumentations seeds every child of a Compose with the same seed: hflip and vflip then always agree."""
    image = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    outcomes = {"none": image, "h": image[:, ::-1], "v": image[::-1], "both": image[::-1, ::-1]}
    transform, seen = pipeline(["hflip", "vflip"]), Counter()
    torch.manual_seed(0)
    for _ in range(64):
        out, _ = augment_pair(transform, image, np.zeros((4, 4), dtype=np.int64))
        seen.update(k for k, v in outcomes.items() if np.array_equal(out, v))
    assert set(seen) == set(outcomes)
    seen.clear()
    for seed in range(64):  # change detection re-seeds the pipeline with set_random_seed itself
        transform.set_random_seed(seed)
        out = transform(image=image)["image"]
        seen.update(k for k, v in outcomes.items() if np.array_equal(out, v))
    assert set(seen) == set(outcomes)


def test_unknown_entries_are_data_errors_naming_the_valid_choices(tmp_path):
    valid = r"\['band_gain', 'blur', 'gamma', 'haze', 'hflip', 'rot90', 'vflip'\]"
    with pytest.raises(DataError, match=rf"augment has unknown entries \['fog'\]; choose from {valid}"):
        pipeline(["hflip", "fog"])
    folder = write_folder(tmp_path)
    with pytest.raises(DataError, match=r"unknown entries \['Gamma'\]"):
        FolderSegmentationDataModule(**folder_args(folder, augment=["Gamma"]))


def test_the_augment_literal_lists_every_entry():
    assert set(get_args(Augment)) == set(AUGMENTATIONS)
    assert set(PHOTOMETRIC) == set(NEW)
    assert all(isinstance(AUGMENTATIONS[n](), A.ImageOnlyTransform) for n in NEW)


# ---- datamodules -----------------------------------------------------------------------------------------------
def write_folder(root: Path) -> Path:
    """4 six-band float32 ``.npy`` images (values ~0-0.6) with 0/1 ``.npy`` masks."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(4):
        image = reflectance(6, size=20 + 4 * i, seed=i)
        np.save(root / "images" / f"t{i}.npy", image)
        np.save(root / "masks" / f"t{i}.npy", (image[..., 3] > 0.35).astype(np.uint8))
    return root


def folder_args(root: Path, **kwargs) -> dict:
    args = dict(root=str(root), train_images="images/*.npy", train_masks="masks/{stem}.npy", file_bands=SIX,
                bands=SIX, num_classes=2, train_size=16, batch_size=4)
    return {**args, **kwargs}


def test_folder_datamodule_trains_with_travel_augmentations(tmp_path):
    dm = FolderSegmentationDataModule(**folder_args(write_folder(tmp_path),
                                                    augment=["hflip", "band_gain", "gamma", "haze", "blur"]))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 6, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 16, 16) and set(batch["mask"].unique().tolist()) <= {0, 1}
    assert torch.isfinite(batch["image"]).all()


def test_raster_windows_take_travel_augmentations(tmp_path):
    root = write_folder(tmp_path)
    dm = RasterSegmentationDataModule(root=str(root), train_images="images/*.npy", train_masks="masks/{stem}.npy",
                                      file_bands=SIX, bands=SIX, num_classes=2, crop_size=16, samples_per_epoch=4,
                                      batch_size=4, augment=["rot90", *NEW])
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 6, 16, 16) and torch.isfinite(batch["image"]).all()


def test_change_detection_photometric_entries_keep_the_label(tmp_path):
    rng = np.random.default_rng(0)
    labels = {}
    for folder in ("A", "B", "label"):
        (tmp_path / folder).mkdir()
    for i in range(2):
        a = rng.integers(40, 200, (24, 24, 3), dtype=np.uint8)
        b, label = a.copy(), np.zeros((24, 24), np.uint8)
        b[4:12, 6:14], label[4:12, 6:14] = 255, 255
        for folder, array in (("A", a), ("B", b), ("label", label)):
            Image.fromarray(array).save(tmp_path / folder / f"p{i}.png")
        labels[f"p{i}.png"] = (label > 0).astype(np.int64)
    data = ChangeDetectionDataModule(str(tmp_path), train_images="*.png", scale=1 / 255, train_size=None,
                                     augment=NEW)
    data.setup("fit")
    dataset = data.datasets["train"]
    changed = 0
    torch.manual_seed(0)
    for _ in range(6):
        for i in range(len(dataset)):
            item = dataset[i]
            raw_a = np.asarray(Image.open(tmp_path / "A" / item["name"]), dtype=np.float32) / 255
            assert np.array_equal(item["mask"].numpy(), labels[item["name"]])
            assert item["image_a"].shape == item["image_b"].shape == (3, 24, 24)
            changed += int(not np.allclose(item["image_a"].numpy(), raw_a.transpose(2, 0, 1)))
    assert changed > 0
