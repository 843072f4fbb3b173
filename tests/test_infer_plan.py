"""`vadapt infer` talks first: its plan (images, sizes, tiles, outputs, problems found in headers) is said before the
model loads, a status line shows the loading, and what goes to a log has no control characters."""

from __future__ import annotations

import csv
import io
import re
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from vadapt.adapters import LoraConfig
from vadapt.checkpoint import save_adapter
from vadapt.inference import infer, tile_grid
from vadapt.inference.console import Console
from vadapt.tasks import SemanticSegmentationTask

BANDS = ("red", "green", "blue")
SIZES = {"a.tif": (70, 90), "b.tif": (40, 40), "sub/c.tif": (100, 60)}  # (height, width)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, effnet_weights) -> Path:
    task = SemanticSegmentationTask(backbone="efficientnet_lite0_test", weights=effnet_weights, bands=BANDS,
                                    num_classes=3, head="fpn", adapter=LoraConfig(r=4), mean=[0.5] * 3,
                                    std=[0.25] * 3)
    return save_adapter(task, tmp_path_factory.mktemp("ckpt") / "adapter.safetensors")


def write_tif(path: Path, height: int, width: int, names: tuple[str, ...] = BANDS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(height * width).random((len(names), height, width), dtype=np.float32)
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=len(names), dtype="float32",
                       crs="EPSG:32633", transform=from_origin(500_000, 5_000_000, 10, 10)) as dst:
        dst.write(data)
        dst.descriptions = names


def folder(root: Path, sizes: dict[str, tuple[int, int]] = SIZES) -> Path:
    for name, (height, width) in sizes.items():
        write_tif(root / name, height, width)
    return root


def planned_tiles(text: str) -> int:
    found = re.search(r"tiles: (\d+) in all", text)
    assert found, text
    return int(found.group(1))


class Loading:
    """A stand-in for ``load_task`` that records what had been said when the model was asked for, then refuses
    (``real`` None) or loads it."""

    def __init__(self, capsys, real=None) -> None:
        self.capsys, self.real, self.said = capsys, real, None

    def __call__(self, *args, **kwargs):
        captured = self.capsys.readouterr()
        self.said = captured.out + captured.err
        if self.real is None:
            raise RuntimeError("no model in this test")
        return self.real(*args, **kwargs)


def test_the_plan_is_said_before_the_model_loads(tmp_path, checkpoint, monkeypatch, capsys):
    loading = Loading(capsys)
    monkeypatch.setattr("vadapt.loading.load_task", loading)
    with pytest.raises(RuntimeError, match="no model in this test"):
        infer(checkpoint, tmp_path / "out", input=str(folder(tmp_path / "in")), tile=48, overlap=16)
    said = loading.said
    assert "3 inputs in" in said and "3 to predict, 0 already done (skipped), 0 failed" in said
    assert "sizes: 40x40 to 90x70 px" in said  # smallest and largest, width x height
    assert planned_tiles(said) == sum(len(tile_grid(h, w, 48, 32)) for h, w in SIZES.values())
    assert "model: efficientnet_lite0_test + lora, 3 classes from 3 bands: red green blue" in said
    assert "overlap 16 px" in said and "report.json" in said and "masks (.tif)" in said
    assert said.rstrip().endswith("loading model efficientnet_lite0_test + lora ...")  # the last thing said


def test_a_file_with_the_wrong_bands_fails_in_the_plan_and_the_others_are_predicted(tmp_path, checkpoint,
                                                                                    monkeypatch, capsys):
    from vadapt.loading import load_task

    root = folder(tmp_path / "in")
    write_tif(root / "two_bands.tif", 32, 32, names=("red", "green"))
    loading = Loading(capsys, real=load_task)
    monkeypatch.setattr("vadapt.loading.load_task", loading)
    report = infer(checkpoint, tmp_path / "out", input=str(root), tile=48, overlap=16, num_workers=0)
    said = loading.said  # before the model loaded
    assert "4 inputs in" in said and "3 to predict, 0 already done (skipped), 1 failed" in said
    failure = re.search(r"^failed: two_bands\.tif: (.*)$", said, re.M)
    assert failure and "['blue']" in failure.group(1)  # names the band it lacks
    assert sorted(report.done) == sorted(SIZES) and [name for name, _ in report.failed] == ["two_bands.tif"]
    assert report.tiles == planned_tiles(said)  # the plan counted what the run predicted
    with open(tmp_path / "out" / "failed.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["input"], r["status"]) for r in rows] == [("two_bands.tif", "failed")]
    assert rows[0]["reason"] == failure.group(1)


def test_a_log_gets_plain_lines_without_carriage_returns_or_escape_sequences(tmp_path, checkpoint, capsys):
    infer(checkpoint, tmp_path / "out", input=str(folder(tmp_path / "in")), tile=48, overlap=16, num_workers=0)
    captured = capsys.readouterr()
    said = captured.out + captured.err
    assert "\r" not in said and "\x1b" not in said
    lines = said.splitlines()
    assert lines.count("loading model efficientnet_lite0_test + lora ...") == 1
    assert lines[-1].startswith("vadapt infer: 3/3 files")  # the last progress line says all were done


def test_quiet_says_only_what_failed(tmp_path, checkpoint, capsys):
    root = folder(tmp_path / "in", {"a.tif": (40, 40)})
    write_tif(root / "two_bands.tif", 32, 32, names=("red", "green"))
    report = infer(checkpoint, tmp_path / "out", input=str(root), num_workers=0, progress=False)
    captured = capsys.readouterr()
    assert report.done == ["a.tif"]
    assert captured.out == "" and captured.err.startswith("failed: two_bands.tif: ")
    assert len(captured.err.splitlines()) == 1


def test_a_rerun_with_nothing_to_do_does_not_load_the_model(tmp_path, checkpoint, monkeypatch, capsys):
    root = folder(tmp_path / "in")
    infer(checkpoint, tmp_path / "out", input=str(root), num_workers=0, progress=False)
    loading = Loading(capsys)
    monkeypatch.setattr("vadapt.loading.load_task", loading)
    report = infer(checkpoint, tmp_path / "out", input=str(root))
    assert loading.said is None and sorted(report.skipped) == sorted(SIZES) and report.ok
    captured = capsys.readouterr()
    said = captured.out + captured.err
    assert "0 to predict, 3 already done (skipped)" in said and "loading model" not in said
    assert "values x 1" in report.preprocessing  # still says how the values would be read


def test_a_promptable_checkpoint_is_refused_before_its_model_loads(tmp_path, monkeypatch, capsys):
    from vadapt.tasks import PromptableSegmentationTask

    ckpt = save_adapter(PromptableSegmentationTask(backbone="sam_test", mean=[0.5] * 3, std=[0.25] * 3),
                        tmp_path / "sam.safetensors")
    write_tif(tmp_path / "in" / "x.tif", 32, 32)
    monkeypatch.setattr("vadapt.loading.load_task", Loading(capsys))
    with pytest.raises(ValueError, match="need point / box prompts"):
        infer(ckpt, tmp_path / "out", input=str(tmp_path / "in"))


def test_a_lightning_checkpoint_is_planned_without_its_details_and_then_run(tmp_path, effnet_weights, capsys):
    task = SemanticSegmentationTask(backbone="efficientnet_lite0_test", weights=effnet_weights, bands=BANDS,
                                    num_classes=3, head="fpn", adapter=LoraConfig(r=4), mean=[0.5] * 3,
                                    std=[0.25] * 3)
    saved: dict = {}
    task.on_save_checkpoint(saved)
    torch.save(saved, tmp_path / "last.ckpt")
    report = infer(tmp_path / "last.ckpt", tmp_path / "out", input=str(folder(tmp_path / "in", {"a.tif": (40, 40)})),
                   num_workers=0)
    captured = capsys.readouterr()
    said = captured.out + captured.err
    assert report.done == ["a.tif"]
    assert "1 to predict" in said and "known once the model is loaded" in said
    assert not re.search(r"tiles: \d+ in all", said)  # not counted from a guess
    assert said.index("1 to predict") < said.index("loading model last.ckpt ...")

# ---- the status line -----------------------------------------------------------------------------------------------
class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def final_line(text: str) -> str:
    """What a terminal shows of the last line: the text after its last carriage return, escapes removed."""
    return re.sub(r"\x1b\[K", "", text.rstrip("\n").rsplit("\r", 1)[-1])


def test_on_a_terminal_the_status_line_is_redrawn_and_left_with_the_seconds():
    screen = Terminal()
    console = Console(stream=screen)
    with console.status("loading model m + lora"):
        time.sleep(3 * Console.REDRAW_S)
    text = screen.getvalue()
    assert text.count("\r") >= 3 and text.endswith("\n")  # redrawn in place while it ran
    assert re.fullmatch(r"loading model m \+ lora \.\.\. \d+\.\d s", final_line(text))
    with pytest.raises(OSError), console.status("loading model m + lora"):
        raise OSError("disk gone")
    assert final_line(screen.getvalue()).endswith(" s (failed)")
    with console.status("reading image headers 0/3", transient=True) as status:
        status.text = "reading image headers 3/3"
    assert screen.getvalue().endswith("\r\x1b[K")  # erased


def test_in_a_log_the_status_is_one_plain_line_and_quiet_says_nothing():
    log = io.StringIO()
    with Console(stream=log).status("loading model m + lora"):
        time.sleep(3 * Console.REDRAW_S)
    with Console(stream=log).status("reading image headers 0/3", transient=True):
        pass
    assert log.getvalue() == "loading model m + lora ...\n"
    quiet = io.StringIO()
    with Console(verbose=False, stream=quiet).status("loading model m + lora"):
        Console(verbose=False, stream=quiet).say("the plan")
    assert quiet.getvalue() == ""
