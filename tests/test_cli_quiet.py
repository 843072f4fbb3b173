"""What `vadapt fit` leaves on the user's screen and disk: no Lightning advertisements, no warning about the frozen
batch norms it keeps in eval mode on purpose, and an adapter file with the permissions of any other file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from vadapt.checkpoint import read_manifest, save_adapter
from vadapt.tasks import SemanticSegmentationTask

REPO = Path(__file__).resolve().parents[1]


def test_fit_prints_no_lightning_tips_nor_the_eval_mode_warning(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "vadapt.cli", "fit", "--config", str(REPO / "tests" / "conf" /
                                                                  "seg_efficientnet_lite0_lora.yaml"),
         "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "default"},
    )
    said = result.stdout + result.stderr
    assert result.returncode == 0, said[-2000:]
    assert "adapter checkpoint:" in said  # the run did reach the end of fitting
    # ... and said what it measured and how to use the adapter
    assert "last validation: miou " in said
    assert f"predict: vadapt infer --checkpoint {tmp_path}" in said and "--input IMAGES/ --output MASKS/" in said
    assert "Tip:" not in said and "litlogger" not in said
    assert "in eval mode at the start of training" not in said


def test_adapter_files_get_ordinary_permissions(tmp_path):
    task = SemanticSegmentationTask(backbone="efficientnet_lite0_test", num_classes=2, head="linear")
    umask = os.umask(0o022)
    try:
        path = save_adapter(task, tmp_path / "a.safetensors")
    finally:
        os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o644
    assert read_manifest(path)["task"].endswith("SemanticSegmentationTask")
