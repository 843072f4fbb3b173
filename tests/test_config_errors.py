"""Config mistakes are answered in one sentence (where, what, the closest valid key) before Lightning or torch load;
``vadapt fit --help`` fits on a screen; what jsonargparse accepts is never refused (vadapt/config_schema.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vadapt.config_schema import SCHEMA_PATH, ConfigMistake, build_schema, check_command, short_help

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
EVERY_CONFIG = sorted([*(REPO / "configs").glob("*.yaml"), *(REPO / "tests" / "conf").glob("*.yaml")])


def _without_help(schema: dict) -> dict:
    # the help text is informative (docstring-parser's rendering may change between versions); what the check relies
    # on, the accepted keys, their kinds, defaults and classes, must be current
    return {name: {**entry, "params": {p: {k: v for k, v in info.items() if k != "help"}
                                       for p, info in entry["params"].items()}}
            for name, entry in schema["classes"].items()}


def test_the_committed_schema_matches_the_code():
    built = json.loads(json.dumps(build_schema()))
    committed = json.loads(SCHEMA_PATH.read_text())
    assert _without_help(committed) == _without_help(built), (
        "vadapt/config_schema.json is out of date: run `python -m vadapt.config_schema --write`")


@pytest.mark.parametrize("config", EVERY_CONFIG, ids=lambda p: p.name)
def test_every_shipped_and_test_config_passes(config):
    check_command(["--config", str(config)])


def _mistake(tmp_path: Path, edit) -> str:
    config = yaml.safe_load(QUICKSTART.read_text())
    edit(config)
    path = tmp_path / "mistake.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(ConfigMistake) as info:
        check_command(["--config", str(path)])
    return str(info.value)


def _line_of(path: Path, key: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip().startswith(f"{key}:"))


FILE_MISTAKES = {
    "misspelt task option": (lambda c: c["model"]["init_args"].__setitem__("num_clases", 3),
                             ["`model.init_args.num_clases` is not an option of SemanticSegmentationTask",
                              "did you mean `num_classes`?"], "num_clases"),
    "misspelt data option": (lambda c: c["data"]["init_args"].__setitem__("batchsize", 3),
                             ["`data.init_args.batchsize` is not an option of SceneDataModule",
                              "did you mean `batch_size`?"], "batchsize"),
    "misspelt trainer option": (lambda c: c["trainer"].__setitem__("max_epoch", 3),
                                ["`trainer.max_epoch` is not an option of lightning's Trainer",
                                 "`max_epochs`"], "max_epoch"),
    "misspelt top-level key": (lambda c: c.__setitem__("trainr", {}), ["`trainr` is not a top-level key",
                                                                       "did you mean `trainer`?"], "trainr"),
    "wrong kind of value": (lambda c: c["model"]["init_args"].__setitem__("num_classes", "three"),
                            ["`model.init_args.num_classes` must be int; got 'three'"], "num_classes"),
    "value outside the choices": (lambda c: c["model"]["init_args"].__setitem__("head", "upper"),
                                  ["must be one of uper, fpn, linear", "did you mean `uper`?"], "head"),
    "misspelt task class": (lambda c: c["model"].__setitem__("class_path", "vadapt.tasks.SemanticSegmentatonTask"),
                            ["is not a vadapt class", "`vadapt.tasks.SemanticSegmentationTask`"], "class_path"),
    "a datamodule given as the model": (lambda c: c["model"].__setitem__("class_path", "vadapt.data.SceneDataModule"),
                                        ["vadapt.data.SceneDataModule is not a LightningModule"], "class_path"),
    "misspelt adapter option": (lambda c: c["model"]["init_args"]["adapter"]["init_args"].__setitem__("rank", 4),
                                ["`model.init_args.adapter.init_args.rank` is not an option of LoraConfig",
                                 "its options: target_modules, exclude_modules, r, lora_alpha"], "rank"),
    "option beside class_path": (lambda c: c["model"].__setitem__("num_classes", 3),
                                 ["`model.num_classes` is not allowed beside class_path",
                                  "go under init_args"], "num_classes"),
}


@pytest.mark.parametrize("case", FILE_MISTAKES, ids=str)
def test_a_config_mistake_names_the_key_its_line_and_the_closest_valid_one(tmp_path, case):
    edit, expected, key = FILE_MISTAKES[case]
    message = _mistake(tmp_path, edit)
    for part in expected:
        assert part in message, message
    path = tmp_path / "mistake.yaml"
    lines = [i for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip().startswith(f"{key}:")]
    assert any(f"{path} line {n}:" in message for n in lines), message
    assert "\n" not in message


COMMAND_LINE_MISTAKES = {
    ("--trainer.max_epohcs", "3"): "did you mean `--trainer.max_epochs`",
    ("--model.init_args.num_clases", "3"): "did you mean `--model.init_args.num_classes`?",
    ("--model.num_classes", "three"): "--model.num_classes must be int; got 'three'",
    ("--trainr.max_epochs", "3"): "unknown option; did you mean `--trainer`?",
    ("--data.init_args.val_fraction", "[1]"): "--data.init_args.val_fraction must be float or int",
    ("--model.init_args.prompting.num_positive", "2"): "not an option of SemanticSegmentationTask",
}


@pytest.mark.parametrize("option", COMMAND_LINE_MISTAKES, ids=lambda o: " ".join(o))
def test_a_command_line_mistake_is_named_with_the_closest_valid_option(option):
    with pytest.raises(ConfigMistake, match=None) as info:
        check_command(["--config", str(QUICKSTART), *option])
    assert COMMAND_LINE_MISTAKES[option] in str(info.value)


@pytest.mark.parametrize("argv", [
    ["--model.lr", "3e-4", "--data.batch_size", "4"],  # numbers jsonargparse reads (PyYAML: 3e-4 is a string)
    ["--model.init_args.adapter", "vadapt.adapters.LoraConfig"],  # a class by name
    ["--trainer.logger.init_args.save_dir", "x", "--print_config", "--seed_everything", "3"],
    ["--model.init_args.adapter.init_args.r", "8"],  # an option of a nested class
    ["--trainer.max_epoch", "2", "--model.num_class", "3"],  # argparse takes a unique prefix of an option
    ["--trainer.logger+=TensorBoardLogger", "--trainer.logger.save_dir", "${trainer.default_root_dir}"],
], ids=str)
def test_what_jsonargparse_accepts_is_not_refused(argv):
    check_command([f"--config={QUICKSTART}", *argv])


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigMistake, match="config file not found: .*nope.yaml"):
        check_command(["--config", str(tmp_path / "nope.yaml")])
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  class_path: x\n   init_args: {}\n")
    with pytest.raises(ConfigMistake, match=r"broken.yaml line 3: not valid YAML"):
        check_command(["-c", str(broken)])


def test_the_cli_answers_before_importing_torch(tmp_path):
    config = yaml.safe_load(QUICKSTART.read_text())
    config["model"]["init_args"]["num_clases"] = 3
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "vadapt.cli", "fit", "--config", str(path)],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    said = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert result.returncode == 2
    assert said == [f"error: {path} line {_line_of(path, 'num_clases')}: `model.init_args.num_clases` is not an "
                    "option of SemanticSegmentationTask; did you mean `num_classes`?"]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"torch", "lightning", "jsonargparse", "numpy"}


def test_short_help_lists_the_config_options_with_the_config_values():
    text = short_help("fit", ["--config", str(QUICKSTART)])
    assert "--model vadapt.tasks.SemanticSegmentationTask" in text and "--data vadapt.data.SceneDataModule" in text
    line = next(line for line in text.splitlines() if line.strip().startswith("num_classes "))
    assert "= 3 (config)" in line
    assert "vadapt fit --help-all" in text
    assert len(text.splitlines()) < 60
    listing = short_help("fit", [])
    assert "vadapt.tasks.ChangeDetectionTask" in listing and "vadapt.data.FolderSegmentationDataModule" in listing


def test_help_is_short_and_help_all_is_lightnings():
    short = subprocess.run([sys.executable, "-m", "vadapt.cli", "fit", "--help"], capture_output=True, text=True,
                           cwd=REPO, timeout=120)
    full = subprocess.run([sys.executable, "-m", "vadapt.cli", "fit", "--help-all"], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert short.returncode == 0 and full.returncode == 0, full.stderr[-2000:]
    assert "--trainer.max_epochs MAX_EPOCHS" in full.stdout and "MAX_EPOCHS" not in short.stdout
    assert len(short.stdout.splitlines()) * 5 < len(full.stdout.splitlines())
