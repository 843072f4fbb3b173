"""The demo in a real headless browser: Debian's chromium driven by Playwright for Python.

Starts ``python -m vadapt.app`` (the same as ``vadapt demo``: built-in checkpoints, 127.0.0.1) on a free port,
uploads the example Sentinel-2 GeoTIFF, runs the default (quickstart) adapter and checks the overlay and legend;
then clicks on an image in the Prompt tab and checks that SAM's mask appears and that the second click reuses
the cached image embedding; runs the Change tab on the example pair; shows a broken upload's message. Every
request the page makes must go to the local server (the page works offline). Screenshots and the server log
go to ``$VADAPT_ARTIFACTS`` (default ``outputs/app-e2e/``, ignored by git).
Skipped only when chromium (``apt-get install chromium``) or Playwright is not installed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]

if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium; .ci/run does it as root)",
                allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def artifacts() -> Path:
    folder = Path(os.environ.get("VADAPT_ARTIFACTS", ROOT / "outputs" / "app-e2e"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _wait_loaded(page, selector: str, timeout: int = 30_000) -> None:
    """Wait until the image at ``selector`` has finished loading its current source."""
    page.wait_for_function(f"(() => {{ const img = document.querySelector({selector!r}); "
                           f"return img && img.complete && img.naturalWidth > 0; }})()", timeout=timeout)


@pytest.fixture(scope="module")
def server(artifacts):
    from vadapt.app import demo_files

    lacking = [n for n in demo_files.missing(demo_files.SHIPPED_DIR) if n not in demo_files.GENERATION]
    if lacking:  # the Generate tab's checkpoints are built by the server on its first start
        pytest.fail(f"data/demo lacks {lacking}")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    log = (artifacts / "server.log").open("w")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vadapt.app", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"the app did not start: {(artifacts / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> dict[str, Path]:
    from vadapt.app import demo_files

    return demo_files.write_examples(tmp_path_factory.mktemp("examples"))


@pytest.fixture()
def page(server, artifacts):
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        outside: list[str] = []
        page.on("request", lambda request: outside.append(request.url)
                if urlparse(request.url).hostname not in (None, "127.0.0.1", "localhost")
                and urlparse(request.url).scheme not in ("data", "blob") else None)
        page.goto(server, wait_until="load", timeout=60_000)
        page.wait_for_selector("#seg-run", timeout=60_000)
        yield page
        page.screenshot(path=str(artifacts / "last_page.png"), full_page=True)
        assert outside == [], f"the page called outside hosts: {outside[:5]}"
        browser.close()


def _image_src(page, selector: str) -> str | None:
    img = page.locator(f"{selector} img")
    return img.first.get_attribute("src") if img.count() else None


def test_segment_then_prompt_in_a_real_browser(page, examples, artifacts):
    start = time.monotonic()
    # ---- Segment: upload the GeoTIFF, run the default (quickstart) adapter --------------------------------
    assert "quickstart_cloud.safetensors" in page.locator("#seg-ckpt input").input_value()
    page.locator("#seg-file input[type=file]").set_input_files(str(examples["s2"]))
    page.wait_for_selector("#seg-view img", timeout=60_000)
    preview = _image_src(page, "#seg-view")
    page.locator("#seg-run").click()
    page.wait_for_function("document.querySelector('#seg-legend') && "
                           "document.querySelector('#seg-legend').innerText.includes('cloud_shadow')", timeout=120_000)
    page.wait_for_function(f"document.querySelector('#seg-view img') && "
                           f"document.querySelector('#seg-view img').src !== {preview!r}", timeout=30_000)
    overlay = page.locator("#seg-view img")
    _wait_loaded(page, "#seg-view img")  # a new src loads asynchronously: its size is 0 x 0 until then
    size = overlay.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert size == [384, 384]
    assert "%" in page.locator("#seg-summary").inner_text()
    page.screenshot(path=str(artifacts / "segment.png"), full_page=True)

    # ---- Prompt: upload an image, click a foreground point, the mask appears; a second click is decoder-only --
    page.get_by_role("tab", name="Prompt").click()
    page.locator("#prompt-file input[type=file]").set_input_files(str(examples["rgb"]))
    page.wait_for_selector("#prompt-view img", timeout=60_000)
    page.wait_for_function("document.querySelector('#prompt-text').innerText.includes('Click')", timeout=30_000)
    view = page.locator("#prompt-view img")
    before = view.screenshot()
    box = view.bounding_box()
    view.click(position={"x": box["width"] * 0.3, "y": box["height"] * 0.3})
    page.wait_for_function("document.querySelector('#prompt-text').innerText.includes('1 point(s)')",
                           timeout=60_000)
    text = page.locator("#prompt-text").inner_text()
    assert "image encoded" in text
    page.wait_for_timeout(500)  # let the new picture load
    after = page.locator("#prompt-view img").screenshot()
    assert after != before
    page.screenshot(path=str(artifacts / "prompt_1.png"), full_page=True)
    page.get_by_label("background point").check()
    view = page.locator("#prompt-view img")
    view.click(position={"x": box["width"] * 0.8, "y": box["height"] * 0.8})
    page.wait_for_function("document.querySelector('#prompt-text').innerText.includes('2 point(s)')",
                           timeout=60_000)
    assert "cached image embedding" in page.locator("#prompt-text").inner_text()
    page.screenshot(path=str(artifacts / "prompt_2.png"), full_page=True)
    page.locator("#prompt-undo").click()
    page.wait_for_function("document.querySelector('#prompt-text').innerText.includes('1 point(s)')",
                           timeout=60_000)
    assert time.monotonic() - start < 120


def test_change_tab_shows_the_changed_share(page, examples, artifacts):
    page.get_by_role("tab", name="Change").click()
    assert "change_tiny.safetensors" in page.locator("#change-ckpt input").input_value()
    page.locator("#change-a input[type=file]").set_input_files(str(examples["before"]))
    page.locator("#change-b input[type=file]").set_input_files(str(examples["after"]))
    page.wait_for_timeout(500)
    page.locator("#change-run").click()
    page.wait_for_function("document.querySelector('#change-text').innerText.includes('changed:')", timeout=60_000)
    assert "%" in page.locator("#change-text").inner_text()
    _wait_loaded(page, "#change-view img")
    assert page.locator("#change-view img").evaluate("img => [img.naturalWidth, img.naturalHeight]") == [192, 192]
    page.screenshot(path=str(artifacts / "change.png"), full_page=True)


def test_an_unreadable_upload_is_a_message_in_the_page(page, tmp_path, artifacts):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00 this is not a TIFF")
    page.locator("#seg-file input[type=file]").set_input_files(str(bad))
    page.get_by_text("cannot read broken.tif").first.wait_for(timeout=60_000)
    assert "Traceback" not in page.content()
    page.screenshot(path=str(artifacts / "error.png"), full_page=True)
