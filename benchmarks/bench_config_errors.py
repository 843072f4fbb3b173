"""How long a config mistake and ``vadapt fit --help`` take, as ratios to ``python -c "import torch"``.

Each row is a fresh process timed with ``time.perf_counter`` around ``subprocess.run``; rows alternate within a
round (so a busy machine slows every row alike), after one untimed round; medians over ``--runs`` rounds.

* "before" rows run the path of the previous release: LightningCLI / jsonargparse checks the config (called
  through ``vadapt.cli.run_lightning``, which skips the early check) and ``fit --help`` is LightningCLI's
  (today ``fit --help-all``);
* "after" rows are plain ``vadapt ...`` commands: the early check of :mod:`vadapt.config_schema`.

Mistakes: a misspelt task option in a copy of ``configs/quickstart.yaml`` (``num_clases``), a config path that does
not exist, and a misspelt Trainer option on the command line (``--trainer.max_epohcs 2``).

Run: ``python benchmarks/bench_config_errors.py [--runs 5]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BEFORE = ("import sys; from vadapt.cli import _answer_user_errors, run_lightning; "
          "sys.exit(_answer_user_errors(run_lightning, sys.argv[1:]))")


def rows(typo: Path) -> list[tuple[str, list[str]]]:
    py, cli = sys.executable, [sys.executable, "-m", "vadapt.cli"]
    old = [py, "-c", BEFORE]
    return [
        ("python -c 'import torch'", [py, "-c", "import torch"]),
        ("vadapt --help", [*cli, "--help"]),
        ("fit --help, before (LightningCLI's)", [*cli, "fit", "--help-all"]),
        ("fit --help, after", [*cli, "fit", "--help"]),
        ("misspelt key in the YAML, before", [*old, "fit", "--config", str(typo)]),
        ("misspelt key in the YAML, after", [*cli, "fit", "--config", str(typo)]),
        ("missing config file, before", [*old, "fit", "--config", "no/such.yaml"]),
        ("missing config file, after", [*cli, "fit", "--config", "no/such.yaml"]),
        ("misspelt --trainer.max_epohcs, before", [*old, "fit", "--config", "configs/quickstart.yaml",
                                                  "--trainer.max_epohcs", "2"]),
        ("misspelt --trainer.max_epohcs, after", [*cli, "fit", "--config", "configs/quickstart.yaml",
                                                 "--trainer.max_epohcs", "2"]),
    ]


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    return time.perf_counter() - t0, (proc.stdout + proc.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed rounds (default 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
        config["model"]["init_args"]["num_clases"] = config["model"]["init_args"].pop("num_classes")
        typo = Path(tmp) / "typo.yaml"
        typo.write_text(yaml.safe_dump(config, sort_keys=False))
        table = rows(typo)
        said = {name: timed(cmd)[1] for name, cmd in table}  # untimed round (file cache)
        times: dict[str, list[float]] = {name: [] for name, _ in table}
        for _ in range(args.runs):
            for name, cmd in table:
                times[name].append(timed(cmd)[0])
    torch_s = statistics.median(times[table[0][0]])
    print(f"\n{args.runs} rounds after 1 untimed round; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}\n")
    print("| command | median s | x import torch | lines printed | first line |")
    print("|---|---:|---:|---:|---|")
    for name, _ in table:
        text = said[name].strip().splitlines()
        first = next((line for line in text if line.strip()), "")[:90].replace("|", "\\|")
        print(f"| {name} | {statistics.median(times[name]):.2f} | {statistics.median(times[name]) / torch_s:.2f} "
              f"| {len(text)} | `{first}` |")


if __name__ == "__main__":
    main()
