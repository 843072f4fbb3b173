"""Two CPU processes (DDP over gloo) train and evaluate like one: frozen weights are no DDP trap."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = str(Path(__file__).parent / "conf" / "seg_dinov2_lora.yaml")


def run(args: list[str], cwd: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "vadapt.cli", *args], capture_output=True, text=True, cwd=cwd,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


def last_metrics(folder: Path) -> dict[str, float]:
    rows = list(csv.DictReader(next(folder.rglob("metrics.csv")).open()))
    return {k: float(v) for k, v in rows[-1].items() if v and k.startswith("val/") and k != "val/loss"}


def test_ddp_two_processes_fit_and_match_one_process(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    logger = ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger"]
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    # fit with two processes: must not hang on the frozen backbone, and must write the adapter once
    run(["fit", "--config", CONFIG, *ddp, *logger, "--trainer.logger.save_dir", str(tmp_path / "fit"),
         "--trainer.enable_checkpointing", "true", "--trainer.default_root_dir", str(tmp_path / "fit")], repo)
    ckpt = next((tmp_path / "fit").rglob("*.ckpt"))
    assert len(list((tmp_path / "fit").rglob("adapter.safetensors"))) == 1
    # the same checkpoint evaluated by one process and by two gives the same metrics (14 tiles split 7 + 7)
    run(["validate", "--config", CONFIG, "--ckpt_path", str(ckpt), *logger,
         "--trainer.logger.save_dir", str(tmp_path / "one")], repo)
    run(["validate", "--config", CONFIG, "--ckpt_path", str(ckpt), *ddp, *logger,
         "--trainer.logger.save_dir", str(tmp_path / "two")], repo)
    one, two = last_metrics(tmp_path / "one"), last_metrics(tmp_path / "two")
    assert one.keys() == two.keys() and "val/miou" in one
    assert two == pytest.approx(one, abs=1e-6, nan_ok=True)
