"""Start-up time of the ``vadapt`` console script.

Times ``vadapt --help`` and ``vadapt list backbones`` (wall time of ``subprocess.run`` measured with
``time.perf_counter``), alternating the two commands, after one untimed run of each (so the first run's
cold file cache does not count). Reports the median and the max per command.

Run: ``python benchmarks/bench_cli_startup.py`` (``--runs`` to change the number of timed runs, ``--exe`` to
time another ``vadapt`` executable; default: the one next to this Python interpreter, else the one on PATH).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

COMMANDS = (("--help",), ("list", "backbones"))
TARGET_S = 1.5


def find_exe() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "vadapt")
    if os.access(here, os.X_OK):
        return here
    found = shutil.which("vadapt")
    if not found:
        raise SystemExit("no `vadapt` executable found; pass --exe")
    return found


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs per command (default 10)")
    parser.add_argument("--exe", help="the vadapt executable (default: next to this interpreter)")
    args = parser.parse_args()
    exe = args.exe or find_exe()

    for c in COMMANDS:  # warm the file cache
        run([exe, *c])
    times: dict = {c: [] for c in COMMANDS}
    for _ in range(args.runs):
        for c in COMMANDS:
            times[c].append(run([exe, *c]))

    load = os.getloadavg()[0]
    print(f"\n`{exe}`, {args.runs} timed runs per command (alternating) after 1 untimed run; "
          f"load average {load:.2f}\n")
    print("| command | median s | max s | min s | target |")
    print("|---|---:|---:|---:|---|")
    for c in COMMANDS:
        t = times[c]
        target = "-"
        if c == ("--help",):
            target = f"< {TARGET_S} s: {'met' if statistics.median(t) < TARGET_S else 'missed'}"
        print(f"| `vadapt {' '.join(c)}` | {statistics.median(t):.3f} | {max(t):.3f} | {min(t):.3f} | {target} |")


if __name__ == "__main__":
    main()
