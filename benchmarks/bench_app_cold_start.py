"""The demo's first hour, timed: from a cold start of ``python -m vadapt.app`` to the first result in each tab.

For each tab (Segment, Prompt, Change, Batch, 3D, Generate) a fresh server process is started (built-in demo
checkpoints present in data/demo; nothing loaded yet) and a fresh headless Chromium page opened on it; then the
tab is driven as a user would (upload or example, Run) by the same functions as the browser test
(``tests/test_app_e2e.py``: ``start_app``, ``run_*``), until its result shows. Columns:

* ``start -> page``: process start until the page is loaded and usable (imports, checkpoint scan, Gradio);
* ``first result``: from the first upload until the result shows (reading the input, loading the checkpoint's
  model, running it, drawing the picture);
* ``total``: process start to the first result;
* ``again``: the same action once more on the same page (model already loaded): what later runs cost.

The built-in demo has no 3D checkpoint yet unless data/demo holds one: then a tiny point classifier is made in a
temporary folder and passed with ``--checkpoints`` (the built-ins stay); the table says which.

    python benchmarks/bench_app_cold_start.py [--tabs Segment Prompt ...] [--repeat 1]

Needs Playwright for Python and a Chromium (``$VADAPT_CHROMIUM`` or chromium on PATH), as the browser test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_app_e2e as drive  # noqa: E402 - the browser test's drivers, shared rather than copied


def point_checkpoint_args(folder: Path) -> tuple[list[str], str]:
    """``--checkpoints`` for the 3D tab when the built-in demo has no point checkpoint, and a note for the table."""
    from vadapt.app import demo_files
    from vadapt.app.checkpoints import find_checkpoints

    found, _ = find_checkpoints([demo_files.SHIPPED_DIR])
    builtin = [c.path.name for c in found if "points" in c.kinds]
    if builtin:
        return [], f"built-in {builtin[0]}"
    drive.make_point_checkpoint(folder)
    note = f"{drive.POINT_CHECKPOINT} (tiny point_mae_test classifier) via --checkpoints"
    return ["--checkpoints", str(folder)], note


def time_tab(browser, name: str, args: list[str], inputs: dict[str, Path], log: Path) -> dict[str, float]:
    """One cold start of the app, then the tab's first result, then the same action again."""
    run = drive.TABS[name]
    start = time.perf_counter()
    proc, url = drive.start_app(args, log)
    try:
        page, outside = drive.open_page(browser, url)
        ready = time.perf_counter()
        run(page, inputs)
        first = time.perf_counter()
        run(page, inputs)
        again = time.perf_counter() - first
        if outside:
            raise RuntimeError(f"the page called outside hosts: {outside[:3]}")
        page.context.close()
    finally:
        drive.stop_app(proc)
    return {"page": ready - start, "first": first - ready, "total": first - start, "again": again}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tabs", nargs="+", choices=list(drive.TABS), default=list(drive.TABS))
    parser.add_argument("--repeat", type=int, default=1, help="cold starts per tab (the median is shown)")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from vadapt.app import demo_files

    chromium, why = drive.find_chromium()
    if chromium is None:
        raise SystemExit(f"no browser: {why}")
    lacking = demo_files.missing(demo_files.SHIPPED_DIR)
    if lacking:
        raise SystemExit(f"data/demo lacks {lacking}: build them first (python -m vadapt.app.demo_files), so the "
                         "timings do not include building them")
    with tempfile.TemporaryDirectory(prefix="bench-app-") as tmp:
        inputs = drive.write_inputs(Path(tmp) / "inputs")
        extra, note = point_checkpoint_args(Path(tmp) / "points")
        rows = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=drive.LAUNCH_ARGS)
            for name in args.tabs:
                runs = [time_tab(browser, name, extra, inputs, Path(tmp) / "server.log") for _ in range(args.repeat)]
                rows.append((name, {k: statistics.median(r[k] for r in runs) for k in runs[0]}))
                print(f"{name}: done", file=sys.stderr)
            browser.close()
    print(f"3D checkpoint: {note}; {args.repeat} cold start(s) per tab, median; seconds\n")
    print("| tab | start -> page | first result | total | again |")
    print("|---|---:|---:|---:|---:|")
    for name, t in rows:
        print(f"| {name} | {t['page']:.1f} | {t['first']:.1f} | {t['total']:.1f} | {t['again']:.1f} |")


if __name__ == "__main__":
    main()
