"""`vadapt infer` on depth checkpoints: whole images resized to the training size, depth resampled back, written as
16-bit PNG / float32 GeoTIFF / npy with a coloured preview; the class-map run's checks, resume and reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from conftest import depth_checkpoint
from PIL import Image
from rasterio.transform import from_origin

from vadapt.cli import main
from vadapt.inference import infer
from vadapt.inference.engine import Predictor
from vadapt.inference.files import TMP_MARK
from vadapt.loading import load_adapter
from vadapt.tasks import SelfSupervisedDepthTask

pytestmark = pytest.mark.usefixtures("one_thread")
TRAINED = (42, 56)  # (height, width) of the training frames: every input is predicted at this size


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny depth-anything depth task with random disparity heads (so depth varies over the image), trained on
    8-bit frames resized to TRAINED; its frozen backbone's weights in a file, as users have real ones."""
    return depth_checkpoint(tmp_path_factory.mktemp("ckpt"), TRAINED)


def photo(h: int, w: int, seed: int) -> np.ndarray:
    """``(h, w, 3)`` uint8 with smooth structure and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([np.sin(xx / 9 + seed), np.cos(yy / 7), np.sin((xx + yy) / 11)], -1)
    return ((base + 0.3 * rng.standard_normal((h, w, 3)) + 1.3) * 90).clip(0, 255).astype(np.uint8)


def write_geotiff(path: Path, data: np.ndarray, names: tuple[str, ...] = ("red", "green", "blue")) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
                       dtype=data.dtype.name, crs="EPSG:32633",
                       transform=from_origin(500_000, 5_000_000, 10, 10)) as dst:
        dst.write(data)
        dst.descriptions = names


def expected_depth(checkpoint: Path, image: np.ndarray) -> np.ndarray:
    """Written out independently: each band resized to the training size with Pillow's Lanczos (as the depth
    datamodule resizes frames), ``predict_depth`` of the raw values, depth bilinear back to the image size."""
    task = load_adapter(checkpoint).eval()
    h, w = image.shape[:2]
    bands = [np.asarray(Image.fromarray(image[..., c].astype(np.float32)).resize(TRAINED[::-1],
                                                                               Image.Resampling.LANCZOS))
             for c in range(3)]
    x = torch.from_numpy(np.stack(bands)).double()[None]
    with torch.no_grad():
        depth = task.double().predict_depth(x)
    return F.interpolate(depth, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()


def test_png_and_jpeg_give_16_bit_depth_of_the_resized_image_at_the_input_size(tmp_path, checkpoint):
    images = {"a.png": photo(60, 90, 0), "sub/b.jpg": photo(50, 70, 1)}
    for name, image in images.items():
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "in" / name, quality=95)
    report = infer(checkpoint, tmp_path / "out", input=str(tmp_path / "in"), progress=False, merge=False)
    assert sorted(report.done) == ["a.png", "sub/b.jpg"] and report.ok
    for name, out in (("a.png", "a.png"), ("sub/b.jpg", "sub/b.png")):
        decoded = Image.open(tmp_path / "out" / out)
        assert decoded.text["depth_scale"] == "1/256"
        values = np.asarray(decoded)
        assert values.dtype == np.uint16 and values.shape == images[name].shape[:2]  # the input's size
        source = np.asarray(Image.open(tmp_path / "in" / name)).astype(np.float64)  # the JPEG as decoded
        expected = expected_depth(checkpoint, source)
        assert expected.std() > 0.02  # the random heads make depth vary: a constant would prove nothing
        assert np.abs(values / 256 - expected).max() <= 1 / 256  # rounding to 1/256, float32 vs float64
        preview = Image.open(tmp_path / "out" / out.replace(".png", "_depth_preview.png"))
        assert preview.mode == "RGB" and preview.width >= values.shape[1] and preview.height > values.shape[0]
    summary = json.loads((tmp_path / "out" / "report.json").read_text())
    assert summary["png_depth_scale"] == "1/256" and summary["output"] == "depth_map"


def test_geotiff_in_gives_float32_geotiff_with_its_georeference_and_merged_equals_unmerged(tmp_path, checkpoint):
    image = photo(64, 48, 2)
    write_geotiff(tmp_path / "in" / "scene.tif", image.transpose(2, 0, 1).astype(np.float32))
    depths = {}
    for merge in (True, False):
        report = infer(checkpoint, tmp_path / f"out{merge}", input=str(tmp_path / "in"), progress=False, merge=merge)
        assert report.done == ["scene.tif"]
        with rasterio.open(tmp_path / f"out{merge}" / "scene.tif") as src, \
                rasterio.open(tmp_path / "in" / "scene.tif") as source:
            assert (src.crs, src.transform, src.count, src.dtypes[0]) == (source.crs, source.transform, 1, "float32")
            depths[merge] = src.read(1)
    assert depths[False].shape == (64, 48)
    expected = expected_depth(checkpoint, image.astype(np.float64))
    assert np.allclose(depths[False], expected, rtol=1e-4, atol=1e-5)
    assert np.allclose(depths[True], depths[False], rtol=1e-3)  # batch norms folded: float rounding only


def test_depth_scale_flip_tta_and_native_geometry(tmp_path, checkpoint):
    image = photo(40, 52, 3)
    np.save(tmp_path / "x.npy", image.astype(np.float32))
    runs = {"plain": {}, "scaled": {"depth_scale": 2.5}, "flip": {"tta": "flip"}, "native": {"geometry": "native"}}
    out = {}
    for key, settings in runs.items():
        infer(checkpoint, tmp_path / key, input=str(tmp_path / "x.npy"), progress=False, merge=False,
              file_bands=["red", "green", "blue"], **settings)
        out[key] = np.load(tmp_path / key / "x.npy")
        assert out[key].dtype == np.float32 and out[key].shape == (40, 52)
    assert np.allclose(out["scaled"], 2.5 * out["plain"], rtol=1e-6)
    task = load_adapter(checkpoint).eval()
    x = torch.from_numpy(image.astype(np.float32).transpose(2, 0, 1))[None]
    with torch.no_grad():
        native = task.predict_depth(x)[0, 0].numpy()  # no resize: the image's own size
        resized = torch.from_numpy(np.asarray(expected_depth(checkpoint, image.astype(np.float64)), np.float32))
    assert np.allclose(out["native"], native, rtol=1e-4)
    assert np.allclose(out["plain"], resized.numpy(), rtol=1e-4)
    assert not np.allclose(out["flip"], out["plain"], rtol=1e-3)  # the mirrored pass is averaged in
    assert (out["flip"] > 0).all()


def test_corrupt_file_and_wrong_band_count_are_reported_and_the_others_succeed(tmp_path, checkpoint, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(photo(48, 64, 4)).save(folder / "good.png")
    data = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    write_geotiff(folder / "two_bands.tif", photo(48, 64, 5).transpose(2, 0, 1)[:2].copy(), ("red", "green"))
    report = infer(checkpoint, tmp_path / "out", input=str(folder), progress=False)
    assert report.done == ["good.png"]
    reasons = dict(report.failed)
    assert set(reasons) == {"truncated.png", "two_bands.tif"} and "blue" in reasons["two_bands.tif"]
    rows = (tmp_path / "out" / "failed.csv").read_text().splitlines()
    assert rows[0] == "input,status,reason" and len(rows) == 3
    listed = json.loads((tmp_path / "out" / "report.json").read_text())["failed"]
    assert {row["input"] for row in listed} == set(reasons)
    assert "failed: truncated.png" in capsys.readouterr().err
    assert not [p for p in (tmp_path / "out").rglob("*") if TMP_MARK in p.name]
    # a header that fails is found before the model loads: with nothing else to do, no model is loaded at all
    (folder / "good.png").unlink()
    (folder / "truncated.png").unlink()
    only_bad = infer(checkpoint, tmp_path / "out2", input=str(folder), progress=False)
    assert [name for name, _ in only_bad.failed] == ["two_bands.tif"] and only_bad.load_seconds == 0


def test_rerun_skips_complete_outputs_and_overwrite_redoes(tmp_path, checkpoint):
    (tmp_path / "in").mkdir()
    for i in range(3):
        Image.fromarray(photo(40, 40, i)).save(tmp_path / "in" / f"{i}.png")
    first = infer(checkpoint, tmp_path / "out", input=str(tmp_path / "in"), format="tif", progress=False)
    assert sorted(first.done) == ["0.png", "1.png", "2.png"]
    (tmp_path / "out" / "1_depth_preview.png").unlink()  # an incomplete job: its preview is lost
    second = infer(checkpoint, tmp_path / "out", input=str(tmp_path / "in"), format="tif", progress=False)
    assert (second.done, sorted(second.skipped)) == (["1.png"], ["0.png", "2.png"])
    assert (tmp_path / "out" / "1_depth_preview.png").is_file()
    third = infer(checkpoint, tmp_path / "out", input=str(tmp_path / "in"), format="tif", progress=False,
                  overwrite=True)
    assert len(third.done) == 3


def test_cli_runs_a_depth_checkpoint_and_says_relative_depth(tmp_path, checkpoint, capsys):
    Image.fromarray(photo(36, 44, 6)).save(tmp_path / "p.jpg")
    code = main(["infer", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "p.jpg"), "--output",
                 str(tmp_path / "out"), "--depth-scale", "3", "--tta", "flip"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "relative depth" in printed and "horizontal flip" in printed and "x 3" in printed
    values = np.asarray(Image.open(tmp_path / "out" / "p.png"))
    assert values.shape == (36, 44) and values.min() > 0
    assert json.loads((tmp_path / "out" / "report.json").read_text())["depth_scale"] == 3.0


@pytest.mark.parametrize(("flags", "message"), [(["--tta", "d4"], "d4"), (["--probabilities"], "probabilities"),
                                                (["--overlay"], "overlay"), (["--tta-scales", "1", "2"], "scales"),
                                                (["--depth-scale", "0"], "depth_scale")])
def test_settings_that_do_not_apply_to_depth_are_refused_in_one_line(tmp_path, checkpoint, capsys, flags, message):
    Image.fromarray(photo(32, 32, 7)).save(tmp_path / "p.png")
    assert main(["infer", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "p.png"), "--output",
                 str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "p.png").exists()


def test_class_map_predictor_refuses_a_depth_task():
    task = SelfSupervisedDepthTask(backbone="depth_anything_v2_test")
    with pytest.raises(ValueError, match="not class maps"):
        Predictor(task.eval(), "cpu", merge=False)
