"""Where ``vadapt fit`` writes and what it draws: every output under ``trainer.default_root_dir`` (the shipped
configs set it and pin no logger folder), ``curves.png`` beside ``metrics.csv``, titled prediction pictures."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from vadapt.cli import main
from vadapt.visualize import (
    PALETTE,
    PANEL_SIZE,
    READABLE_ROW_HEIGHT,
    class_legend,
    prediction_panel,
    read_epoch_metrics,
)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "conf" / "seg_efficientnet_lite0_lora.yaml"  # 64-px crops, 2 train + 1 val batches
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.usefixtures("one_thread")


def shipped_style_config(tmp_path: Path) -> tuple[Path, Path]:
    """The tiny segmentation YAML written as the shipped configs are now: ``trainer.default_root_dir`` set, no
    logger named. Returns the file and the root it names."""
    cfg = yaml.safe_load(TINY.read_text())
    configured = tmp_path / "configured"
    cfg["trainer"] = {"max_epochs": 1, "accelerator": "cpu", "default_root_dir": str(configured),
                      "log_every_n_steps": 1}
    path = tmp_path / "shipped_style.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, configured


def colour_pixels(picture: Image.Image, colour) -> np.ndarray:
    """``(N, 2)`` (y, x) of the pixels of exactly ``colour``."""
    return np.argwhere((np.asarray(picture.convert("RGB")) == np.asarray(colour, dtype=np.uint8)).all(-1))


# ---- a tiny fit: everything under the root given on the command line --------------------------------------
def test_default_root_dir_on_the_command_line_moves_every_output(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the tiny YAML reads data/cloud_scene/... relative to the repository
    config, configured = shipped_style_config(tmp_path)
    run = tmp_path / "elsewhere"
    main(["fit", "--config", str(config), "--trainer.default_root_dir", str(run), "--trainer.max_epochs", "2",
          "--model.init_args.preview_images", "2", "--trainer.enable_progress_bar", "false"])
    said = capsys.readouterr().out

    assert not configured.exists()  # the config's own folder is left alone
    log_dir = run / "lightning_logs" / "version_0"
    for name in ("metrics.csv", "curves.png", "adapter.safetensors", "config.yaml", "hparams.yaml"):
        assert (log_dir / name).is_file(), name
    assert [p.name for p in sorted((log_dir / "predictions").glob("epoch_*.png"))] == ["epoch_000.png",
                                                                                      "epoch_001.png"]
    assert list((log_dir / "checkpoints").glob("*.ckpt"))
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert saved["trainer"]["logger"]["init_args"]["save_dir"] == str(run)  # the root, not a placeholder
    assert f"{log_dir / 'curves.png'}" in said  # the summary names the curves

    curves = log_dir / "curves.png"
    assert curves.read_bytes()[:8] == PNG_MAGIC
    with Image.open(curves) as picture:
        picture.verify()
    picture = Image.open(curves)
    # loss + miou + mdice + macc: 2 x 2 charts under a title
    assert picture.width == 2 * PANEL_SIZE[0] and 2 * PANEL_SIZE[1] < picture.height < 2 * PANEL_SIZE[1] + 80
    assert len(colour_pixels(picture, PALETTE[0])) > 50 and len(colour_pixels(picture, PALETTE[1])) > 50

    prediction = Image.open(log_dir / "predictions" / "epoch_001.png").convert("RGB")
    assert prediction.height >= 2 * READABLE_ROW_HEIGHT  # two rows of at least 200 px (64-px crops enlarged)
    assert prediction.width >= 3 * READABLE_ROW_HEIGHT  # image | truth | prediction, square tiles
    title = np.asarray(prediction)[:20]
    assert (title.min(-1) < 100).mean() > 0.005  # column titles written ...
    assert (title.min(-1) > 240).mean() > 0.7  # ... on a white strip above the tiles


def run_cli_without_fitting(argv: list[str]):
    """The trainer ``vadapt fit`` would build from ``argv`` (LightningCLI with ``run=False``)."""
    from lightning import LightningDataModule

    from vadapt.adapters import enable_adapter_configs
    from vadapt.lightning_cli import VadaptCLI
    from vadapt.tasks.base import BaseTask

    enable_adapter_configs()
    cli = VadaptCLI(BaseTask, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, args=argv,
                    run=False, parser_kwargs={"exit_on_error": False})
    return cli.trainer


@pytest.mark.parametrize(("extra", "expected"), [
    ([], [("CSVLogger", "configured")]),
    (["--trainer.default_root_dir", "{tmp}/elsewhere"], [("CSVLogger", "elsewhere")]),
    # app/demo_files.py and benchmarks pass both: an explicit save_dir is kept
    (["--trainer.default_root_dir", "{tmp}/elsewhere", "--trainer.logger.init_args.save_dir", "{tmp}/given"],
     [("CSVLogger", "given")]),
    (["--trainer.default_root_dir", "{tmp}/elsewhere", "--trainer.logger+=TensorBoardLogger",
      "--trainer.logger.save_dir", "${trainer.default_root_dir}", "--trainer.logger.name", "tensorboard"],
     [("CSVLogger", "elsewhere"), ("TensorBoardLogger", "elsewhere")]),
    (["--trainer.logger", "false"], []),
])
def test_loggers_follow_the_root_unless_told_otherwise(extra, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    config, _ = shipped_style_config(tmp_path)
    argv = ["--config", str(config), *(a.replace("{tmp}", str(tmp_path)) for a in extra)]
    trainer = run_cli_without_fitting(argv)
    assert [(type(lg).__name__, Path(lg.save_dir)) for lg in trainer.loggers] == [
        (kind, tmp_path / folder) for kind, folder in expected]


def test_shipped_configs_pin_no_logger_folder():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        trainer = yaml.safe_load(path.read_text()).get("trainer") or {}
        logger = trainer.get("logger")
        assert not (isinstance(logger, dict) and "save_dir" in (logger.get("init_args") or {})), path.name


# ---- curves.png from a metrics.csv written by hand ---------------------------------------------------------
def write_metrics(path: Path, epochs: int = 6) -> None:
    """A ``metrics.csv`` laid out as Lightning's CSVLogger writes it: step rows, then per epoch a validation row
    and a training row; the train loss falls, the val miou rises."""
    columns = ["epoch", "step", "train/loss_step", "train/loss_epoch", "train/miou", "val/loss", "val/miou",
               "val/mdice", "val/iou_road"]
    rows = []
    for epoch in range(epochs):
        rows.append({"epoch": epoch, "step": 10 * epoch + 4, "train/loss_step": 9.0})
        rows.append({"epoch": epoch, "step": 10 * epoch + 9, "val/loss": 1.5 - 0.1 * epoch, "val/miou": 0.1 * epoch,
                     "val/mdice": "nan" if epoch == 0 else 0.12 * epoch, "val/iou_road": 0.05 * epoch})
        rows.append({"epoch": epoch, "step": 10 * epoch + 9, "train/loss_epoch": 2.0 / (epoch + 1),
                     "train/miou": 0.15 * epoch})
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def test_read_epoch_metrics_keeps_epoch_values_only(tmp_path):
    write_metrics(tmp_path / "metrics.csv", epochs=3)
    series = read_epoch_metrics(tmp_path / "metrics.csv")
    assert set(series) == {"train/loss", "train/miou", "val/loss", "val/miou", "val/mdice", "val/iou_road"}
    assert series["train/loss"] == [(0.0, 2.0), (1.0, 1.0), (2.0, pytest.approx(2 / 3))]
    assert [e for e, _ in series["val/mdice"]] == [1.0, 2.0]  # nan left out


def test_curves_drawn_from_a_hand_written_metrics_csv(tmp_path):
    from vadapt.tasks.base import curve_panels, write_curves

    write_metrics(tmp_path / "metrics.csv")
    panels = curve_panels(read_epoch_metrics(tmp_path / "metrics.csv"))
    assert [(name, sorted(lines)) for name, lines in panels] == [
        ("loss", ["train", "val"]), ("miou", ["train", "val"]), ("mdice", ["val"]), ("iou_road", ["val"])]

    path = write_curves(tmp_path / "metrics.csv", tmp_path / "curves.png")
    assert path == tmp_path / "curves.png" and path.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "metrics.csv"]  # no temporary file left
    picture = Image.open(path).convert("RGB")
    assert picture.width == 2 * PANEL_SIZE[0] and picture.height > 2 * PANEL_SIZE[1]
    top = picture.height - 2 * PANEL_SIZE[1]  # the title strip
    loss = picture.crop((0, top, PANEL_SIZE[0], top + PANEL_SIZE[1]))  # the first chart
    train = colour_pixels(loss, PALETTE[0])  # the train line: first label, first colour
    val = colour_pixels(loss, PALETTE[1])
    assert len(train) > 100 and len(val) > 100
    # the train loss falls: its line is higher (smaller y) at the left than at the right of the chart
    left, right = train[train[:, 1] < train[:, 1].min() + 10], train[train[:, 1] > train[:, 1].max() - 10]
    assert left[:, 0].mean() < right[:, 0].mean() - 100
    # the val loss (1.5 .. 1.0) lies above the train loss at the end (2.0 / 6 = 0.33)
    assert val[val[:, 1] > val[:, 1].max() - 10][:, 0].mean() < right[:, 0].mean()
    # the mdice chart has only a val line: no train colour in it
    mdice = picture.crop((0, top + PANEL_SIZE[1], PANEL_SIZE[0], picture.height))
    assert len(colour_pixels(mdice, PALETTE[0])) == 0 and len(colour_pixels(mdice, PALETTE[1])) > 100


def test_no_curves_before_any_epoch_value(tmp_path):
    from vadapt.tasks.base import write_curves

    (tmp_path / "metrics.csv").write_text("epoch,step,train/loss_step\n0,4,0.9\n")
    assert write_curves(tmp_path / "metrics.csv", tmp_path / "curves.png") is None
    assert write_curves(tmp_path / "missing.csv", tmp_path / "curves.png") is None
    assert not (tmp_path / "curves.png").exists()


# ---- prediction pictures -----------------------------------------------------------------------------------
def panel_rows(size: int = 16, count: int = 2) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(count):
        truth = rng.integers(0, 3, (size, size))
        truth[0] = 255  # an ignored strip
        rows.append((rng.random((3, size, size)), truth, rng.integers(0, 3, (size, size))))
    return rows


def test_readable_prediction_panel_has_titles_legend_and_rows_of_200_px():
    rows = panel_rows()
    picture = prediction_panel(rows, ["red", "green", "blue"], 255, readable=True,
                               class_names=["clear", "cloud", "shadow"])
    scale = -(-READABLE_ROW_HEIGHT // 16)  # 13: the smallest whole factor reaching 200 px
    assert picture.width == 3 * 16 * scale + 2 * 4
    grid = 2 * 16 * scale + 4
    assert picture.height > grid + 20  # a title strip and a legend strip besides the two rows
    pixels = np.asarray(picture)
    title_strip = pixels[:20]
    assert (title_strip.min(-1) < 100).any() and (title_strip.min(-1) > 240).mean() > 0.7
    legend = Image.fromarray(pixels[-20:])
    for colour, _ in zip(PALETTE, range(3)):  # one swatch per class, in colorize's colours
        assert len(colour_pixels(legend, colour)) > 20
    assert [name for name, _ in class_legend(["clear", "cloud", "shadow"], 255)][-1] == "ignored (255)"


def test_bare_prediction_panel_keeps_its_grid_for_overlays():
    picture = prediction_panel(panel_rows(), ["red", "green", "blue"], 255)
    assert picture.size == (3 * 16 + 2 * 4, 2 * 16 + 4)  # what promptable's overlay drawing expects
