"""The built wheel holds every module of the four top-level folders under its ``vadapt.*`` name, and the layer
contracts of ``pyproject.toml`` hold on what it installs (import-linter reads the installed layout)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
FOLDERS = {"vadapt": "vadapt", "backbones": "vadapt/backbones", "tasks": "vadapt/tasks", "app": "vadapt/app"}


def expected_modules() -> set[str]:
    """``vadapt/...py`` paths the wheel must hold, from every ``.py`` file in the source folders."""
    found = set()
    for folder, installed in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                found.add(f"{installed}/{path.relative_to(ROOT / folder).as_posix()}")
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the tracked tree (no ``build/`` left in the checkout)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout (the wheel is built from the tracked files)")
    src = tmp_path_factory.mktemp("src")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file() and not rel.startswith(("data/", "docs/", "tests/", "benchmarks/")):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(src)], check=True, capture_output=True)
    (whl,) = out.glob("vadapt-*.whl")
    return whl


def test_wheel_holds_every_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted((expected_modules() | {"vadapt/config_schema.json"}) - names)
    assert not missing, f"the wheel lacks {missing}: is a folder missing its __init__.py?"
    assert not [n for n in names if n.startswith(("backbones/", "tasks/", "app/", "tests/"))]


def test_layer_contracts_hold_on_the_installed_package(wheel, tmp_path):
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    zipfile.ZipFile(wheel).extractall(tmp_path)
    # run from the extracted tree: the checkout's own vadapt/ (without backbones/, tasks/, app/) must not shadow it
    result = subprocess.run([lint, "--no-cache", "--config", str(ROOT / "pyproject.toml")], cwd=tmp_path,
                            env={"PYTHONPATH": str(tmp_path), "PATH": str(Path(sys.executable).parent)},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout
