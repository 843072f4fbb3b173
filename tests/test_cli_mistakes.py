"""A user's mistakes, through every subcommand: one ``error: ...`` line (exit 2), or exit 1 when the run went but
some files failed; never a traceback. Also: input discovery reports what it cannot read, checkpoints cannot
choose what is imported, and pickled files are refused without advice to unpickle them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vadapt.adapters import LoraConfig
from vadapt.checkpoint import MANIFEST_KEY, AdapterCheckpointError, save_adapter
from vadapt.inference.files import list_inputs
from vadapt.loading import load_adapter, load_lightning_checkpoint
from vadapt.tasks import SemanticSegmentationTask
from vadapt.weights import WeightsMismatchError, read_state_dict

# Runs each case through vadapt.cli.main in ONE interpreter (a process per case would cost seconds each) and
# reports its exit code and stderr, with the traceback if main let an exception out; then whether `this` was
# imported (a checkpoint naming this.X must not import it).
DRIVER = r"""
import contextlib, io, json, sys, traceback
from vadapt.cli import main
results = []
for argv in json.load(open(sys.argv[1])):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
    results.append({"argv": argv, "code": code, "stderr": err.getvalue(), "stdout": out.getvalue()})
print(json.dumps({"results": results, "this_imported": "this" in sys.modules}))
"""


def write_image(path: Path, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def with_task(path: Path, out: Path, task_class: str) -> Path:
    """A copy of adapter checkpoint ``path`` whose manifest names ``task_class``."""
    with safe_open(str(path), framework="pt") as f:
        manifest = json.loads(f.metadata()[MANIFEST_KEY])
    manifest["task"] = task_class
    save_file(load_file(str(path)), str(out), metadata={MANIFEST_KEY: json.dumps(manifest)})
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mistakes")
    task = SemanticSegmentationTask(backbone="efficientnet_lite0_test", weights=None, bands=("red", "green", "blue"),
                                    num_classes=3, head="fpn", adapter=LoraConfig(r=2), mean=[0.5] * 3,
                                    std=[0.25] * 3)
    seg = save_adapter(task, root / "seg.safetensors")
    (root / "garbage.pth").write_bytes(b"not a checkpoint at all")
    (root / "corrupt.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    (root / "a_file").write_text("I am a file")
    (root / "empty").mkdir()
    torch.save({"vadapt_task": "vadapt.tasks.SemanticSegmentationTask", "state_dict": {},
                "hyper_parameters": {"odd": Path("x")}}, root / "pickled.ckpt")
    scenes = root / "scenes[x]"  # an existing folder whose name is a glob pattern
    write_image(scenes / "good.png")
    (scenes / "bad.tif").mkdir()
    (scenes / "gone.png").symlink_to(root / "nowhere.png")
    (root / "typo.yaml").write_text(
        "model:\n  class_path: vadapt.tasks.SemanticSegmentationTask\n  init_args:\n"
        "    backbone: efficientnet_lite0_test\n    weights: null\n    num_classes: 2\n"
        "    adapter: {class_path: vadapt.adapters.LoraConfig, init_args: {rank: 4}}\n")
    return {"root": root, "seg": seg, "this": with_task(seg, root / "this.safetensors", "this.X"),
            "system": with_task(seg, root / "system.safetensors", "os.system"), "scenes": scenes}


def cases(f: dict[str, Path]) -> list[tuple[list[str], int, str]]:
    """(argv, expected exit code, a text the message must name)."""
    r = f["root"]
    missing = str(r / "missing.safetensors")
    out = str(r / "out")
    gen = ["--prompt", "a red circle", "--height", "32", "--width", "32", "--output", out]
    return [
        (["fit", "--config", str(r / "nope.yaml")], 2, "nope.yaml"),
        (["fit", "--config", str(r / "typo.yaml")], 2, "rank"),
        (["infer", "--checkpoint", missing, "--input", str(f["scenes"]), "--output", out], 2, "missing.safetensors"),
        (["infer", "--checkpoint", str(f["seg"]), "--weights", str(r / "garbage.pth"), "--input", str(f["scenes"]),
          "--output", out], 2, "garbage.pth"),
        (["infer", "--checkpoint", str(f["seg"]), "--input", str(f["scenes"]), "--output", str(r / "a_file")], 2,
         "a_file"),
        (["infer", "--checkpoint", str(f["seg"]), "--input", str(r / "empty"), "--output", out], 2, "empty"),
        (["infer", "--checkpoint", str(f["seg"]), "--input", str(f["scenes"]), "--output", str(r / "scenes_out"),
          "--quiet"], 1, "failed"),
        (["infer", "--checkpoint", str(f["this"]), "--input", str(f["scenes"]), "--output", out], 2, "this.X"),
        (["export", "--checkpoint", missing, "--output", str(r / "x.safetensors")], 2, "missing.safetensors"),
        (["export", "--checkpoint", str(r / "corrupt.safetensors"), "--output", str(r / "x.safetensors")], 2,
         "corrupt.safetensors"),
        (["export", "--checkpoint", str(f["system"]), "--output", str(r / "x.safetensors")], 2, "os.system"),
        (["export", "--checkpoint", str(r / "pickled.ckpt"), "--output", str(r / "x.safetensors")], 2, "pickled"),
        (["params", "--config", str(r / "nope.yaml")], 2, "nope.yaml"),
        (["stats", "--config", str(r / "nope.yaml")], 2, "nope.yaml"),
        (["generate", "--checkpoint", str(f["seg"]), *gen], 2, "does not generate"),
        (["generate", "--checkpoint", missing, *gen], 2, "missing.safetensors"),
        (["predict-points", "--checkpoint", missing, "--input", str(r), "--output", out], 2, "missing.safetensors"),
        (["demo", "--port", "notanumber"], 2, "notanumber"),
        (["demo", "--checkpoints", str(r / "no_such_folder")], 2, "no_such_folder"),
    ]


def check(code: int, stderr: str, expected: int, names: str, what: object) -> None:
    assert "Traceback" not in stderr, f"{what}:\n{stderr}"
    assert code == expected, f"{what}: exit {code}, stderr:\n{stderr}"
    lines = [line for line in stderr.splitlines() if "Warning" not in line and "warnings.warn" not in line]
    if expected == 2:
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1 and len(lines) <= 3, f"{what}: not one short message:\n{stderr}"
        assert names in errors[0], f"{what}: {names!r} not named in {errors[0]!r}"
        assert "weights_only" not in stderr


def test_every_subcommand_answers_mistakes_in_one_line(files, tmp_path):
    table = cases(files)
    argvs = tmp_path / "cases.json"
    argvs.write_text(json.dumps([argv for argv, _, _ in table]))
    run = subprocess.run([sys.executable, "-c", DRIVER, str(argvs)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    for (argv, expected, names), result in zip(table, got["results"]):
        check(result["code"], result["stderr"], expected, names, argv[:1] + [Path(a).name for a in argv[1:]])
    assert not got["this_imported"], "a manifest naming this.X imported the module `this`"
    report = json.loads((files["root"] / "scenes_out" / "report.json").read_text())
    assert report["done"] == ["good.png"]  # the folder named scenes[x] was read literally
    assert {row["input"] for row in report["failed"]} == {"bad.tif", "gone.png"}


def test_the_command_itself_answers_in_one_line(files):
    """The real `python -m vadapt.cli`, for two mistakes caught before torch is imported."""
    runs = [(argv, expected, names, subprocess.Popen([sys.executable, "-m", "vadapt.cli", *argv], text=True,
                                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            for argv, expected, names in [
                (["export", "--checkpoint", str(files["root"] / "missing.safetensors"), "--output", "x"], 2,
                 "missing.safetensors"),
                (["demo", "--port", "notanumber"], 2, "notanumber")]]
    for argv, expected, names, proc in runs:
        _, stderr = proc.communicate(timeout=120)
        check(proc.returncode, stderr, expected, names, argv)


# ---- input discovery ----------------------------------------------------------------------------------------
def test_list_inputs_reports_what_it_cannot_read(tmp_path):
    root = tmp_path / "in"
    write_image(root / "a.png")
    (root / "notes.txt").write_text("x")
    (root / "dir.tif").mkdir()
    write_image(root / "dir.tif" / "inside.png")
    (root / "broken.tif").symlink_to(tmp_path / "nowhere.tif")
    (root / "loop.png").symlink_to(root / "loop.png")
    (root / "sub").mkdir()
    (root / "sub" / "up").symlink_to(root)  # a folder link to a folder it is inside
    failures: list[tuple[str, str]] = []
    found_root, images, ignored = list_inputs(root, failures)
    assert found_root == root
    assert images == [root / "a.png", root / "dir.tif" / "inside.png"] and ignored == [root / "notes.txt"]
    reasons = dict(failures)
    assert set(reasons) == {"dir.tif", "broken.tif", "loop.png", os.path.join("sub", "up")}
    assert reasons["dir.tif"] == "is a directory"
    assert "broken symlink" in reasons["broken.tif"]
    assert "symlink loop" in reasons["loop.png"] and "symlink loop" in reasons[os.path.join("sub", "up")]
    # without a failures list nothing is dropped: image-named problems fail in the reader, others are ignored
    _, images, ignored = list_inputs(root)
    assert {root / "dir.tif", root / "broken.tif", root / "loop.png"} <= set(images)
    assert root / "sub" / "up" in ignored


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_list_inputs_reports_an_unreadable_file(tmp_path):
    write_image(tmp_path / "locked.png")
    (tmp_path / "locked.png").chmod(0)
    failures: list[tuple[str, str]] = []
    assert list_inputs(tmp_path, failures)[1] == []
    assert failures == [("locked.png", "unreadable (permission denied)")]


def test_existing_input_with_glob_characters_is_taken_literally(tmp_path):
    folder = tmp_path / "scenes[2024]"
    write_image(folder / "s.png")
    assert list_inputs(folder)[1] == [folder / "s.png"]
    assert list_inputs(folder / "s.png")[1] == [folder / "s.png"]
    assert list_inputs(str(tmp_path / "scenes*" / "*.png"))[1] == [folder / "s.png"]  # not existing: a glob
    with pytest.raises(FileNotFoundError, match="no file matches"):
        list_inputs(str(tmp_path / "nothing*"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        list_inputs(tmp_path / "empty")
    (tmp_path / "broken.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(FileNotFoundError, match="broken symlink"):
        list_inputs(tmp_path / "broken.png")


# ---- checkpoints choose nothing; pickles are refused -------------------------------------------------------
def test_manifest_naming_another_class_is_refused_before_import(files):
    for key, named in (("this", "this.X"), ("system", "os.system")):
        with pytest.raises(AdapterCheckpointError) as info:
            load_adapter(files[key])
        assert named in str(info.value) and "vadapt.tasks" in str(info.value)
    code = ("import sys\nfrom vadapt.loading import load_adapter\ntry:\n    load_adapter(sys.argv[1])\n"
            "except Exception as exc:\n    print(type(exc).__name__)\nprint('this' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code, str(files["this"])], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split() == ["AdapterCheckpointError", "False"], out.stderr[-2000:]


def test_pickled_files_are_refused_without_advice_to_unpickle(files):
    path = files["root"] / "pickled.ckpt"
    for load, error in ((read_state_dict, WeightsMismatchError), (load_lightning_checkpoint, AdapterCheckpointError)):
        with pytest.raises(error) as info:
            load(path)
        message = str(info.value)
        assert "weights_only" not in message and str(path) in message and "\n" not in message
        assert "pickled" in message and "safetensors.torch.save_file" in message
