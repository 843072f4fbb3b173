"""Segmentation datamodules: folders, mmseg layout, multi-band rasters, band statistics, bad input.

All data is small, synthetic and written by the tests into tmp_path; the tests on the real data sets in
``../shared/data`` skip when it is absent.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, SHARED
from PIL import Image

from vadapt.data import (
    FolderSegmentationDataModule,
    MMSegDataModule,
    RasterSegmentationDataModule,
    SceneDataModule,
)
from vadapt.data import io as data_io
from vadapt.data.io import DataError, find_data_error
from vadapt.data.stats import compute_band_stats, datamodule_from_config, format_stats_yaml, print_band_stats

rasterio = pytest.importorskip("rasterio")

S2 = ["B02", "B03", "B04", "B08", "B11"]  # blue, green, red, nir, swir16


def batches(loader):
    return list(iter(loader))


def save(path, array, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def write_tif(path, bands_first, descriptions=None, nodata=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    count, h, w = bands_first.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=count, dtype=bands_first.dtype,
                           nodata=nodata) as dst:
            dst.write(bands_first)
            if descriptions:
                dst.descriptions = tuple(descriptions)
    return path


@pytest.fixture
def png_folder(tmp_path):
    """4 RGB PNGs of different sizes whose red channel is 100 * class, masks 0 / 255 / 200 coded."""
    rng = np.random.default_rng(1)
    sizes = [(40, 52), (64, 48), (20, 22), (50, 60)]
    images, masks = [], []
    for i, (h, w) in enumerate(sizes):
        cls = rng.integers(0, 3, (h, w))
        img = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        img[..., 0] = 100 * cls
        code = np.array([0, 255, 200], dtype=np.uint8)[cls]
        save(tmp_path / "images" / f"im{i}.png", img)
        save(tmp_path / "masks" / f"im{i}_mask.png", code)
        images.append(img)
        masks.append(cls)
    return tmp_path, images, masks


def folder(root, **kwargs):
    args = dict(root=str(root), train_images="images/*.png", train_masks="masks/{stem}_mask.png",
                val_images="images/*.png", val_masks="masks/{stem}_mask.png", label_map={0: 0, 255: 1, 200: 2},
                train_size=32, batch_size=2, augment=())
    args.update(kwargs)
    return FolderSegmentationDataModule(**args)


# ---------------------------------------------------------------------------------------------- folders


def test_folder_batches_are_raw_float_images_and_long_masks(png_folder):
    root, images, masks = png_folder
    dm = folder(root)
    dm.setup("fit")
    train = batches(dm.train_dataloader())
    assert len(train) == 2
    for b in train:
        assert b["image"].shape == (2, 3, 32, 32) and b["image"].dtype == torch.float32
        assert b["mask"].shape == (2, 32, 32) and b["mask"].dtype == torch.int64
        assert set(b["mask"].unique().tolist()) <= {0, 1, 2, 255}
        assert b["image"].max() > 1 and torch.equal(b["image"], b["image"].round())  # raw 0..255 values
    # validation: full size, sorted order, padded bottom/right to the largest in the batch with ignore_index
    first = batches(dm.val_dataloader())[0]
    assert first["image"].shape == (2, 3, 64, 52)
    np.testing.assert_array_equal(first["image"][0, :, :40, :52].numpy(), images[0].transpose(2, 0, 1))
    np.testing.assert_array_equal(first["mask"][0, :40, :52].numpy(), masks[0])
    assert (first["mask"][0, 40:] == 255).all() and (first["image"][0, :, 40:] == 0).all()
    np.testing.assert_array_equal(first["mask"][1, :64, :48].numpy(), masks[1])
    assert (first["mask"][1, :, 48:] == 255).all()


def test_folder_sizes_scale_and_resize(png_folder):
    root, images, _ = png_folder
    dm = folder(root, train_size=[24, 40], train_mode="resize", val_size=16, scale=1 / 255, batch_size=4)
    dm.setup("fit")
    train = batches(dm.train_dataloader())[0]
    assert train["image"].shape == (4, 3, 24, 40) and 0 <= train["image"].min() and train["image"].max() <= 1
    val = batches(dm.val_dataloader())[0]
    assert val["image"].shape == (4, 3, 16, 16) and val["mask"].shape == (4, 16, 16)
    assert set(val["mask"].unique().tolist()) <= {0, 1, 2}  # nearest-neighbour: only real classes
    dm = folder(root, val_images=None, val_masks=None, val_fraction=0.5, seed=3, train_size=None, batch_size=1)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 2 and len(dm.datasets["val"]) == 2
    assert folder(root, val_images=None, val_masks=None).val_dataloader() == []


def test_masks_next_to_their_images_are_not_taken_for_images(tmp_path):
    for name in ("a", "b"):
        save(tmp_path / f"{name}.png", np.zeros((8, 8, 3), dtype=np.uint8))
        save(tmp_path / f"{name}_mask.png", np.zeros((8, 8), dtype=np.uint8))
    dm = FolderSegmentationDataModule(root=str(tmp_path), train_images="*.png", train_masks="{stem}_mask.png",
                                      num_classes=2)
    assert [(s.image.path, s.mask.path) for s in dm.samples("train")] == [
        (str(tmp_path / f"{n}.png"), str(tmp_path / f"{n}_mask.png")) for n in ("a", "b")]


def test_augmentation_is_identical_on_image_and_mask(png_folder):
    root, _, _ = png_folder
    dm = folder(root, train_size=24, augment=("hflip", "vflip", "rot90"), batch_size=4)
    dm.setup("fit")
    seen = 0
    for _ in range(10):
        for b in dm.train_dataloader():
            labelled = b["mask"] != 255
            # the red channel is 100 * class wherever the mask is known, whatever crop/flip/rotation happened
            assert torch.equal(b["image"][:, 0][labelled], 100.0 * b["mask"][labelled])
            assert (b["image"].permute(1, 0, 2, 3)[:, ~labelled] == 0).all()  # padding of the 20x22 image
            seen += int(labelled.sum())
    assert seen > 0


def test_augmentation_with_random_scale_keeps_masks_valid(png_folder):
    root, _, _ = png_folder
    dm = folder(root, train_size=32, scale_range=(0.5, 2.0), augment=("hflip",), batch_size=4)
    dm.setup("fit")
    for b in dm.train_dataloader():
        assert b["image"].shape == (4, 3, 32, 32)
        assert set(b["mask"].unique().tolist()) <= {0, 1, 2, 255}  # nearest neighbour, no blended classes


def test_jpeg_masks_with_threshold(tmp_path):
    yy, xx = np.mgrid[:48, :64]
    disk = ((yy - 24) ** 2 + (xx - 30) ** 2 < 15**2).astype(np.uint8) * 255
    rng = np.random.default_rng(0)
    for i in range(2):
        save(tmp_path / "train/images" / f"{i}.jpg", rng.integers(0, 256, (48, 64, 3)).astype(np.uint8))
        save(tmp_path / "train/masks" / f"{i}.jpg", disk, quality=70)
    dm = FolderSegmentationDataModule(root=str(tmp_path), train_images="train/images/*.jpg",
                                      train_masks="train/masks/{stem}.jpg", val_images="train/images/*.jpg",
                                      val_masks="train/masks/{stem}.jpg", mask_threshold=127, batch_size=2)
    dm.setup("fit")
    raw = np.asarray(Image.open(tmp_path / "train/masks/0.jpg"))
    assert len(np.unique(raw)) > 2  # JPEG artefacts
    val = batches(dm.val_dataloader())[0]
    np.testing.assert_array_equal(val["mask"][0].numpy(), (raw > 127).astype(np.int64))
    assert set(val["mask"].unique().tolist()) == {0, 1}


def test_colour_masks_map_colours_alpha_and_other_colours(tmp_path):
    rgba = np.zeros((30, 40, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[2:10, 2:10, :3] = (255, 0, 0)
    rgba[12:20, 5:25, :3] = (0, 255, 0)
    rgba[22:26, 30:38, :3] = (0, 0, 255)  # a colour the mapping does not name
    rgba[:, 39, 3] = 0  # transparent column
    save(tmp_path / "img/a.png", np.full((30, 40, 3), 9, dtype=np.uint8))
    save(tmp_path / "lab/a.png", rgba)
    common = dict(root=str(tmp_path), train_images="img/*.png", train_masks="lab/{stem}.png",
                  val_images="img/*.png", val_masks="lab/{stem}.png", batch_size=1)
    dm = FolderSegmentationDataModule(color_map={"0,0,0": 0, "#ff0000": 1, "(0, 255, 0)": 2}, other_class=255,
                                      **common)
    dm.setup("fit")
    mask = batches(dm.val_dataloader())[0]["mask"][0].numpy()
    expected = np.zeros((30, 40), dtype=np.int64)
    expected[2:10, 2:10], expected[12:20, 5:25], expected[22:26, 30:38], expected[:, 39] = 1, 2, 255, 255
    np.testing.assert_array_equal(mask, expected)
    # "any non-black is class 1"
    dm = FolderSegmentationDataModule(color_map={"0,0,0": 0}, other_class=1, **common)
    dm.setup("fit")
    mask = batches(dm.val_dataloader())[0]["mask"][0].numpy()
    assert set(np.unique(mask[:, :39]).tolist()) == {0, 1} and (mask[22:26, 30:38] == 1).all()
    with pytest.raises(DataError, match=r"lab/a\.png has colours \(0, 0, 255\) outside color_map") as err:
        FolderSegmentationDataModule(color_map={"0,0,0": 0, "#ff0000": 1, "0,255,0": 2}, **common).setup("fit")
    assert "\n" not in str(err.value)


def test_masks_paired_by_stem_replacement_and_geotiff_rgba_images(tmp_path):
    for key in ("013_085", "016_177"):
        rgba = np.full((4, 16, 16), 255, dtype=np.uint8)
        rgba[:3] = np.random.default_rng(0).integers(0, 255, (3, 16, 16))
        path = write_tif(tmp_path / "images" / f"DH_1940_Clipped_{key}.tif", rgba, nodata=255)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with rasterio.open(path, "r+") as dst:
                dst.colorinterp = [rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.green,
                                   rasterio.enums.ColorInterp.blue, rasterio.enums.ColorInterp.alpha]
        colour = np.zeros((3, 16, 16), dtype=np.uint8)
        colour[:, 4:8] = np.array([77, 255, 0], dtype=np.uint8)[:, None, None]
        write_tif(tmp_path / "masks" / f"GT_colored_{key}.tif", colour)
    dm = FolderSegmentationDataModule(root=str(tmp_path), train_images="images/*.tif", train_masks="masks/{stem}.tif",
                                      mask_stem_replace={"DH_1940_Clipped_": "GT_colored_"},
                                      color_map={"0,0,0": 0}, other_class=1, train_size=16, batch_size=2)
    dm.setup("fit")
    b = batches(dm.train_dataloader())[0]
    assert b["image"].shape == (2, 3, 16, 16)  # red, green, blue of the RGBA file; alpha dropped
    assert set(b["mask"].unique().tolist()) == {0, 1}


# ------------------------------------------------------------------------------------------------ mmseg


@pytest.fixture
def mmseg_root(tmp_path):
    rng = np.random.default_rng(2)
    masks = {}
    for split, names in (("train", ["b", "a", "sub/c"]), ("val", ["v"])):
        for name in names:
            save(tmp_path / "img_dir" / split / f"{name}.jpg", rng.integers(0, 256, (24, 20, 3)).astype(np.uint8))
            mask = rng.choice(np.array([0, 1, 2, 3, 255], dtype=np.uint8), (24, 20))
            save(tmp_path / "ann_dir" / split / f"{name}.png", mask)
            masks[f"{split}/{name}"] = mask
    return tmp_path, masks


def mmseg_reduce_zero_label(mask: np.ndarray) -> np.ndarray:
    """mmseg 1.x ``LoadAnnotations._load_seg_map`` with ``reduce_zero_label=True``, verbatim."""
    gt_semantic_seg = mask.astype(np.uint8).copy()
    gt_semantic_seg[gt_semantic_seg == 0] = 255
    gt_semantic_seg = gt_semantic_seg - 1
    gt_semantic_seg[gt_semantic_seg == 254] = 255
    return gt_semantic_seg


def test_mmseg_layout_and_reduce_zero_label(mmseg_root):
    root, masks = mmseg_root
    dm = MMSegDataModule(data_root=str(root), reduce_zero_label=True, num_classes=3, train_size=16, batch_size=3,
                         val_batch_size=1)
    dm.setup("fit")
    assert [s.image.path for s in dm.samples("train")] == [
        str(root / "img_dir/train" / n) for n in ("a.jpg", "b.jpg", "sub/c.jpg")]
    assert [s.mask.path for s in dm.samples("train")][2] == str(root / "ann_dir/train/sub/c.png")
    val = batches(dm.val_dataloader())[0]
    assert val["image"].shape == (1, 3, 24, 20)
    np.testing.assert_array_equal(val["mask"][0].numpy(), mmseg_reduce_zero_label(masks["val/v"]))
    train = batches(dm.train_dataloader())[0]
    assert train["image"].shape == (3, 3, 16, 16) and set(train["mask"].unique().tolist()) <= {0, 1, 2, 255}
    # without reduce_zero_label the values are the classes; 255 stays ignore
    dm = MMSegDataModule(data_root=str(root), num_classes=4, batch_size=1)
    dm.setup("validate")
    np.testing.assert_array_equal(batches(dm.val_dataloader())[0]["mask"][0].numpy(), masks["val/v"])
    # ann_file: listed names in the listed order
    (root / "train.txt").write_text("sub/c\nb\n")
    dm = MMSegDataModule(data_root=str(root), train_ann_file="train.txt", val_img_path=None, val_seg_map_path=None)
    assert [s.image.path for s in dm.samples("train")] == [str(root / "img_dir/train/sub/c.jpg"),
                                                          str(root / "img_dir/train/b.jpg")]
    assert dm.val_dataloader() == []


def test_mmseg_file_list_equals_mmseg(mmseg_root):
    root, _ = mmseg_root
    base = _mmseg_base_dataset()
    ours = MMSegDataModule(data_root=str(root), check_files=False).samples("train")
    ref = base(data_root=str(root), data_prefix=dict(img_path="img_dir/train", seg_map_path="ann_dir/train"),
               img_suffix=".jpg", seg_map_suffix=".png", lazy_init=True).load_data_list()
    assert [(s.image.path, s.mask.path) for s in ours] == [(d["img_path"], d["seg_map_path"]) for d in ref]


def _mmseg_base_dataset():
    """mmseg's ``BaseSegDataset`` loaded from its file (the package import needs compiled mmcv ops)."""
    import importlib.util

    mmseg = pytest.importorskip("mmseg", reason="mmsegmentation is not installed")
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("_mmseg_basesegdataset",
                                                  Path(mmseg.__file__).parent / "datasets/basesegdataset.py")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"mmseg's BaseSegDataset cannot be loaded here: {exc}")
    return module.BaseSegDataset


def test_mmseg_palette_masks_and_grey_images(tmp_path):
    pal = Image.fromarray(np.array([[0, 1], [2, 1]], dtype=np.uint8).repeat(8, 0).repeat(8, 1), mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    (tmp_path / "ann_dir/train").mkdir(parents=True)
    pal.save(tmp_path / "ann_dir/train/x.png")
    save(tmp_path / "img_dir/train/x.jpg", np.full((16, 16), 77, dtype=np.uint8))  # grey JPEG
    dm = MMSegDataModule(data_root=str(tmp_path), val_img_path="img_dir/train", val_seg_map_path="ann_dir/train",
                         num_classes=3, batch_size=1)
    dm.setup("fit")
    b = batches(dm.val_dataloader())[0]
    assert b["image"].shape == (1, 3, 16, 16)  # converted to RGB as mmseg's colour loading does
    np.testing.assert_array_equal(b["mask"][0].numpy(), np.asarray(pal))


# ----------------------------------------------------------------------------------------------- rasters


@pytest.fixture
def geotiff_scenes(tmp_path):
    """Two 5-band int16 scenes with band descriptions and nodata -9999, masks with codes 1..3 (0 = nodata)."""
    rng = np.random.default_rng(3)
    scenes = []
    for i, (h, w) in enumerate([(70, 90), (64, 64)]):
        img = rng.integers(0, 10000, (5, h, w)).astype(np.int16)
        img[:, :10, :15] = -9999  # nodata block
        img[2, 30, 30] = -9999  # one band only: valid under nodata_rule "all"
        code = rng.integers(1, 4, (h, w)).astype(np.uint8)
        code[40:44, 50:54] = 0
        write_tif(tmp_path / "scenes" / f"s{i}.tif", img, S2, nodata=-9999)
        write_tif(tmp_path / "labels" / f"s{i}_mask.tif", code[None], nodata=0)
        scenes.append((img, code))
    return tmp_path, scenes


def expected_scene(img, code, order=(2, 3, 0), scale=1e-4, rule="all"):
    """numpy reference: selected bands (red, nir, blue), nodata -> 0 / ignore, codes 1..3 -> 0..2."""
    sel = img[list(order)].astype(np.float64)
    hits = sel == -9999
    nodata = hits.all(0) if rule == "all" else hits.any(0)
    image = (sel * scale).astype(np.float32)
    image[:, nodata] = 0
    mask = np.where((code == 0) | nodata, 255, code.astype(np.int64) - 1)
    return image, mask, nodata


def raster(root, **kwargs):
    args = dict(root=str(root), train_images="scenes/*.tif", train_masks="labels/{stem}_mask.tif",
                bands=["red", "nir", "blue"], scale=1e-4, label_map={1: 0, 2: 1, 3: 2}, crop_size=32,
                samples_per_epoch=8, val_fraction=0.25, batch_size=4)
    args.update(kwargs)
    return RasterSegmentationDataModule(**args)


def test_geotiff_bands_by_description_nodata_and_val_tiles(geotiff_scenes):
    root, scenes = geotiff_scenes
    dm = raster(root)
    dm.setup("fit")
    tiles = dm.datasets["val"]
    assert len(tiles) > 0
    for k in range(len(tiles)):
        s, y, x, h, w = tiles.items[k]
        image, mask, _ = expected_scene(*scenes[s])
        item = tiles[k]
        assert item["image"].shape == (3, 32, 32) and item["mask"].dtype == torch.int64
        np.testing.assert_allclose(item["image"][:, :h, :w].numpy(), image[:, y : y + h, x : x + w], rtol=1e-6)
        np.testing.assert_array_equal(item["mask"][:h, :w].numpy(), mask[y : y + h, x : x + w])
        assert y >= int(round(scenes[s][0].shape[1] * 0.75))  # held-out bottom rows only
    # rule "any": the pixel with one nodata band is ignored too
    dm_any = raster(root, nodata_rule="any", val_fraction=0.0, val_images="scenes/s0.tif",
                    val_masks="labels/{stem}_mask.tif", crop_size=64)
    dm_any.setup("validate")
    item = dm_any.datasets["val"][0]
    assert item["mask"][30, 30] == 255 and dm.loader.load(dm.samples("train")[0], (30, 30, 1, 1))[1][0, 0] != 255


def test_geotiff_training_reads_windows_not_whole_scenes(geotiff_scenes, monkeypatch):
    root, _ = geotiff_scenes
    dm = raster(root, augment=("hflip", "vflip", "rot90"))
    dm.setup("fit")
    windows = []
    original = data_io.read_raw

    def spy(info, window=None, indexes=None, role="image"):
        windows.append((info.kind, window))
        return original(info, window, indexes, role)

    monkeypatch.setattr(data_io, "read_raw", spy)
    b = batches(dm.train_dataloader())[0]
    assert b["image"].shape == (4, 3, 32, 32) and b["mask"].shape == (4, 32, 32)
    assert windows and all(kind == "gdal" and window[2:] == (32, 32) for kind, window in windows)
    assert set(b["mask"].unique().tolist()) <= {0, 1, 2, 255}


def test_raster_augmentation_is_identical_on_image_and_mask(tmp_path):
    rng = np.random.default_rng(4)
    cls = rng.integers(0, 3, (50, 70))
    img = rng.integers(0, 100, (2, 50, 70)).astype(np.uint16)
    img[0] = 1000 * cls
    write_tif(tmp_path / "a.tif", img, ["red", "nir"])
    write_tif(tmp_path / "a_mask.tif", cls[None].astype(np.uint8))
    dm = RasterSegmentationDataModule(root=str(tmp_path), train_images="a.tif", train_masks="{stem}_mask.tif",
                                      bands=["red", "nir"], crop_size=24, samples_per_epoch=32, num_classes=3)
    dm.setup("fit")
    for b in dm.train_dataloader():
        assert torch.equal(b["image"][:, 0], 1000.0 * b["mask"])


def test_band_stats_exclude_nodata_and_match_numpy(geotiff_scenes):
    root, scenes = geotiff_scenes
    dm = raster(root)
    stats = compute_band_stats(dm)
    values = []
    for img, code in scenes:
        image, _, nodata = expected_scene(img, code)
        cut = int(round(img.shape[1] * 0.75))
        values.append(image[:, :cut][:, ~nodata[:cut]].astype(np.float64))
    values = np.concatenate(values, axis=1)
    assert stats.bands == ("red", "nir", "blue") and stats.pixels == values.shape[1]
    np.testing.assert_allclose(stats.mean, values.mean(1), rtol=1e-6)  # the images are float32
    np.testing.assert_allclose(stats.std, values.std(1), rtol=1e-6)
    snippet = yaml.safe_load(format_stats_yaml(stats, digits=6))
    np.testing.assert_allclose(snippet["model"]["init_args"]["mean"], values.mean(1), rtol=1e-5)


def test_npy_and_npz_scenes_with_nan_and_configured_nodata(tmp_path):
    rng = np.random.default_rng(5)
    img = rng.random((40, 36, 4)).astype(np.float32)
    img[0:3, 0:4] = np.nan
    img[5, :, :] = -1.0  # configured nodata value, all bands
    code = rng.integers(0, 2, (40, 36)).astype(np.uint8)
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    np.save(tmp_path / "img/x.npy", img)
    np.save(tmp_path / "msk/x.npy", code)
    dm = RasterSegmentationDataModule(root=str(tmp_path), train_images="img/*.npy", train_masks="msk/{stem}.npy",
                                      val_images="img/*.npy", val_masks="msk/{stem}.npy",
                                      file_bands=["red", "green", "blue", "nir"], bands=["nir", "red"],
                                      nodata=-1.0, num_classes=2, crop_size=40, batch_size=1)
    dm.setup("fit")
    item = dm.datasets["val"][0]  # one 40x40 tile: the 36 columns plus padding
    invalid = np.zeros((40, 36), dtype=bool)
    invalid[0:3, 0:4], invalid[5] = True, True
    assert torch.isfinite(item["image"]).all()
    np.testing.assert_array_equal(item["mask"][:, :36].numpy(), np.where(invalid, 255, code))
    expected = np.where(invalid, 0, img[..., [3, 0]].transpose(2, 0, 1))
    np.testing.assert_array_equal(item["image"][:, :, :36].numpy(), expected)
    assert (item["mask"][:, 36:] == 255).all()
    stats = compute_band_stats(dm)
    valid = img[~invalid][:, [3, 0]].astype(np.float64)
    np.testing.assert_allclose(stats.mean, valid.mean(0), rtol=1e-9)
    np.testing.assert_allclose(stats.std, valid.std(0), rtol=1e-9)
    # npz scenes hold their mask, band names and scale
    np.savez(tmp_path / "s.npz", img=(img * 100).astype(np.float32), msk=code,
             bands=np.array(["red", "green", "blue", "nir"]), scale=np.float32(0.01))
    dm = RasterSegmentationDataModule(root=str(tmp_path), train_images="s.npz", bands=["blue"], crop_size=16,
                                      samples_per_epoch=4, batch_size=4, num_classes=2, nodata=-100.0)
    dm.setup("fit")
    b = batches(dm.train_dataloader())[0]
    assert b["image"].shape == (4, 1, 16, 16) and torch.isfinite(b["image"]).all()
    assert set(b["mask"].unique().tolist()) <= {0, 1, 255}


# --------------------------------------------------------------------------------------------- bad input


def _bad_png(tmp_path):
    save(tmp_path / "images/a.png", np.zeros((8, 8, 3), dtype=np.uint8))
    (tmp_path / "images/b.png").write_bytes(b"this is not a png file")
    for n in "ab":
        save(tmp_path / f"masks/{n}.png", np.zeros((8, 8), dtype=np.uint8))


def _truncated_jpeg(tmp_path):
    save(tmp_path / "images/a.jpg", np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8))
    data = (tmp_path / "images/a.jpg").read_bytes()
    (tmp_path / "images/a.jpg").write_bytes(data[: len(data) // 2])
    save(tmp_path / "masks/a.png", np.zeros((64, 64), dtype=np.uint8))


def _pngs(tmp_path, mask_values=(0, 255), size=(8, 8), missing_mask=False, mask_size=None):
    save(tmp_path / "images/a.png", np.zeros((*size, 3), dtype=np.uint8))
    save(tmp_path / "images/b.png", np.zeros((*size, 3), dtype=np.uint8))
    mask = np.resize(np.array(mask_values, dtype=np.uint8), mask_size or size)
    save(tmp_path / "masks/a.png", mask)
    if not missing_mask:
        save(tmp_path / "masks/b.png", mask)


def _tif(tmp_path, descriptions, count=5):
    write_tif(tmp_path / "scenes/s.tif", np.ones((count, 16, 16), dtype=np.uint16), descriptions)
    write_tif(tmp_path / "scenes/s_mask.tif", np.zeros((1, 16, 16), dtype=np.uint8))


def _corrupt_tif(tmp_path):
    _tif(tmp_path, S2)
    (tmp_path / "scenes/s.tif").write_bytes(b"II*\x00garbage")


def _npy(tmp_path, count=4):
    (tmp_path / "scenes").mkdir()
    np.save(tmp_path / "scenes/s.npy", np.ones((16, 16, count), dtype=np.float32))
    np.save(tmp_path / "scenes/s_mask.npy", np.zeros((16, 16), dtype=np.uint8))


def _folder(tmp_path, **kw):
    return FolderSegmentationDataModule(**{"root": str(tmp_path), "train_images": "images/*.png",
                                           "train_masks": "masks/{stem}.png", "label_map": {0: 0, 255: 1}, **kw})


def _raster(tmp_path, pattern="scenes/s.tif", **kw):
    return RasterSegmentationDataModule(**{"root": str(tmp_path), "train_images": pattern,
                                           "train_masks": "scenes/{stem}_mask" + pattern[-4:], "crop_size": 8, **kw})


BAD_INPUT = {
    "missing root": (lambda t: _folder(t / "nowhere"), FileNotFoundError, r"data folder not found: root="),
    "missing image folder": (lambda t: _folder(t, train_images="imgs/*.png"), FileNotFoundError,
                             r"data folder not found: .*imgs \(from train_images='imgs/\*.png'\)"),
    "missing mmseg folder": (lambda t: (t / "img_dir/train").mkdir(parents=True) or MMSegDataModule(str(t)),
                             FileNotFoundError, r"data folder not found: .*ann_dir/train \(from train_seg_map_path"),
    "no matching images": (lambda t: (t / "images").mkdir() or _folder(t), DataError,
                           r"no files match train_images='images/\*.png'"),
    "image without mask": (lambda t: _pngs(t, missing_mask=True) or _folder(t), DataError,
                           r"image .*images/b\.png has no mask: .*masks/b\.png does not exist \(from train_masks\)"),
    "mask value outside mapping": (lambda t: _pngs(t, mask_values=(0, 7, 255, 9)) or _folder(t), DataError,
                                   r"mask .*masks/a\.png has values 7, 9 outside label_map values \[0, 255\]"),
    "class outside num_classes": (lambda t: _pngs(t, mask_values=(0, 1, 5)) or _folder(t, label_map=None,
                                                                                         num_classes=2),
                                  DataError, r"masks/a\.png has values 5 outside the classes 0\.\.1"),
    "mask size": (lambda t: _pngs(t, mask_size=(8, 9)) or _folder(t), DataError,
                  r"mask .*masks/a\.png is 8x9 but its image .*images/a\.png is 8x8"),
    "band names differ": (lambda t: _tif(t, S2) or _raster(t, bands=["red"], file_bands=["a", "b", "c", "d", "e"]),
                          DataError, r"image .*s\.tif describes its bands as \['B02'.*but file_bands is \['a'"),
    "band count differs": (lambda t: _npy(t) or _raster(t, "scenes/s.npy", bands=["red"],
                                                         file_bands=["red", "green", "blue"]),
                           DataError, r"image .*s\.npy has 4 bands but file_bands names 3"),
    "band missing": (lambda t: _tif(t, S2) or _raster(t, bands=["red", "swir22"]), DataError,
                     r"image .*s\.tif lacks the configured bands \['swir22'\] \(it has \['blue', 'green', 'red'"),
    "band missing (photo)": (lambda t: _pngs(t) or _folder(t, bands=["red", "nir"]), DataError,
                             r"image .*a\.png lacks the configured bands \['nir'\]"),
    "bands unnamed": (lambda t: _tif(t, None) or _raster(t, bands=["red"]), DataError,
                      r"image .*s\.tif does not name its 5 bands .*set file_bands"),
    "corrupt image": (lambda t: _bad_png(t) or _folder(t), DataError, r"cannot read image file .*images/b\.png: "),
    "truncated image": (lambda t: _truncated_jpeg(t) or _folder(t, train_images="images/*.jpg"), DataError,
                        r"cannot read image file .*images/a\.jpg: .*truncated"),
    "corrupt geotiff": (lambda t: _corrupt_tif(t) or _raster(t, bands=["red"]), DataError,
                        r"cannot read image file .*scenes/s\.tif: "),
    "val without masks": (lambda t: _pngs(t) or _folder(t, val_images="images/*.png"), DataError,
                          r"val_images and val_masks go together"),
    "bad colour key": (lambda t: _pngs(t) or _folder(t, label_map=None, color_map={"red": 1}), DataError,
                       r"color_map key 'red' is not a colour"),
    "rot90 on a non-square size": (lambda t: _pngs(t) or _folder(t, train_size=(8, 16), augment=("rot90",)),
                                   DataError, r"augment 'rot90' needs a square train size"),
    "mask template": (lambda t: _pngs(t) or _folder(t, train_masks="masks/a.png"), DataError,
                      r"train_masks='masks/a.png' must contain \{stem\}"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_stops_in_init_or_setup_with_one_sentence(tmp_path, case):
    build, error, pattern = BAD_INPUT[case]
    with pytest.raises(error, match=pattern) as err:
        dm = build(tmp_path)
        dm.setup("fit")
    message = str(err.value)
    assert "\n" not in message and message.count(". ") == 0, message


# ------------------------------------------------------------------------------- configs, stats, Lightning


def test_datamodules_build_from_yaml_configs(tmp_path, png_folder, geotiff_scenes):
    root, _, _ = png_folder
    text = f"""
data:
  class_path: vadapt.data.FolderSegmentationDataModule
  init_args:
    root: {root}
    train_images: images/*.png
    train_masks: masks/{{stem}}_mask.png
    label_map: {{0: 0, 255: 1, 200: 2}}
    train_size: [24, 32]
    nodata: file
    augment: [hflip]
"""
    (tmp_path / "folder.yaml").write_text(text)
    dm = datamodule_from_config(str(tmp_path / "folder.yaml"))
    assert isinstance(dm, FolderSegmentationDataModule) and dm.train_size == (24, 32)
    with open(tmp_path / "out.yaml", "w") as out:
        stats = print_band_stats(str(tmp_path / "folder.yaml"), file=out)
    printed = yaml.safe_load((tmp_path / "out.yaml").read_text())
    assert printed["model"]["init_args"]["mean"] == pytest.approx(stats.mean, rel=1e-3)
    assert len(printed["model"]["init_args"]["std"]) == 3
    groot, _ = geotiff_scenes
    dm = datamodule_from_config({"data": {"class_path": "vadapt.data.raster.RasterSegmentationDataModule",
                                          "init_args": {"root": str(groot), "train_images": ["scenes/*.tif"],
                                                        "train_masks": "labels/{stem}_mask.tif",
                                                        "bands": ["B04", "B08"], "nodata": -9999,
                                                        "label_map": {1: 0, 2: 1, 3: 2}}}})
    assert isinstance(dm, RasterSegmentationDataModule) and dm.bands == ("red", "nir")
    with pytest.raises(Exception) as err:  # jsonargparse wraps errors of __init__ in its type-check report
        datamodule_from_config({"data": {"class_path": "vadapt.data.MMSegDataModule",
                                         "init_args": {"data_root": str(root / "nowhere")}}})
    found = find_data_error(err.value)
    assert isinstance(found, FileNotFoundError) and str(found).startswith("data folder not found: data_root=")
    assert find_data_error(ValueError("unrelated")) is None
    with pytest.raises(Exception, match="train_imagez"):
        datamodule_from_config({"data": {"class_path": "vadapt.data.MMSegDataModule",
                                         "init_args": {"data_root": str(root), "train_imagez": "x"}}})


def test_scene_configs_still_build_and_give_stats():
    for path in sorted((REPO / "tests/conf").glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        if config.get("data", {}).get("class_path") == "vadapt.data.scene.SceneDataModule":
            assert isinstance(datamodule_from_config(config), SceneDataModule)
    dm = SceneDataModule(paths=["data/cloud_scene/sentinel2_l1c_384.npz"], bands=["blue", "green", "red"],
                         label_map={0: 2, 1: 0, 2: 0, 3: 0, 4: 1})
    stats = compute_band_stats(dm)
    assert stats.pixels == 288 * 384  # the training rows
    assert stats.mean == pytest.approx([0.1917, 0.1852, 0.1784], abs=1e-4)  # configs/quickstart.yaml


def test_folder_datamodule_trains_a_task(png_folder, tmp_path):
    import lightning as L

    from vadapt.tasks import SemanticSegmentationTask

    root, _, _ = png_folder
    dm = folder(root, batch_size=2, scale=1 / 255)
    task = SemanticSegmentationTask(backbone="efficientnet_lite0_test", num_classes=3, ignore_index=255,
                                    head_channels=8)
    trainer = L.Trainer(fast_dev_run=True, accelerator="cpu", default_root_dir=tmp_path, logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, datamodule=dm)
    assert trainer.state.finished


# ---------------------------------------------------------------------------------------------- real data


@pytest.mark.skipif(not (SHARED / "kvasir_seg").is_dir(), reason=f"real data not found: {SHARED / 'kvasir_seg'}")
def test_kvasir_seg_folder_yields_polyp_masks():
    dm = FolderSegmentationDataModule(root=str(SHARED / "kvasir_seg"), train_images="train/images/*.jpg",
                                      train_masks="train/masks/{stem}.jpg", val_images="val/images/*.jpg",
                                      val_masks="val/masks/{stem}.jpg", mask_threshold=127, train_size=256,
                                      batch_size=8)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 800 and len(dm.datasets["val"]) == 100
    train = next(iter(dm.train_dataloader()))
    assert train["image"].shape == (8, 3, 256, 256) and set(train["mask"].unique().tolist()) == {0, 1}
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (8, 3, 352, 352) and set(val["mask"].unique().tolist()) == {0, 1}
    polyp = (val["mask"] == 1).float().mean((1, 2))
    assert (polyp > 0).all() and (polyp < 1).all()  # every mask has polyp and background


@pytest.mark.skipif(not (SHARED / "historical_roads").is_dir(),
                    reason=f"real data not found: {SHARED / 'historical_roads'}")
def test_historical_roads_colour_masks_map_to_two_classes():
    dm = FolderSegmentationDataModule(root=str(SHARED / "historical_roads"), train_images="images/*.tif",
                                      train_masks="masks/{stem}.tif",
                                      mask_stem_replace={"DH_1940_Clipped_": "GT_colored_"},
                                      color_map={"0,0,0": 0}, other_class=1, nodata=None, val_fraction=0.2,
                                      train_size=128, batch_size=4)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 8 and len(dm.datasets["val"]) == 2
    classes = set()
    for split in ("train", "val"):
        for sample in dm.samples(split):
            image, mask = dm.loader.load(sample)
            assert image.shape == (256, 256, 3)
            classes |= set(np.unique(mask).tolist())
    assert classes == {0, 1}
    assert next(iter(dm.train_dataloader()))["image"].shape == (4, 3, 128, 128)
