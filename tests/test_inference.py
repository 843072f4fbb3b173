"""Batch inference (`vadapt infer`): tiling and blending, georeference, bad input, resume, kill, shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import from_origin

from vadapt.adapters import LoraConfig
from vadapt.checkpoint import save_adapter
from vadapt.cli import main
from vadapt.inference import RowBlender, infer, sliding_window, tile_grid
from vadapt.inference.files import TMP_MARK, pair_inputs
from vadapt.loading import load_task
from vadapt.tasks import SemanticSegmentationTask
from vadapt.tiling import tile_starts

BANDS = ("red", "green", "blue")


# ---- tiling ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,tile,stride", [(100, 32, 24), (64, 64, 32), (20, 64, 32), (257, 128, 128)])
def test_tile_starts_cover_every_pixel_once_flush_with_the_edge(size, tile, stride):
    starts = tile_starts(size, tile, stride)
    covered = np.zeros(size, dtype=int)
    for s in starts:
        covered[s : s + min(tile, size)] += 1
    assert covered.min() >= 1
    assert starts[0] == 0 and starts[-1] + min(tile, size) == size
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


def test_one_window_image_gives_exactly_the_single_pass():
    image = torch.randn(2, 3, 50, 64)

    def predict(x):  # depends on the whole input, so any tiling would change it
        return x.mean((1, 2, 3), keepdim=True).expand(-1, 2, *x.shape[-2:]) + x[:, :2]

    assert torch.equal(sliding_window(predict, image, tile=64, stride=32), predict(image))


@pytest.mark.parametrize("blend", ["mean", "ramp"])
def test_blending_a_pixelwise_model_reproduces_it(blend):
    image = torch.randn(2, 3, 150, 170)

    def predict(x):
        return torch.cat([x.sum(1, keepdim=True), x[:, :1] ** 2], 1)

    assert torch.allclose(sliding_window(predict, image, tile=64, stride=40, blend=blend), predict(image), atol=1e-5)


@pytest.mark.parametrize("blend", ["mean", "ramp"])
def test_row_blender_streams_the_same_result_as_the_in_memory_blend(blend):
    image = torch.randn(1, 2, 130, 97)

    def predict(x):  # context-dependent (per-tile mean), so the blend weights matter
        return x - x.mean((2, 3), keepdim=True)

    expected = sliding_window(predict, image, tile=48, stride=36, blend=blend)[0]
    blender, out = RowBlender(130, 97, 48, 36, blend), torch.full((2, 130, 97), float("nan"))
    assert blender.weight.shape[0] == 48  # memory: one tile row, whatever the image height
    for y, x, h, w in blender.windows:
        for top, rows in blender.add((y, x, h, w), predict(image[:, :, y : y + h, x : x + w])[0]):
            out[:, top : top + rows.shape[1]] = rows
    assert torch.allclose(out, expected, atol=1e-5)


def test_ramp_blend_leaves_no_seam_where_tiles_disagree():
    """Each tile adds its own offset (a model whose output depends on the tile's context): a smooth ramp
    across the tile border stays smooth with ``ramp`` blending; ``mean`` blending shows a step."""
    width, tile, stride = 200, 64, 48
    ramp = torch.linspace(0, 1, width).expand(1, 1, 32, width).contiguous()
    offsets = iter(range(100))

    def predict(x):
        return x + 0.5 * (next(offsets) % 2)  # neighbouring tiles disagree by 0.5

    steps = {}
    for blend in ("mean", "ramp"):
        offsets = iter(range(100))
        out = sliding_window(predict, ramp, tile=tile, stride=stride, blend=blend, batch_size=1)[0, 0, 0]
        steps[blend] = out.diff().abs().max().item()
    slope = 1 / (width - 1)
    assert steps["mean"] > 0.2  # a visible seam
    assert steps["ramp"] < 0.5 / (tile - stride) + 2 * slope  # spread over the overlap


def test_tile_grid_row_major():
    grid = tile_grid(100, 70, 64, 48)
    assert [w[:2] for w in grid] == [(0, 0), (0, 6), (36, 0), (36, 6)]


# ---- a small model and data --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from vadapt.backbones import create_backbone

    folder = tmp_path_factory.mktemp("ckpt")
    weights = folder / "backbone.pth"  # upstream-format weights of the tiny backbone, as users have real ones
    torch.save(create_backbone("efficientnet_lite0_test").model.state_dict(), weights)
    task = SemanticSegmentationTask(backbone="efficientnet_lite0_test", weights=str(weights), bands=BANDS,
                                    num_classes=3, head="fpn", adapter=LoraConfig(r=4), mean=[0.5] * 3,
                                    std=[0.25] * 3)
    with torch.no_grad():  # a "trained" adapter: random, non-zero LoRA and head weights
        for p in task.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
    return save_adapter(task, folder / "adapter.safetensors")


def write_geotiff(path: Path, data: np.ndarray, nodata: float | None = None, crs: str | None = "EPSG:32633",
                  names: tuple[str, ...] | None = BANDS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    geo = {"crs": crs, "transform": from_origin(500_000, 5_000_000, 10, 10)} if crs else {}
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
                       dtype=data.dtype.name, nodata=nodata, **geo) as dst:
        dst.write(data)
        if names:
            dst.descriptions = names


def random_image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([np.sin(xx / 9 + seed), np.cos(yy / 7), np.sin((xx + yy) / 11)])
    return (0.5 + 0.3 * base + 0.05 * rng.standard_normal((3, h, w))).astype(np.float32)


def predict_direct(checkpoint: Path, image: np.ndarray) -> np.ndarray:
    task = load_task(checkpoint).eval()
    with torch.no_grad():
        return task(torch.from_numpy(image)[None]).argmax(1)[0].numpy()


def read_mask(path: Path) -> np.ndarray:
    if path.suffix == ".tif":
        with rasterio.open(path) as src:
            return src.read(1)
    if path.suffix == ".npy":
        return np.load(path)
    return np.asarray(Image.open(path))


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if TMP_MARK in p.name]


# ---- the folder job -------------------------------------------------------------------------------------
def test_geotiff_keeps_georeference_and_nodata_and_matches_the_model(tmp_path, checkpoint):
    image = random_image(90, 120, 0)
    image[:, :5, :7] = -1.0
    write_geotiff(tmp_path / "in" / "region" / "a.tif", image, nodata=-1.0)
    report = infer(checkpoint, tmp_path / "out", input=str(tmp_path / "in"), tile=128, progress=False,
                   probabilities=True)
    assert report.done == ["region/a.tif"] and report.ok
    out = tmp_path / "out" / "region" / "a.tif"
    with rasterio.open(tmp_path / "in" / "region" / "a.tif") as src, rasterio.open(out) as dst:
        assert (dst.crs, dst.transform, dst.shape, dst.nodata) == (src.crs, src.transform, src.shape, 255)
        assert dst.profile["compress"] == "deflate"
        mask = dst.read(1)
    assert (mask[:5, :7] == 255).all()
    valid = np.ones(mask.shape, dtype=bool)
    valid[:5, :7] = False
    filled = image.copy()
    filled[:, ~valid] = 0.5  # the model's mean: what infer puts into nodata pixels
    assert np.array_equal(mask[valid], predict_direct(checkpoint, filled)[valid])
    with rasterio.open(tmp_path / "out" / "region" / "a_prob.tif") as src:
        probs = src.read()
        assert src.crs is not None and src.count == 3
    assert np.isnan(probs[:, :5, :7]).all()
    assert np.allclose(probs[:, valid].sum(0), 1, atol=1e-5)
    assert np.array_equal(probs.argmax(0)[valid], mask[valid])


def test_large_image_streamed_through_files_equals_the_in_memory_sliding_window(tmp_path, checkpoint):
    image = random_image(200, 260, 1)
    write_geotiff(tmp_path / "in" / "big.tif", image)
    report = infer(checkpoint, tmp_path / "out", input=str(tmp_path / "in"), tile=96, overlap=32,
                   batch_size=3, progress=False, merge=False, probabilities=True)
    assert report.tiles == len(tile_grid(200, 260, 96, 64)) > 1
    task = load_task(checkpoint).eval()
    with torch.no_grad():
        expected = sliding_window(lambda x: task(x).softmax(1), torch.from_numpy(image)[None], 96, 64, "ramp")[0]
    with rasterio.open(tmp_path / "out" / "big_prob.tif") as src:
        # float rounding only (channels-last, thread split; this random model's logits are ~50): a blending or
        # streaming error would be off by ~0.1 or more
        assert np.allclose(src.read(), expected.numpy(), atol=5e-3)
    assert (read_mask(tmp_path / "out" / "big.tif") == expected.argmax(0).numpy()).mean() > 0.999


@pytest.mark.parametrize("fmt", ["png", "npy", "tif"])
def test_formats_and_merged_equals_unmerged(tmp_path, checkpoint, fmt):
    image = random_image(64, 80, 2)
    Image.fromarray((image.transpose(1, 2, 0) * 255).clip(0, 255).astype(np.uint8)).save(tmp_path / "p.png")
    masks = {}
    for merge in (True, False):
        out = tmp_path / f"out{merge}"
        infer(checkpoint, out, input=str(tmp_path / "p.png"), format=fmt, merge=merge, progress=False)
        masks[merge] = read_mask(out / f"p.{fmt}")
    assert masks[True].shape == (64, 80)
    assert (masks[True] == masks[False]).mean() > 0.999


def test_glob_input_mirrors_paths_below_the_pattern(tmp_path, checkpoint):
    for name in ("x/a.tif", "x/sub/b.tif"):
        write_geotiff(tmp_path / name, random_image(32, 32, 0))
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x" / "not_matched.png")
    report = infer(checkpoint, tmp_path / "out", input=f"{tmp_path}/x/**/*.tif", progress=False)
    assert sorted(report.done) == ["a.tif", "sub/b.tif"]
    assert (tmp_path / "out" / "sub" / "b.tif").is_file()


def test_multiband_npy_uses_file_bands_and_scale(tmp_path, checkpoint):
    image = random_image(40, 50, 3)
    stored = np.concatenate([image[::-1], np.zeros((1, 40, 50), np.float32)]) * 100  # blue, green, red, nir
    np.save(tmp_path / "scene.npy", stored.transpose(1, 2, 0))
    report = infer(checkpoint, tmp_path / "out", input=str(tmp_path / "scene.npy"), progress=False,
                   file_bands=["blue", "green", "red", "nir"], scale=0.01)
    assert report.ok
    assert np.array_equal(np.load(tmp_path / "out" / "scene.npy"), predict_direct(checkpoint, image))
    bad = infer(checkpoint, tmp_path / "out2", input=str(tmp_path / "scene.npy"), progress=False)
    assert "file_bands" in bad.failed[0][1] or "--file-bands" in bad.failed[0][1]


def make_bad_folder(folder: Path) -> None:
    folder.mkdir(parents=True)
    good = random_image(48, 64, 4)
    write_geotiff(folder / "good.tif", good)
    Image.fromarray((good.transpose(1, 2, 0) * 255).astype(np.uint8)).save(folder / "good.png")
    data = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "empty.tif").write_bytes(b"")
    (folder / "not_an_image.jpg").write_text("hello")
    (folder / "README.txt").write_text("not an image suffix: ignored")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(folder / "one_pixel.png")
    write_geotiff(folder / "two_bands.tif", good[:2], names=("red", "green"))
    with_nan = good.copy()
    with_nan[:, 10:12, 20:25] = np.nan
    write_geotiff(folder / "nan.tif", with_nan)


def test_bad_files_are_reported_and_the_rest_is_processed(tmp_path, checkpoint, capsys):
    make_bad_folder(tmp_path / "in")
    code = main(["infer", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "in"), "--output",
                 str(tmp_path / "out"), "--quiet"])
    assert code == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert sorted(report["done"]) == ["good.png", "good.tif", "nan.tif"]
    reasons = {row["input"]: row["reason"] for row in report["failed"]}
    assert set(reasons) == {"truncated.png", "empty.tif", "not_an_image.jpg", "one_pixel.png", "two_bands.tif"}
    assert "truncated" in reasons["truncated.png"]
    assert "1×1" in reasons["one_pixel.png"]
    assert "blue" in reasons["two_bands.tif"]  # names the missing band
    assert [w["input"] for w in report["warnings"]] == ["nan.tif"]
    assert (read_mask(tmp_path / "out" / "nan.tif")[10:12, 20:25] == 255).all()
    csv_rows = (tmp_path / "out" / "failed.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 5 + 1  # header, failures, the NaN warning
    assert report["ignored"] == [str(tmp_path / "in" / "README.txt")]
    printed = capsys.readouterr()
    assert "failed: truncated.png" in printed.out + printed.err  # one line on screen per failure
    assert "failed 5" in printed.out
    assert not leftovers(tmp_path / "out")


def test_rerun_skips_complete_outputs_cleans_temporaries_and_overwrite_redoes(tmp_path, checkpoint):
    for i in range(3):
        write_geotiff(tmp_path / "in" / f"{i}.tif", random_image(40, 40, i))
    first = infer(checkpoint, tmp_path / "out", input=str(tmp_path / "in"), progress=False)
    assert len(first.done) == 3
    (tmp_path / "out" / "1.tif").unlink()  # lost output ...
    stale = tmp_path / "out" / f".1.tif{TMP_MARK}.tif"
    stale.write_bytes(b"half a file")  # ... and a temporary left by a killed run
    second = infer(checkpoint, tmp_path / "out", input=str(tmp_path / "in"), progress=False)
    assert (second.done, sorted(second.skipped)) == (["1.tif"], ["0.tif", "2.tif"])
    assert not stale.exists()
    third = infer(checkpoint, tmp_path / "out", input=str(tmp_path / "in"), progress=False, overwrite=True)
    assert len(third.done) == 3


def test_change_detection_inputs_are_paired_by_relative_path(tmp_path):
    for side in ("A", "B"):
        (tmp_path / side / "sub").mkdir(parents=True)
    for name in ("sub/x.png", "y.png", "only_a.png"):
        (tmp_path / "A" / name).touch()
    for name in ("sub/x.png", "y.png", "only_b.png"):
        (tmp_path / "B" / name).touch()
    files = {s: sorted(p for p in (tmp_path / s).rglob("*.png")) for s in "AB"}
    pairs, unpaired = pair_inputs(tmp_path / "A", files["A"], tmp_path / "B", files["B"])
    assert [(a.relative_to(tmp_path / "A").as_posix(), b.relative_to(tmp_path / "B").as_posix())
            for a, b in pairs] == [("sub/x.png", "sub/x.png"), ("y.png", "y.png")]
    assert sorted(n for n, _ in unpaired) == ["only_a.png", "only_b.png"]


def test_bad_arguments_give_a_clear_error(tmp_path, checkpoint, capsys):
    assert main(["infer", "--checkpoint", str(tmp_path / "missing.safetensors"), "--input", str(tmp_path),
                 "--output", str(tmp_path / "o")]) == 2
    assert main(["infer", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "nope"),
                 "--output", str(tmp_path / "o")]) == 2
    assert main(["infer", "--checkpoint", str(checkpoint), "--input", str(tmp_path), "--output",
                 str(tmp_path / "o"), "--overlap", "600"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint not found" in err and "input not found" in err and "overlap" in err


# ---- processes: kill and resume, shards ------------------------------------------------------------------
def run_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vadapt.cli", "infer", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def folder_of_scenes(folder: Path, n: int, size: int = 96) -> None:
    for i in range(n):
        write_geotiff(folder / f"scene_{i:02d}.tif", random_image(size, size, i))


def masks_of(folder: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(folder).as_posix(): read_mask(p) for p in sorted(folder.rglob("*.tif"))}


def test_sigkill_then_rerun_finishes_with_no_partial_files(tmp_path, checkpoint):
    folder_of_scenes(tmp_path / "in", 10)
    # no --overlap: the default (64) would not fit the 32-px tile, so a quarter of the tile is used
    args = ["--checkpoint", str(checkpoint), "--input", str(tmp_path / "in"), "--tile", "32",
            "--batch-size", "2", "--quiet"]
    reference = run_cli(*args, "--output", str(tmp_path / "ref"))
    assert reference.wait(timeout=300) == 0, reference.stdout.read()
    proc = run_cli(*args, "--output", str(tmp_path / "out"))
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "out").glob("scene_*.tif")):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = list((tmp_path / "out").glob("scene_*.tif"))
    assert 0 < len(done_before) < 10, "the run was not killed mid-way; make the job longer"
    again = run_cli(*args, "--output", str(tmp_path / "out"))
    assert again.wait(timeout=300) == 0
    assert "skipped" in again.stdout.read()
    assert not leftovers(tmp_path / "out")
    got, want = masks_of(tmp_path / "out"), masks_of(tmp_path / "ref")
    assert sorted(got) == sorted(want)
    for name in want:
        assert (got[name] == want[name]).mean() > 0.999, name


def test_two_shards_produce_exactly_the_outputs_of_one_process(tmp_path, checkpoint):
    folder_of_scenes(tmp_path / "in", 5, size=48)
    (tmp_path / "in" / "broken.tif").write_bytes(b"II*\x00 not really a tiff")
    args = ["--checkpoint", str(checkpoint), "--input", str(tmp_path / "in"), "--quiet", "--num-workers", "0"]
    single = run_cli(*args, "--output", str(tmp_path / "one"))
    shards = [run_cli(*args, "--output", str(tmp_path / "two"), "--num-shards", "2", "--shard-index", str(i))
              for i in range(2)]
    assert single.wait(timeout=300) == 1  # the broken file
    assert sorted(p.wait(timeout=300) for p in shards) == [0, 1]  # it is reported by exactly one shard
    one, two = masks_of(tmp_path / "one"), masks_of(tmp_path / "two")
    assert sorted(one) == sorted(two) and len(one) == 5
    for name in one:
        assert np.array_equal(one[name], two[name]), name
    reports = [json.loads(p.read_text()) for p in sorted((tmp_path / "two").glob("report.shard*of2.json"))]
    assert sorted(sum((r["done"] for r in reports), [])) == sorted(one)
    assert sum(len(r["failed"]) for r in reports) == 1


def test_python_api_is_exported():
    import vadapt

    assert vadapt.infer is infer
    assert os.environ.get("GDAL_CACHEMAX")  # set by the engine so GDAL's cache stays small


def test_change_detection_pairs_give_the_models_change_mask(tmp_path):
    from conftest import change_detection_checkpoint

    ckpt = change_detection_checkpoint(tmp_path)
    before, after = random_image(64, 72, 5), random_image(64, 72, 6)
    for folder, image in (("A", before), ("B", after)):
        (tmp_path / folder).mkdir()
        Image.fromarray((image.transpose(1, 2, 0) * 255).astype(np.uint8)).save(tmp_path / folder / "pair.png")
    Image.fromarray(np.zeros((64, 72, 3), np.uint8)).save(tmp_path / "A" / "lonely.png")
    report = infer(ckpt, tmp_path / "out", input_a=str(tmp_path / "A"), input_b=str(tmp_path / "B"),
                   progress=False, probabilities=True)
    assert report.done == ["pair.png"]
    assert [name for name, _ in report.failed] == ["lonely.png"] and "'after' folder" in report.failed[0][1]
    quantised = [np.asarray(Image.open(tmp_path / f / "pair.png"), dtype=np.float32).transpose(2, 0, 1)
                 for f in "AB"]
    model = load_task(ckpt).eval()
    with torch.no_grad():
        expected = model(*(torch.from_numpy(q)[None] for q in quantised)).argmax(1)[0].numpy()
    assert expected.min() != expected.max()  # the random model predicts both classes: the comparison means something
    assert (read_mask(tmp_path / "out" / "pair.png") == expected).mean() > 0.999  # merged LoRA: float-level changes


# ---- batch-norm folding -------------------------------------------------------------------------------------
def test_folding_batch_norms_keeps_the_outputs_and_drops_the_norms(checkpoint):
    from vadapt.inference.fuse import fold_batch_norms

    task, reference = load_task(checkpoint).eval(), load_task(checkpoint).eval()
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in task.modules())
    folded = fold_batch_norms(task, torch.rand(1, 3, 40, 40))
    assert 0 < folded <= norms
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in task.modules()) == norms - folded
    x = torch.rand(2, 3, 72, 96)
    with torch.no_grad():
        got, want = task(x), reference(x)
    assert (got - want).abs().max() < 1e-4 * want.abs().max()  # float rounding of the folded weights only


def test_folding_is_undone_where_another_module_reads_the_convolution():
    from torch import nn

    from vadapt.inference.fuse import fold_batch_norms

    class Skip(nn.Module):  # conv output feeds the norm *and* the residual sum
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = Skip().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    x = torch.rand(1, 3, 16, 16)
    before = model(x).detach()
    assert fold_batch_norms(model, x) == 0
    assert isinstance(model.bn, nn.BatchNorm2d) and torch.equal(model(x).detach(), before)


def test_an_automatic_promptable_checkpoint_runs_over_a_folder(tmp_path):
    from vadapt.tasks import PromptableSegmentationTask
    from vadapt.tasks.promptable_config import PromptingConfig

    task = PromptableSegmentationTask(backbone="sam_test", prompting=PromptingConfig(mode="automatic"),
                                      mean=[0.5] * 3, std=[0.25] * 3)
    ckpt = save_adapter(task, tmp_path / "auto.safetensors")
    write_geotiff(tmp_path / "in" / "a.tif", random_image(40, 50, 0))
    with pytest.raises(ValueError, match="larger than this model's input size 64"):
        infer(ckpt, tmp_path / "out", input=str(tmp_path / "in"), tile=128, progress=False)
    torch.manual_seed(1)  # the tiny frozen encoder is random (no weights file): the same seed rebuilds it alike
    report = infer(ckpt, tmp_path / "out", input=str(tmp_path / "in"), tile=64, overlap=16, progress=False,
                   probabilities=True)
    assert report.done == ["a.tif"]
    with rasterio.open(tmp_path / "out" / "a_prob.tif") as src:
        probs = src.read()
    torch.manual_seed(1)
    with torch.no_grad():
        logit = load_task(ckpt).eval()(torch.from_numpy(random_image(40, 50, 0))[None])[0][0, 0]
    assert probs.shape == (2, 40, 50)
    assert np.allclose(probs[1], torch.sigmoid(logit).numpy(), atol=1e-4)  # the object probability is sigmoid(l)


def test_a_promptable_checkpoint_is_refused_with_a_reason(tmp_path, capsys):
    from vadapt.tasks import PromptableSegmentationTask

    ckpt = save_adapter(PromptableSegmentationTask(backbone="sam_test", mean=[0.5] * 3, std=[0.25] * 3),
                        tmp_path / "sam.safetensors")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.png")
    assert main(["infer", "--checkpoint", str(ckpt), "--input", str(tmp_path / "x.png"), "--output",
                 str(tmp_path / "out"), "--quiet"]) == 2
    assert "need point / box prompts" in capsys.readouterr().err


# ---- settings: InferOptions, the single source of defaults and help -----------------------------------------
def _infer_args(*flags: str):
    from vadapt.cli import _parser

    return _parser().parse_args(["infer", "--checkpoint", "c.safetensors", "--output", "out", *flags])


def test_cli_defaults_are_the_infer_options_defaults():
    from dataclasses import fields

    from vadapt.inference import InferOptions

    args, defaults = _infer_args(), InferOptions()
    for f in fields(InferOptions):
        assert getattr(args, f.name) == getattr(defaults, f.name), f.name
    assert InferOptions(**{f.name: getattr(args, f.name) for f in fields(InferOptions)}) == defaults


def test_cli_flags_reach_the_options_with_their_types():
    from dataclasses import fields

    from vadapt.inference import InferOptions

    args = _infer_args("--tile", "256", "--overlap", "16", "--batch-size", "3", "--precision", "bf16", "--no-merge",
                       "--quiet", "--overwrite", "--file-bands", "blue", "red", "--scale", "0.01", "--blend", "mean",
                       "--offset", "-0.1", "--geometry", "native", "--ignore-nodata", "--tta", "d4", "--tta-scales",
                       "0.75", "1")
    options = InferOptions(**{f.name: getattr(args, f.name) for f in fields(InferOptions)})
    assert options == InferOptions(tile=256, overlap=16, batch_size=3, precision="bf16", merge=False, progress=False,
                                   overwrite=True, file_bands=("blue", "red"), scale=0.01, blend="mean", offset=-0.1,
                                   geometry="native", ignore_nodata=True, tta="d4", tta_scales=(0.75, 1.0))
    assert (options.tile_overlap, options.stride) == (16, 240)


def test_infer_help_shows_every_settings_help_text(capsys, monkeypatch):
    from dataclasses import fields

    from vadapt.inference.options import InferOptions, field_help

    texts = field_help()
    assert sorted(texts) == sorted(f.name for f in fields(InferOptions))  # every field documented, nothing else
    monkeypatch.setenv("COLUMNS", "2000")  # argparse wraps at the terminal width (and breaks at hyphens)
    with pytest.raises(SystemExit) as exit_info:
        main(["infer", "--help"])
    assert exit_info.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    for name, text in texts.items():
        assert text, name
        assert " ".join(text.removesuffix(".").split()) in shown, name
    for flag in ("--tile", "--overlap", "--batch-size", "--num-workers", "--model-threads", "--file-bands",
                 "--num-shards", "--shard-index", "--no-merge", "--quiet", "--probabilities", "--overlay"):
        assert flag in shown
    assert "(default 512)" in shown and "{fp32,bf16,fp16}" in shown


def test_building_the_cli_parser_imports_neither_torch_nor_numpy():
    code = ("import sys; from vadapt.cli import _parser; "
            "_parser().parse_args(['infer', '--checkpoint', 'c', '--output', 'o']); "
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name,value", [("tile", 0), ("overlap", 600), ("overlap", -1), ("batch_size", 0),
                                        ("num_workers", -1), ("precision", "fp64"), ("format", "jpg"),
                                        ("blend", "max"), ("shard_index", 1), ("num_shards", 0), ("scale", 0.0),
                                        ("tile", "512"), ("merge", "no"), ("file_bands", ["red", ""]),
                                        ("device", ""), ("offset", float("inf")), ("geometry", "warped"),
                                        ("tta", "d8"), ("tta_scales", [0.5, 0.0]), ("tta_scales", ["x"])])
def test_a_bad_setting_raises_a_value_error_naming_it(name, value):
    from vadapt.inference import InferOptions

    with pytest.raises(ValueError, match=rf"^{name} ") as raised:
        InferOptions(**{name: value})
    assert repr(value if name not in ("file_bands", "tta_scales") else tuple(value)) in str(raised.value)


def test_infer_checks_its_settings_before_touching_anything(tmp_path, checkpoint, capsys):
    with pytest.raises(ValueError, match=r"^overlap must be in \[0, tile=64\), got 64$"):
        infer(checkpoint, tmp_path / "out", input=str(tmp_path), tile=64, overlap=64)
    with pytest.raises(TypeError, match=r"'tiles'; did you mean 'tile'\?"):
        infer(checkpoint, tmp_path / "out", input=str(tmp_path), tiles=256)
    with pytest.raises(TypeError, match=r"'num_worker'; did you mean 'num_workers'\?"):
        infer(checkpoint, tmp_path / "out", input=str(tmp_path), num_worker=0)
    assert not (tmp_path / "out").exists()
    assert main(["infer", "--checkpoint", str(checkpoint), "--input", str(tmp_path), "--output",
                 str(tmp_path / "out"), "--scale", "-1"]) == 2
    assert "scale must be a finite number above 0, got -1.0" in capsys.readouterr().err


def test_options_object_and_keywords_give_the_same_run(tmp_path, checkpoint):
    from vadapt.inference import InferOptions

    write_geotiff(tmp_path / "in" / "a.tif", random_image(70, 90, 7))
    options = InferOptions(tile=48, overlap=16, batch_size=2, progress=False, probabilities=True)
    by_object = infer(checkpoint, tmp_path / "o1", input=str(tmp_path / "in"), options=options)
    by_keywords = infer(checkpoint, tmp_path / "o2", input=str(tmp_path / "in"), tile=48, overlap=16, batch_size=2,
                        progress=False, probabilities=True)
    assert by_object.tiles == by_keywords.tiles == len(tile_grid(70, 90, 48, 32))
    assert np.array_equal(read_mask(tmp_path / "o1" / "a.tif"), read_mask(tmp_path / "o2" / "a.tif"))
    overridden = infer(checkpoint, tmp_path / "o1", input=str(tmp_path / "in"), options=options, overwrite=True,
                       probabilities=False)  # keywords override the object's fields
    assert overridden.done == ["a.tif"] and options.overwrite is False


def test_options_build_merges_and_normalises():
    from vadapt.inference import InferOptions

    base = InferOptions(tile=256, file_bands=["red", "nir"])
    assert base.file_bands == ("red", "nir") and hash(base) == hash(InferOptions(tile=256, file_bands=("red", "nir")))
    assert InferOptions.build(base, overlap=8) == InferOptions(tile=256, overlap=8, file_bands=("red", "nir"))
    assert InferOptions.build(base) is base
    with pytest.raises(TypeError, match="InferOptions"):
        InferOptions.build({"tile": 256})  # type: ignore[arg-type]
    # None: chosen for the tile and the device (the rules the help texts state)
    assert [InferOptions(tile=t).tile_overlap for t in (512, 256, 128, 32)] == [64, 64, 32, 8]
    assert (InferOptions().batch_size_on("cpu"), InferOptions().batch_size_on("cuda")) == (1, 8)
    assert (InferOptions().model_threads_on("cpu", 4), InferOptions().model_threads_on("cpu", 1),
            InferOptions().model_threads_on("cuda", 8)) == (2, 1, 1)


def test_option_choices_match_the_engine():
    from typing import get_args

    from vadapt import tiling
    from vadapt.inference import engine, tta
    from vadapt.inference.options import CHOICES

    assert set(CHOICES["blend"]) == set(get_args(tiling.Blend))
    assert set(CHOICES["precision"]) == set(engine.PRECISIONS)
    assert CHOICES["tta"] == tta.TTA_MODES


def test_the_app_tiles_with_the_infer_defaults(checkpoint):
    from vadapt.app.predict import tile_size
    from vadapt.inference import InferOptions

    assert tile_size(load_task(checkpoint)) == InferOptions().tile
