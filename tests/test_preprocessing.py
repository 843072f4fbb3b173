"""The checkpoint carries how training read its data, and prediction applies it (issue 22).

Value scale / offset, nodata handling and whole-image resizing are recorded by the datamodule when fitting
starts, stored in adapter and Lightning checkpoints, and applied by ``load_adapter`` / ``vadapt infer`` by
default; flags override; checkpoints from before the record keep the old behaviour and say so.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from PIL import Image
from rasterio.transform import from_origin

from vadapt.adapters import LoraConfig
from vadapt.checkpoint import read_manifest, save_adapter
from vadapt.cli import main
from vadapt.data import FolderSegmentationDataModule
from vadapt.inference import infer
from vadapt.inference.resampling import WHOLE_IMAGE_SIDE, Plan, plan
from vadapt.inference.tta import TestTimeAugmentation
from vadapt.loading import load_adapter
from vadapt.preprocessing import Preprocessing, pixel_size_note
from vadapt.tasks import SemanticSegmentationTask

BANDS = ("red", "green", "blue")


# ---- the record -----------------------------------------------------------------------------------------
def test_record_round_trips_and_refuses_damage():
    record = Preprocessing(scale=1 / 255, offset=-0.1, nodata=None, resize=[32, 40], source_size=(48, 64),
                           pixel_size=10.0)
    assert record.resize == (32, 40)
    assert Preprocessing.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    assert Preprocessing.from_dict(None) is None
    assert Preprocessing.from_dict({**record.to_dict(), "from_a_newer_vadapt": 1}) == record
    for bad in ({"scale": 0}, {"scale": float("nan")}, {"nodata_rule": "some"}, {"nodata": [1]}, "text"):
        with pytest.raises(ValueError, match="preprocessing"):
            Preprocessing.from_dict(bad)
    assert "resized whole to 40x32" in record.describe() and "x 0.00392157 + -0.1" in record.describe()


def test_plan_follows_the_training_geometry():
    native, note = plan(None, 500, 700, 256, 192)
    assert native == Plan(256, 192) and note is None
    assert plan(Preprocessing(), 500, 700, 256, 192)[0] == Plan(256, 192)
    resized = Preprocessing(resize=(192, 192), source_size=(352, 352))
    whole, note = plan(resized, 352, 300, 256, 192)
    assert whole == Plan(352, 352, size=(192, 192)) and note is None
    assert plan(resized, 352, 300, 256, 192, native=True)[0] == Plan(256, 192)
    big = WHOLE_IMAGE_SIDE + 1
    tiled, note = plan(resized, big, big, 256, 192)
    factor = 192 / 352
    assert tiled.factor == pytest.approx(factor) and tiled.tile == int(np.ceil(256 / factor))
    assert tiled.model_size(tiled.tile, 100) == (round(tiled.tile * factor), round(100 * factor))
    assert "resampled" in note
    unknown, note = plan(Preprocessing(resize=(192, 192)), big, big, 256, 192)
    assert unknown == Plan(256, 192) and "native scale" in note
    at_10m = Preprocessing(pixel_size=10.0)
    assert plan(at_10m, 500, 700, 256, 192, pixel_size=12.0) == (Plan(256, 192), None)  # within the tolerance
    landsat, note = plan(at_10m, 500, 700, 256, 192, pixel_size=30.0)
    assert landsat == Plan(86, 64, factor=3.0) and "resampled x 3" in note
    assert plan(at_10m, 500, 700, 256, 192, pixel_size=30.0, native=True) == (Plan(256, 192), None)
    capped, note = plan(at_10m, 500, 700, 256, 192, pixel_size=1000.0)
    assert capped.factor == 8.0 and "capped at 8" in note


def test_pixel_size_note_only_beyond_the_tolerance():
    assert pixel_size_note(10.0, 12.0) is None and pixel_size_note(None, 30.0) is None
    assert "3x" in pixel_size_note(10.0, 30.0) and "smaller" in pixel_size_note(10.0, 30.0)


# ---- training records it; loading and infer apply it -----------------------------------------------------
def write_photos(folder: Path, n: int = 4, size: tuple[int, int] = (48, 64)) -> None:
    """8-bit RGB photos with a bright square (class 1) on a dark, textured background."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(n):
        mask = np.zeros(size, np.uint8)
        y, x = rng.integers(4, size[0] - 20), rng.integers(4, size[1] - 20)
        mask[y : y + 16, x : x + 16] = 1
        image = rng.integers(0, 90, (*size, 3)).astype(np.uint8)
        image[mask == 1] = rng.integers(160, 255, (int(mask.sum()), 3))
        Image.fromarray(image).save(folder / "images" / f"p{i}.png")
        Image.fromarray(mask * 255).save(folder / "masks" / f"p{i}.png")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, effnet_weights):
    """A tiny model fitted for a few steps on 8-bit photos with ``scale: 1/255`` and whole-image resize to 32 px."""
    folder = tmp_path_factory.mktemp("photos")
    write_photos(folder)
    data = FolderSegmentationDataModule(root=str(folder), train_images="images/*.png", train_masks="masks/{stem}.png",
                                        scale=1 / 255, mask_threshold=127, train_size=32, train_mode="resize",
                                        batch_size=2, check_files=False)
    task = SemanticSegmentationTask(backbone="efficientnet_lite0_test", weights=effnet_weights, bands=BANDS,
                                    num_classes=2, head="fpn", adapter=LoraConfig(r=4), lr=0.01)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        default_root_dir=folder)
    trainer.fit(task, datamodule=data)
    path = save_adapter(task.eval(), folder / "adapter.safetensors")
    return folder, task, path


def test_fitting_records_the_datamodules_preprocessing(trained):
    _, task, path = trained
    expected = Preprocessing(scale=1 / 255, nodata="file", resize=(32, 32), source_size=(48, 64))
    assert task.preprocessing == expected
    assert Preprocessing.from_dict(read_manifest(path)["preprocessing"]) == expected


def test_loaded_adapter_takes_raw_file_values(trained):
    folder, task, path = trained
    raw = torch.from_numpy(np.asarray(Image.open(folder / "images" / "p0.png"), dtype=np.float32))
    raw = raw.permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = task(raw / 255)
        loaded = load_adapter(path).eval()
        assert torch.allclose(loaded(raw), expected, atol=1e-5)
        as_trained = load_adapter(path, raw_inputs=False).eval()
        assert torch.allclose(as_trained(raw / 255), expected, atol=1e-5)
        assert not torch.allclose(as_trained(raw), expected, atol=1e-3)


def expected_mask(task: SemanticSegmentationTask, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The pipeline written by hand: scale, resize whole to the training size, predict, resize back, argmax."""
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None] / 255
    with torch.no_grad():
        probs = task(F.interpolate(x, size=size, mode="bilinear", align_corners=False)).softmax(1)
    probs = F.interpolate(probs, size=image.shape[:2], mode="bilinear", align_corners=False)
    return probs.argmax(1)[0].numpy().astype(np.uint8)


def test_infer_by_default_predicts_the_way_training_saw_images(trained, tmp_path):
    folder, task, path = trained
    image = np.asarray(Image.open(folder / "images" / "p1.png"))
    report = infer(path, tmp_path / "out", input=str(folder / "images"), progress=False, merge=False)
    assert report.ok and not report.notes
    assert "x 0.00392157" in report.preprocessing and "resized to 32x32" in report.preprocessing
    got = np.asarray(Image.open(tmp_path / "out" / "p1.png"))
    hand = expected_mask(task, image, (32, 32))
    assert (got == hand).mean() > 0.995  # merged/unmerged and blending rounding aside, the same pipeline
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["mask_nodata"] == 255 and "resized" in saved["preprocessing"]
    assert Image.open(tmp_path / "out" / "p1.png").text["nodata"] == "255"

    # flags override the record: native geometry and no scaling predict something else
    infer(path, tmp_path / "raw", input=str(folder / "images"), progress=False, merge=False, scale=1.0,
          geometry="native")
    raw = np.asarray(Image.open(tmp_path / "raw" / "p1.png"))
    with torch.no_grad():
        as_is = task(torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]).argmax(1)[0].numpy()
    assert (raw == as_is).mean() > 0.995 and (raw != got).any()


def test_an_old_checkpoint_keeps_todays_behaviour_and_says_so(trained, tmp_path):
    folder, task, _ = trained
    record, task.preprocessing = task.preprocessing, None
    try:
        old = save_adapter(task, tmp_path / "old.safetensors")
    finally:
        task.preprocessing = record
    assert read_manifest(old)["preprocessing"] is None
    report = infer(old, tmp_path / "out", input=str(folder / "images" / "p0.png"), progress=False)
    assert report.ok and len(report.notes) == 1 and "--scale" in report.notes[0]
    assert "x 1;" in report.preprocessing and "native scale" in report.preprocessing


def test_lightning_checkpoint_carries_the_record(trained, tmp_path):
    from vadapt.loading import load_lightning_checkpoint

    _, task, _ = trained
    checkpoint: dict = {}
    task.on_save_checkpoint(checkpoint)
    checkpoint["state_dict"] = {k: v.clone() for k, v in checkpoint["state_dict"].items()}
    torch.save(checkpoint, tmp_path / "last.ckpt")
    loaded = load_lightning_checkpoint(tmp_path / "last.ckpt")
    assert loaded.preprocessing == task.preprocessing
    assert float(loaded.value_scale) == pytest.approx(1 / 255)


# ---- nodata ---------------------------------------------------------------------------------------------
def write_map(path: Path) -> np.ndarray:
    """A 3-band 8-bit GeoTIFF declaring nodata 255 whose left half is pure white paper (255, 255, 255)."""
    rng = np.random.default_rng(1)
    data = rng.integers(0, 200, (3, 40, 48)).astype(np.uint8)
    data[:, :, :24] = 255
    with rasterio.open(path, "w", driver="GTiff", height=40, width=48, count=3, dtype="uint8", nodata=255,
                       crs="EPSG:32633", transform=from_origin(500_000, 5_000_000, 30, 30)) as dst:
        dst.write(data)
    return data


@pytest.fixture
def map_checkpoint(tmp_path, effnet_weights):
    """A checkpoint whose training read maps with ``nodata: null`` (white paper is data) at 10 m pixels."""
    task = SemanticSegmentationTask(backbone="efficientnet_lite0_test", weights=effnet_weights, bands=BANDS,
                                    num_classes=2, head="fpn")
    task.preprocessing = Preprocessing(scale=1 / 255, nodata=None, pixel_size=10.0)
    return save_adapter(task, tmp_path / "map.safetensors")


def test_an_input_at_another_pixel_size_is_resampled_to_the_training_one(tmp_path, map_checkpoint):
    data = write_map(tmp_path / "map.tif")  # 30 m pixels; the checkpoint trained on 10 m ones
    report = infer(map_checkpoint, tmp_path / "out", input=str(tmp_path / "map.tif"), progress=False, merge=False)
    assert report.ok
    task = load_adapter(map_checkpoint).eval()
    x = torch.from_numpy(data.astype(np.float32))[None]
    with torch.no_grad():  # by hand: upsample x 3 to 10 m, predict, probabilities back onto the 30 m grid
        probs = task(F.interpolate(x, size=(120, 144), mode="bilinear", align_corners=False)).softmax(1)
        expected = F.interpolate(probs, size=(40, 48), mode="bilinear", align_corners=False).argmax(1)[0].numpy()
    with rasterio.open(tmp_path / "out" / "map.tif") as src:
        assert src.res == (30.0, 30.0)
        assert (src.read(1) == expected).mean() > 0.99


def test_nodata_is_read_as_training_read_it_and_can_be_ignored(tmp_path, map_checkpoint, capsys):
    (tmp_path / "in").mkdir()
    write_map(tmp_path / "in" / "map.tif")
    report = infer(map_checkpoint, tmp_path / "out", input=str(tmp_path / "in"), progress=False)
    with rasterio.open(tmp_path / "out" / "map.tif") as src:
        mask, nodata = src.read(1), src.nodata
    assert nodata == 255 and not (mask == 255).any()  # the white paper was predicted, as training saw it
    assert any("pixel size 30 vs 10 in training: resampled x 3" in reason for _, reason in report.warnings)
    assert main(["infer", "--checkpoint", str(map_checkpoint), "--input", str(tmp_path / "in"), "--output",
                 str(tmp_path / "cli"), "--quiet", "--geometry", "native"]) == 0
    said = capsys.readouterr().out
    assert "preprocessing: values x 0.00392157; native scale; input nodata: none (as in training)" in said
    assert "note: pixel size 30 vs 10 in training (3x)" in said and "(map.tif)" in said

    # a checkpoint that read the file's nodata writes it where the input declares it, unless told to ignore it
    task = SemanticSegmentationTask(backbone="efficientnet_lite0_test", bands=BANDS, num_classes=2, head="fpn")
    task.preprocessing = Preprocessing(scale=1 / 255)
    honours = save_adapter(task, tmp_path / "honours.safetensors")
    infer(honours, tmp_path / "out2", input=str(tmp_path / "in"), progress=False)
    with rasterio.open(tmp_path / "out2" / "map.tif") as src:
        assert (src.read(1)[:, :24] == 255).all() and not (src.read(1)[:, 24:] == 255).any()
    infer(honours, tmp_path / "out3", input=str(tmp_path / "in"), progress=False, ignore_nodata=True)
    with rasterio.open(tmp_path / "out3" / "map.tif") as src:
        assert not (src.read(1) == 255).any()


# ---- normalisation options and statistics from the data ---------------------------------------------------
def test_per_image_normalisation_ignores_a_per_band_gain_and_offset():
    torch.manual_seed(0)
    task = SemanticSegmentationTask(backbone="efficientnet_lite0_test", bands=BANDS, num_classes=2, head="fpn",
                                    normalization="per_image").eval()
    x = torch.rand(2, 3, 32, 32)
    gain, offset = torch.tensor([0.5, 2.0, 3.0]).view(1, 3, 1, 1), torch.tensor([0.1, -0.2, 5.0]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(task(x * gain + offset), task(x), atol=1e-4)
        dataset = SemanticSegmentationTask(backbone="efficientnet_lite0_test", bands=BANDS, num_classes=2,
                                           head="fpn").eval()
        dataset.load_state_dict(task.state_dict())
        assert not torch.allclose(dataset(x * gain + offset), dataset(x), atol=1e-3)
        # zero padding (edge tiles, padded batches) does not move the statistics of the image it pads
        padded = torch.zeros(2, 3, 32, 48)
        padded[..., :32] = x
        stats = task.normalise(padded)[..., :32]
        assert torch.allclose(stats, task.normalise(x), atol=1e-5)


def test_non_rgb_statistics_come_from_the_training_data_and_whole_scenes_train(tmp_path, effnet_weights):
    from vadapt.data.scene import SceneDataModule
    from vadapt.data.stats import compute_band_stats

    rng = np.random.default_rng(0)
    bands = ["blue", "green", "red", "nir"]
    image = (rng.random((64, 64, 4)) * np.array([0.1, 0.2, 0.3, 0.6])).astype(np.float32)
    np.savez(tmp_path / "scene.npz", img=image, msk=(image[..., 3] > 0.3).astype(np.uint8),
             bands=np.array(bands))
    data = SceneDataModule(paths=[str(tmp_path / "scene.npz")], bands=bands, crop_size=32, batch_size=2,
                           samples_per_epoch=4, val_fraction=0)
    task = SemanticSegmentationTask(backbone="efficientnet_lite0_test", weights=effnet_weights,
                                    bands=tuple(bands), num_classes=2, head="fpn")
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path)
    trainer.fit(task, datamodule=data)
    stats = compute_band_stats(data)
    assert task.hparams["mean"] == pytest.approx(stats.mean, abs=1e-5)
    assert task.input_std.flatten().tolist() == pytest.approx(stats.std, abs=1e-5)
    assert task.preprocessing == Preprocessing(nodata=None)
    declared = SceneDataModule(paths=[str(tmp_path / "scene.npz")], bands=bands, pixel_size=10)
    assert declared.preprocessing() == Preprocessing(nodata=None, pixel_size=10.0)
    path = save_adapter(task, tmp_path / "a.safetensors")
    assert load_adapter(path).input_mean.flatten().tolist() == pytest.approx(stats.mean, abs=1e-5)


def test_infer_runs_test_time_augmentation(trained, tmp_path):
    folder, task, path = trained
    report = infer(path, tmp_path / "out", input=str(folder / "images" / "p2.png"), progress=False, tta="flip",
                   merge=False)
    assert report.ok and "flip" in report.preprocessing
    image = np.asarray(Image.open(folder / "images" / "p2.png"))
    x = F.interpolate(torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None] / 255, size=(32, 32),
                      mode="bilinear", align_corners=False)
    with torch.no_grad():
        probs = TestTimeAugmentation("flip")(task, x)
    probs = F.interpolate(probs, size=image.shape[:2], mode="bilinear", align_corners=False)
    expected = probs.argmax(1)[0].numpy()
    assert (np.asarray(Image.open(tmp_path / "out" / "p2.png")) == expected).mean() > 0.995
