"""The demo in a real headless browser: Chromium driven by Playwright for Python, all seven tabs.

Starts ``python -m vadapt.app`` (the same as ``vadapt demo``: 127.0.0.1, the built-in checkpoints) with
``--checkpoints`` a folder holding a tiny point-cloud classifier and a tiny depth model made here (first in the
list, so the 3D and Depth tabs' defaults; the built-in 3D demo stays beside it). In each tab (Segment, Prompt,
Change, Depth, Batch, 3D, Generate)
it uploads an input (or uses the example), runs, checks the result, then makes one action fail and checks that the
reason is in the tab's message area (in red), that the result is still shown and that no component shows an
"Error" badge. It also checks that Run waits (disabled, with the reason) until something is uploaded, that
small pictures are shown enlarged while the download keeps the real size, and that every request the page
makes goes to the local server (the page works offline). Screenshots and the server log go to
``$VADAPT_ARTIFACTS`` (default ``outputs/app-e2e/``, ignored by git).

The browser: ``$VADAPT_CHROMIUM`` (a path to a Chromium or Chrome executable) when set, else the first of
``chromium``, ``chromium-browser``, ``google-chrome`` on ``PATH``. Skipped, with the reason, when there is none
or when Playwright for Python is not installed. ``benchmarks/bench_app_cold_start.py`` drives the page with the
functions below (``start_app``, ``run_*``).
"""

from __future__ import annotations

import io
import itertools
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlparse

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
POINT_CLASSES = ["cube", "sphere", "torus"]
POINT_CHECKPOINT = "points_tiny.safetensors"
DEPTH_CHECKPOINT = "depth_tiny_test.safetensors"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


# ---- finding the browser and starting the app (shared with benchmarks/bench_app_cold_start.py) ---------------
def find_chromium() -> tuple[str | None, str]:
    """The browser to drive and, when there is none, why: ``$VADAPT_CHROMIUM``, else chromium on ``PATH``."""
    chosen = os.environ.get("VADAPT_CHROMIUM")
    if chosen:
        if Path(chosen).is_file() and os.access(chosen, os.X_OK):
            return chosen, ""
        return None, f"VADAPT_CHROMIUM={chosen} is not an executable file"
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found, ""
    return None, (f"no {' / '.join(BROWSERS)} on PATH and VADAPT_CHROMIUM is not set (apt-get install -y chromium; "
                  ".ci/run does it as root)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_point_checkpoint(folder: Path) -> Path:
    """A tiny point-cloud classifier (``point_mae_test`` backbone, frozen weights saved beside it) in ``folder``."""
    import torch

    from vadapt.backbones import create_backbone
    from vadapt.checkpoint import save_adapter
    from vadapt.tasks.point_classification import PointClassificationTask

    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "point_mae_test.pth"
    torch.manual_seed(0)
    torch.save(create_backbone("point_mae_test").model.state_dict(), weights)
    task = PointClassificationTask(backbone="point_mae_test", weights=str(weights), num_classes=len(POINT_CLASSES),
                                   class_names=POINT_CLASSES, head_hidden=16)
    with torch.no_grad():  # "trained": random, non-zero head and adapter weights, so the classes differ
        for p in task.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
    return save_adapter(task.eval(), folder / POINT_CHECKPOINT)


def make_depth_checkpoint(folder: Path) -> Path:
    """A tiny depth model (``depth_anything_v2_test``, random disparity heads, frozen weights saved beside it, trained
    on 8-bit frames resized to 48x64) in ``folder``."""
    import torch

    from vadapt.backbones import create_backbone
    from vadapt.checkpoint import save_adapter
    from vadapt.preprocessing import Preprocessing
    from vadapt.tasks import SelfSupervisedDepthTask

    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "depth_anything_v2_test.pth"
    torch.manual_seed(0)
    torch.save(create_backbone("depth_anything_v2_test").model.state_dict(), weights)
    task = SelfSupervisedDepthTask(backbone="depth_anything_v2_test", weights=str(weights))
    with torch.no_grad():
        for p in task.heads.parameters():
            p.normal_(0, 0.3)
    task.preprocessing = Preprocessing(scale=1 / 255, nodata=None, resize=(48, 64), source_size=(48, 64))
    return save_adapter(task.eval(), folder / DEPTH_CHECKPOINT)


def write_inputs(folder: Path) -> dict[str, Path]:
    """The example images (``s2``, ``rgb``, ``before``, ``after``) plus what the other tabs need: a point cloud
    (``cloud``), one with a NaN (``nan_cloud``), an unreadable TIFF (``broken``) and a smaller ``after``."""
    from PIL import Image

    from vadapt.app import demo_files

    paths = demo_files.write_examples(folder)
    rng = np.random.default_rng(0)
    sphere = rng.normal(size=(2048, 3)).astype(np.float32)
    sphere /= np.linalg.norm(sphere, axis=1, keepdims=True)
    np.save(folder / "sphere.npy", sphere)
    sphere[5, 1] = np.nan
    np.save(folder / "nan_cloud.npy", sphere)
    (folder / "broken.tif").write_bytes(b"II*\x00 this is not a TIFF")
    with Image.open(paths["after"]) as after:
        after.crop((0, 0, 100, 120)).save(folder / "small_after.png")
    return {**paths, "cloud": folder / "sphere.npy", "nan_cloud": folder / "nan_cloud.npy",
            "broken": folder / "broken.tif", "small_after": folder / "small_after.png"}


def start_app(args: list[str], log_path: Path, timeout: float = 300) -> tuple[subprocess.Popen, str]:
    """Start ``python -m vadapt.app`` on a free port and wait until it answers; the process and its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = log_path.open("w")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vadapt.app", "--port", str(port), *args], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_app(proc)
            raise RuntimeError(f"the app did not start: {log_path.read_text()[-2000:]}")
        time.sleep(0.25)


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def open_page(browser, url: str):
    """A new page on the app, loaded (the Segment tab's Run button is there); returns it and the list of
    requests it made to other hosts (filled as it goes)."""
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    outside: list[str] = []
    page.on("request", lambda request: outside.append(request.url)
            if urlparse(request.url).hostname not in (None, "127.0.0.1", "localhost")
            and urlparse(request.url).scheme not in ("data", "blob") else None)
    page.goto(url, wait_until="load", timeout=60_000)
    page.wait_for_selector("#seg-run", timeout=60_000)
    return page, outside


# ---- driving one tab each: upload (or example), run, until the first result shows -----------------------------
def wait_text(page, selector: str, text: str, timeout: int = 120_000) -> None:
    """Wait until the element at ``selector`` shows ``text``."""
    page.wait_for_function("([s, t]) => { const e = document.querySelector(s); "
                           "return !!e && e.innerText.includes(t); }", arg=[selector, text], timeout=timeout)


def upload(page, selector: str, files: Path | list[Path]) -> None:
    """Put ``files`` into the upload component at ``selector`` (removing what it holds first, as a user would)."""
    field, clear = page.locator(f"{selector} input[type=file]"), page.locator(selector).get_by_role(
        "button", name="Clear", exact=True)
    if clear.count():
        clear.first.click()
        page.wait_for_function("s => !document.querySelector(s).innerText.includes('↓')", arg=selector,
                               timeout=30_000)  # no file listed any more
    field.wait_for(state="attached", timeout=30_000)
    field.set_input_files([str(f) for f in files] if isinstance(files, list) else str(files))


def wait_enabled(page, selector: str, timeout: int = 60_000) -> None:
    page.wait_for_function("s => { const e = document.querySelector(s); return !!e && !e.disabled; }", arg=selector,
                           timeout=timeout)


def wait_loaded(page, selector: str, timeout: int = 60_000) -> None:
    """Wait until the image at ``selector`` has finished loading its current source."""
    page.wait_for_function("s => { const img = document.querySelector(s); "
                           "return !!img && img.complete && img.naturalWidth > 0; }", arg=selector, timeout=timeout)


def natural_size(page, selector: str) -> list[int]:
    wait_loaded(page, selector)
    return page.locator(selector).evaluate("img => [img.naturalWidth, img.naturalHeight]")


def image_src(page, selector: str) -> str | None:
    img = page.locator(f"{selector} img")
    return img.first.get_attribute("src") if img.count() else None


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


# Each driver waits for what its own steps change (an upload's line in the message area, then the run's), so it
# can be called again on the same page (the benchmark does, to time a second run).
def run_segment(page, inputs: dict[str, Path]) -> None:
    open_tab(page, "Segment")
    upload(page, "#seg-file", inputs["s2"])
    wait_text(page, "#seg-message", "band(s)")
    page.locator("#seg-run").click()
    wait_text(page, "#seg-message", "Done in")


def run_prompt(page, inputs: dict[str, Path]) -> None:
    open_tab(page, "Prompt")
    upload(page, "#prompt-file", inputs["rgb"])
    wait_text(page, "#prompt-message", "band(s)")
    wait_loaded(page, "#prompt-view img")
    view = page.locator("#prompt-view img")
    box = view.bounding_box()
    view.click(position={"x": box["width"] * 0.3, "y": box["height"] * 0.3})
    wait_text(page, "#prompt-text", "1 point(s)")


def run_change(page, inputs: dict[str, Path]) -> None:
    open_tab(page, "Change")
    upload(page, "#change-a", inputs["before"])
    wait_text(page, "#change-message", "before:")
    upload(page, "#change-b", inputs["after"])
    wait_text(page, "#change-message", "after:")
    page.locator("#change-run").click()
    wait_text(page, "#change-message", "Done in")


def run_depth(page, inputs: dict[str, Path]) -> None:
    open_tab(page, "Depth")
    upload(page, "#depth-file", inputs["rgb"])
    wait_text(page, "#depth-message", "band(s)")
    page.locator("#depth-run").click()
    wait_text(page, "#depth-message", "Done in")


def run_batch(page, inputs: dict[str, Path]) -> None:
    open_tab(page, "Batch")
    upload(page, "#batch-files", [inputs["s2"], inputs["rgb"]])
    wait_text(page, "#batch-message", "2 file(s) ready")
    page.locator("#batch-run").click()
    wait_text(page, "#batch-message", "Segmented")


def run_points(page, inputs: dict[str, Path]) -> None:
    open_tab(page, "3D")
    upload(page, "#points-file", inputs["cloud"])
    wait_text(page, "#points-message", "loaded")
    page.locator("#points-run").click()
    wait_text(page, "#points-message", "Done with")


_seeds = itertools.count()


def run_generate(page, inputs: dict[str, Path]) -> None:
    open_tab(page, "Generate")
    seed = next(_seeds)  # a new seed per call: its summary names it
    set_number(page, "#gen-steps", 2)
    set_number(page, "#gen-height", 32)
    set_number(page, "#gen-width", 32)
    set_number(page, "#gen-seed", seed)
    page.locator("#gen-run").click()
    wait_text(page, "#gen-text", f"32x32 px, seed {seed},")


def set_number(page, selector: str, value: float) -> None:
    field = page.locator(f"{selector} input[type=number]").first
    field.fill(str(value))
    field.press("Tab")


TABS = {"Segment": run_segment, "Prompt": run_prompt, "Change": run_change, "Batch": run_batch,
        "3D": run_points, "Generate": run_generate, "Depth": run_depth}


# ---- fixtures ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chromium() -> str:
    path, why = find_chromium()
    if path is None:
        pytest.skip(why)
    pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed (pip install "
                        "playwright; the browser itself comes from the system)")
    return path


@pytest.fixture(scope="module")
def artifacts() -> Path:
    folder = Path(os.environ.get("VADAPT_ARTIFACTS", ROOT / "outputs" / "app-e2e"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    return write_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def server(chromium, artifacts, tmp_path_factory) -> Iterator[str]:
    from vadapt.app import demo_files

    lacking = [n for n in demo_files.missing(demo_files.SHIPPED_DIR) if n not in demo_files.GENERATION]
    if lacking:  # the Generate tab's checkpoints are built by the server on its first start
        pytest.fail(f"data/demo lacks {lacking}")
    own = tmp_path_factory.mktemp("own-checkpoints")
    make_point_checkpoint(own)
    make_depth_checkpoint(own)
    try:
        proc, url = start_app(["--checkpoints", str(own)], artifacts / "server.log")
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield url
    stop_app(proc)


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, headless=True, args=LAUNCH_ARGS)
        yield launched
        launched.close()


@pytest.fixture()
def page(browser, server, artifacts, request):
    page, outside = open_page(browser, server)
    yield page
    page.screenshot(path=str(artifacts / f"{request.node.name}.png"), full_page=True)
    assert outside == [], f"the page called outside hosts: {outside[:5]}"
    page.context.close()


def shows_error(page, tab: str, text: str) -> None:
    """The tab's message area shows ``text`` as an error, and no component shows an "Error" badge."""
    wait_text(page, f"#{tab}-message", text, timeout=60_000)
    assert "vadapt-error" in page.locator(f"#{tab}-message").get_attribute("class")
    assert page.locator("span.error").count() == 0, "an output shows an Error badge"
    assert "Traceback" not in page.content()


def download_size(page, selector: str) -> tuple[int, int]:
    """The pixel size of the file offered by the download component at ``selector``."""
    from PIL import Image

    href = page.locator(f"{selector} a").first.get_attribute("href")
    with urllib.request.urlopen(urljoin(page.url, href), timeout=30) as response:
        return Image.open(io.BytesIO(response.read())).size


# ---- the tests -----------------------------------------------------------------------------------------------
def test_segment_waits_for_an_upload_runs_and_keeps_the_result_on_failure(page, inputs):
    assert "quickstart_cloud.safetensors" in page.locator("#seg-ckpt input").input_value()
    assert page.locator("#seg-run").is_disabled()  # nothing uploaded yet: Run waits, and says why
    assert "Upload an image" in page.locator("#seg-message").inner_text()
    run_segment(page, inputs)
    assert page.locator("[aria-label='Share']").count() == 0  # gradio's default image toolbar has one, off Spaces too
    assert natural_size(page, "#seg-view img") == [384, 384]  # large enough: shown as it is
    assert "%" in page.locator("#seg-summary").inner_text()
    assert "Done in" in page.locator("#seg-message").inner_text()
    result, legend = image_src(page, "#seg-view"), page.locator("#seg-legend").inner_text()
    upload(page, "#seg-file", inputs["broken"])
    shows_error(page, "seg", "cannot read broken.tif")
    assert image_src(page, "#seg-view") == result and page.locator("#seg-legend").inner_text() == legend
    assert page.locator("#seg-run").is_disabled()  # the file shown cannot run


def test_prompt_clicks_a_mask_then_a_bad_upload_keeps_it(page, inputs):
    open_tab(page, "Prompt")
    assert "sam_tiny_cloud.safetensors" in page.locator("#prompt-ckpt input").input_value()
    run_prompt(page, inputs)
    assert "image encoded" in page.locator("#prompt-text").inner_text()
    page.get_by_label("background point").check()
    box = page.locator("#prompt-view img").bounding_box()
    page.locator("#prompt-view img").click(position={"x": box["width"] * 0.8, "y": box["height"] * 0.8})
    wait_text(page, "#prompt-text", "2 point(s)")
    assert "cached image embedding" in page.locator("#prompt-text").inner_text()
    page.locator("#prompt-undo").click()
    wait_text(page, "#prompt-text", "1 point(s)")
    masked, line = image_src(page, "#prompt-view"), page.locator("#prompt-text").inner_text()
    upload(page, "#prompt-file", inputs["broken"])
    shows_error(page, "prompt", "cannot read broken.tif")
    assert image_src(page, "#prompt-view") == masked and page.locator("#prompt-text").inner_text() == line


def test_change_shows_the_changed_share_enlarged_and_a_size_mismatch_keeps_it(page, inputs):
    open_tab(page, "Change")
    assert "change_tiny.safetensors" in page.locator("#change-ckpt input").input_value()
    assert page.locator("#change-run").is_disabled()
    run_change(page, inputs)
    assert "%" in page.locator("#change-text").inner_text()
    assert natural_size(page, "#change-view img") == [384, 384]  # the 192 px pair, shown twice as large
    assert download_size(page, "#change-download") == (192, 192)  # the mask keeps the real size
    result, text = image_src(page, "#change-view"), page.locator("#change-text").inner_text()
    upload(page, "#change-b", inputs["small_after"])
    wait_text(page, "#change-message", "after:")
    page.locator("#change-run").click()
    shows_error(page, "change", "differ in size")
    assert image_src(page, "#change-view") == result and page.locator("#change-text").inner_text() == text


def test_depth_shows_the_depth_above_its_colour_bar_and_a_bad_upload_keeps_it(page, inputs):
    open_tab(page, "Depth")
    assert DEPTH_CHECKPOINT in page.locator("#depth-ckpt input").input_value()
    assert page.locator("#depth-run").is_disabled()
    assert "Upload an image" in page.locator("#depth-message").inner_text()
    run_depth(page, inputs)
    summary = page.locator("#depth-summary").inner_text()
    assert "relative depth: up to an unknown scale" in summary and "384x384 px" in summary
    width, height = natural_size(page, "#depth-view img")
    assert width == 384 and height > 384  # the depth, then its colour bar under it
    assert download_size(page, "#depth-png") == (384, 384)  # the 16-bit depth at the image's size
    assert page.locator("#depth-float a").first.get_attribute("href").endswith("example_rgb_depth.npy")
    result = image_src(page, "#depth-view")
    upload(page, "#depth-file", inputs["broken"])
    shows_error(page, "depth", "cannot read broken.tif")
    assert image_src(page, "#depth-view") == result and page.locator("#depth-summary").inner_text() == summary
    assert page.locator("#depth-run").is_disabled()


def test_batch_segments_files_lists_failures_and_keeps_the_table(page, inputs):
    open_tab(page, "Batch")
    assert page.locator("#batch-run").is_disabled()
    assert "vadapt infer --checkpoint quickstart_cloud.safetensors" in page.locator("#batch-cmd").inner_text()
    run_batch(page, inputs)  # the 6-band scene is segmented; the RGB picture lacks the model's bands
    message = page.locator("#batch-message").inner_text()
    assert "Segmented 1 of 2 file(s)" in message and "example_rgb.png" in message and "missing" in message
    table = page.locator("#batch-table").inner_text()
    assert "example_sentinel2.tif" in table and "384x384 px" in table
    assert page.locator("#batch-download a").first.get_attribute("href").endswith("masks.zip")
    upload(page, "#batch-files", inputs["broken"])
    wait_enabled(page, "#batch-run")
    page.locator("#batch-run").click()
    shows_error(page, "batch", "no file could be segmented: cannot read broken.tif")
    assert page.locator("#batch-table").inner_text() == table


def test_points_classifies_a_cloud_and_a_bad_cloud_keeps_the_scores(page, inputs):
    open_tab(page, "3D")
    # the --checkpoints folder's classifier is the default; the built-in checkpoints are still offered
    assert POINT_CHECKPOINT in page.locator("#points-ckpt input").input_value()
    assert page.locator("#points-run").is_disabled()
    assert "Upload a point cloud" in page.locator("#points-message").inner_text()
    run_points(page, inputs)
    scores = page.locator("#points-scores").inner_text()
    assert any(name in scores for name in POINT_CLASSES) and "sphere.npy" in page.locator("#points-text").inner_text()
    upload(page, "#points-file", inputs["nan_cloud"])
    shows_error(page, "points", "NaN")
    assert page.locator("#points-scores").inner_text() == scores
    assert page.locator("#points-run").is_disabled()


def test_generate_shows_a_small_image_enlarged_and_a_bad_size_keeps_it(page, inputs):
    run_generate(page, inputs)
    assert natural_size(page, "#gen-image img") == [256, 256]  # 32 px, shown 8x with nearest neighbour
    assert download_size(page, "#gen-download") == (32, 32)
    assert "Done" in page.locator("#gen-message").inner_text()
    result, text = image_src(page, "#gen-image"), page.locator("#gen-text").inner_text()
    set_number(page, "#gen-height", 30)
    page.locator("#gen-run").click()
    shows_error(page, "gen", "height 30 is not a positive multiple of the VAE factor 8")
    assert image_src(page, "#gen-image") == result and page.locator("#gen-text").inner_text() == text
    # the I2V demo needs a first frame: Generate waits for it; its clip is shown enlarged, downloaded as it is
    page.locator("#gen-ckpt input").click()
    page.get_by_role("option", name="i2v_tiny.safetensors", exact=False).click()
    wait_text(page, "#gen-message", "Upload a first frame")
    assert page.locator("#gen-run").is_disabled()
    upload(page, "#gen-first-frame", inputs["rgb"])
    wait_enabled(page, "#gen-run")
    set_number(page, "#gen-steps", 1)
    page.locator("#gen-run").click()
    wait_text(page, "#gen-text", "frames, 64x64 px")
    assert natural_size(page, "#gen-video img") == [256, 256]
    assert page.locator("#gen-video img").bounding_box()["height"] >= 200
    assert download_size(page, "#gen-download") == (64, 64)
