"""The Gradio page (the only module that imports ``gradio`` at import time): six tabs wired to
:class:`~.service.Demo` (the Generate tab's layout is :func:`.generate.build_tab`, called from here).

Offline by construction: analytics off (``GRADIO_ANALYTICS_ENABLED=False`` before the import), system fonts
(no web-font fetches), no server-side rendering process, ``share`` only when asked.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no usage statistics, no version check
os.environ.setdefault("GRADIO_SSR_MODE", "False")

import gradio as gr  # noqa: E402

from . import generate as generation  # noqa: E402
from .limits import AppError  # noqa: E402
from .points import UPLOAD_TYPES as POINT_UPLOAD_TYPES  # noqa: E402
from .prompts import MODES, PromptState  # noqa: E402
from .service import Demo  # noqa: E402

log = logging.getLogger("vadapt.app")
UPLOAD_TYPES = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy", ".npz"]


def offline_theme() -> gr.themes.Base:
    """Gradio's default look with system fonts, so the page needs no font download."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "Consolas", "monospace"])


def shown(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a callback so that any failure reaches the page as one short message, never a stack trace."""

    @functools.wraps(fn)  # keeps the signature: Gradio passes event data (gr.SelectData) by annotation
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except AppError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception as exc:  # noqa: BLE001 - logged in full on the server, one line in the page
            log.exception("callback %s failed", fn.__name__)
            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            raise gr.Error(f"unexpected error ({type(exc).__name__}): {first}", print_exception=False) from None

    return wrapper


def _band_dropdowns(label: str) -> list[gr.Dropdown]:
    return [gr.Dropdown(label=f"{label} {c}", choices=[], interactive=True, min_width=80) for c in ("R", "G", "B")]


def _band_updates(image) -> list[Any]:
    labels, picked = image.band_labels(), image.default_rgb()
    return [gr.update(choices=labels, value=picked[i]) for i in range(3)]


def build(demo: Demo) -> gr.Blocks:
    """The page for ``demo``; call ``.launch()`` (see :func:`launch`)."""
    seg_default, prompt_default = demo.default("segment", "quickstart"), demo.default("prompt", "sam_tiny")
    change_default = demo.default("change", "change_tiny")
    examples = demo.examples
    # uploads in Gradio's cache are deleted after an hour (checked hourly)
    with gr.Blocks(title="vadapt demo", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown("# vadapt: frozen foundation models + small adapters\nUpload an image, pick an adapter "
                    "checkpoint, run. Files stay on this machine; the models run on its CPU/GPU.")
        # ---------------- Segment ----------------
        with gr.Tab("Segment", id="segment"):
            seg_image_id, seg_result_id = gr.State(None), gr.State(None)
            with gr.Row():
                with gr.Column(scale=1):
                    seg_file = gr.File(label="image (PNG, JPEG, TIFF, GeoTIFF, .npy/.npz)",
                                       file_types=UPLOAD_TYPES, elem_id="seg-file")
                    if "s2" in examples:
                        seg_example = gr.Button("use the example Sentinel-2 scene", size="sm", elem_id="seg-example")
                    with gr.Accordion("file options", open=False):
                        seg_bands_text = gr.Textbox(label="band names of the file, comma separated (when it does "
                                                          "not name them)", placeholder="blue, green, red, nir")
                        seg_scale = gr.Number(label="extra value factor, before the checkpoint's own scaling "
                                                    "(1 = the file's values, as the checkpoint expects them)",
                                              value=1.0)
                    seg_ckpt = gr.Dropdown(label="adapter checkpoint", choices=demo.choices("segment"),
                                           value=seg_default, elem_id="seg-ckpt")
                    seg_about = gr.Markdown(demo.describe(seg_default))
                    with gr.Row():
                        seg_rgb = _band_dropdowns("composite")
                    seg_opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="mask opacity",
                                            elem_id="seg-opacity")
                    seg_geotiff = gr.Checkbox(value=True, label="download as GeoTIFF when the input is georeferenced")
                    seg_run = gr.Button("Run", variant="primary", elem_id="seg-run")
                with gr.Column(scale=2):
                    seg_view = gr.Image(label="result", type="numpy", format="png", interactive=False,
                                        elem_id="seg-view")
                    seg_legend = gr.HTML(elem_id="seg-legend")
                    seg_summary = gr.Markdown(elem_id="seg-summary")
                    seg_download = gr.File(label="mask download", interactive=False, elem_id="seg-download")

            @shown
            def seg_upload(path, bands_text, scale):
                if not path:
                    return [None, None, None, "", "", *[gr.update() for _ in range(3)]]
                image_id, image = demo.upload(path, bands_text, scale)
                picture = demo.preview(image_id)
                return [image_id, None, picture, "", f"{image.name}: {image.shape[1]}x{image.shape[0]} px, "
                        f"{len(image.array)} bands ({', '.join(image.band_labels())})", *_band_updates(image)]

            upload_outputs = [seg_image_id, seg_result_id, seg_view, seg_legend, seg_summary, *seg_rgb]
            seg_file.change(seg_upload, [seg_file, seg_bands_text, seg_scale], upload_outputs)
            seg_bands_text.submit(seg_upload, [seg_file, seg_bands_text, seg_scale], upload_outputs)
            seg_scale.submit(seg_upload, [seg_file, seg_bands_text, seg_scale], upload_outputs)
            if "s2" in examples:
                seg_example.click(lambda: str(examples["s2"]), None, seg_file)
            seg_ckpt.change(demo.describe, seg_ckpt, seg_about)

            @shown
            def seg_go(image_id, label, r, g, b, opacity, geotiff):
                result = demo.segment(image_id, label, [r, g, b], opacity, geotiff)
                return result.result_id, result.overlay, result.legend, result.summary, str(result.mask_path)

            seg_run.click(seg_go, [seg_image_id, seg_ckpt, *seg_rgb, seg_opacity, seg_geotiff],
                          [seg_result_id, seg_view, seg_legend, seg_summary, seg_download])

            @shown
            def seg_redraw(image_id, result_id, r, g, b, opacity):
                if result_id is not None:
                    return demo.segment_overlay(result_id, [r, g, b], opacity)
                return demo.preview(image_id, [r, g, b]) if image_id is not None else gr.update()

            for control in (*seg_rgb, seg_opacity):
                control.input(seg_redraw, [seg_image_id, seg_result_id, *seg_rgb, seg_opacity], seg_view)

        # ---------------- Prompt ----------------
        with gr.Tab("Prompt", id="prompt"):
            prompt_state = gr.State(None)
            with gr.Row():
                with gr.Column(scale=1):
                    prompt_file = gr.File(label="image", file_types=UPLOAD_TYPES, elem_id="prompt-file")
                    if "rgb" in examples:
                        prompt_example = gr.Button("use the example image", size="sm", elem_id="prompt-example")
                    prompt_ckpt = gr.Dropdown(label="promptable (SAM-family) checkpoint",
                                              choices=demo.choices("prompt"), value=prompt_default,
                                              elem_id="prompt-ckpt")
                    prompt_about = gr.Markdown(demo.describe(prompt_default))
                    prompt_mode = gr.Radio(list(MODES), value=MODES[0], label="a click adds",
                                           elem_id="prompt-mode")
                    with gr.Row():
                        prompt_undo = gr.Button("Undo", size="sm", elem_id="prompt-undo")
                        prompt_clear = gr.Button("Clear", size="sm", elem_id="prompt-clear")
                    gr.Markdown("The image is encoded once (first click); further clicks re-run only SAM's "
                                "prompt encoder and mask decoder.")
                with gr.Column(scale=2):
                    prompt_view = gr.Image(label="click on the image", type="numpy", format="png",
                                           interactive=False, elem_id="prompt-view")
                    prompt_text = gr.Markdown(elem_id="prompt-text")

            @shown
            def prompt_upload(path):
                if not path:
                    return None, None, ""
                image_id, _ = demo.upload(path)
                state = demo.prompt_start(image_id)
                picture, text = demo.prompt_view(state, None)
                return state, picture, text

            prompt_file.change(prompt_upload, prompt_file, [prompt_state, prompt_view, prompt_text])
            if "rgb" in examples:
                prompt_example.click(lambda: str(examples["rgb"]), None, prompt_file)

            @shown
            def prompt_click(state: PromptState | None, label, mode, evt: gr.SelectData):
                if state is None:
                    raise AppError("upload an image first")
                x, y = evt.index[:2]
                state.click(float(x), float(y), mode)
                picture, text = demo.prompt_view(state, label)
                return state, picture, text

            prompt_view.select(prompt_click, [prompt_state, prompt_ckpt, prompt_mode],
                               [prompt_state, prompt_view, prompt_text])

            @shown
            def prompt_edit(state: PromptState | None, label, action: str):
                if state is None:
                    raise AppError("upload an image first")
                state.undo() if action == "undo" else state.clear()
                picture, text = demo.prompt_view(state, label)
                return state, picture, text

            prompt_undo.click(lambda s, c: prompt_edit(s, c, "undo"), [prompt_state, prompt_ckpt],
                              [prompt_state, prompt_view, prompt_text])
            prompt_clear.click(lambda s, c: prompt_edit(s, c, "clear"), [prompt_state, prompt_ckpt],
                               [prompt_state, prompt_view, prompt_text])
            prompt_ckpt.change(demo.describe, prompt_ckpt, prompt_about)

        # ---------------- Change ----------------
        with gr.Tab("Change", id="change"):
            with gr.Row():
                with gr.Column(scale=1):
                    change_a = gr.File(label="before", file_types=UPLOAD_TYPES, elem_id="change-a")
                    change_b = gr.File(label="after", file_types=UPLOAD_TYPES, elem_id="change-b")
                    if "before" in examples:
                        change_example = gr.Button("use the example pair", size="sm", elem_id="change-example")
                    change_ckpt = gr.Dropdown(label="change-detection checkpoint", choices=demo.choices("change"),
                                              value=change_default, elem_id="change-ckpt")
                    change_about = gr.Markdown(demo.describe(change_default) if change_default else
                                               "No change-detection checkpoint found under --checkpoints: train "
                                               "one (configs/peftcd_*.yaml) and pick it here.")
                    change_opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="mask opacity")
                    change_run = gr.Button("Run", variant="primary", elem_id="change-run")
                with gr.Column(scale=2):
                    change_view = gr.Image(label="changes (red) over the after image", type="numpy", format="png",
                                           interactive=False, elem_id="change-view")
                    change_text = gr.Markdown(elem_id="change-text")
                    change_download = gr.File(label="mask download", interactive=False)

            @shown
            def change_go(path_a, path_b, label, opacity):
                if not path_a or not path_b:
                    raise AppError("upload both images (before and after)")
                before_id, _ = demo.upload(path_a)
                after_id, _ = demo.upload(path_b)
                result = demo.change(before_id, after_id, label, opacity)
                return result.overlay, result.summary, str(result.mask_path)

            change_run.click(change_go, [change_a, change_b, change_ckpt, change_opacity],
                             [change_view, change_text, change_download])
            if "before" in examples:
                change_example.click(lambda: (str(examples["before"]), str(examples["after"])), None,
                                     [change_a, change_b])
            change_ckpt.change(demo.describe, change_ckpt, change_about)

        # ---------------- Batch ----------------
        with gr.Tab("Batch", id="batch"):
            gr.Markdown("Folders of images (any size, GeoTIFFs keep their georeference, resumable) are a job for "
                        "the command line, not a web page: `vadapt infer` (see docs/inference.md).")
            batch_ckpt = gr.Dropdown(label="checkpoint", choices=list(demo.checkpoints), value=seg_default)
            batch_cmd = gr.Code(demo.batch_help(seg_default), language="shell", label="command")
            batch_ckpt.change(demo.batch_help, batch_ckpt, batch_cmd)

        # ---------------- 3D ----------------
        with gr.Tab("3D", id="points"):
            points_default = demo.point_default()
            with gr.Row():
                with gr.Column(scale=1):
                    points_file = gr.File(label="point cloud or mesh (.ply, .obj, .off, .npy, .xyz)",
                                          file_types=POINT_UPLOAD_TYPES, elem_id="points-file")
                    points_ckpt = gr.Dropdown(label="point-cloud checkpoint (classification or part segmentation)",
                                              choices=demo.point_choices(), value=points_default,
                                              elem_id="points-ckpt")
                    points_about = gr.Markdown(demo.describe(points_default) if points_default else
                                               "No point-cloud checkpoint found under --checkpoints: train one "
                                               "(configs/point_*.yaml) and pick it here.")
                    points_count = gr.Slider(256, 8192, value=1024, step=256, label="points fed to the model",
                                             elem_id="points-count")
                    points_run = gr.Button("Run", variant="primary", elem_id="points-run")
                with gr.Column(scale=2):
                    points_view = gr.Model3D(label="cloud (coloured by predicted part for part segmentation)",
                                             clear_color=(1.0, 1.0, 1.0, 1.0), elem_id="points-view")
                    points_scores = gr.Label(label="class probabilities / share of points per part",
                                             num_top_classes=10, elem_id="points-scores")
                    points_text = gr.Markdown(elem_id="points-text")
                    points_download = gr.File(label="coloured .ply download (part segmentation)",
                                              interactive=False, elem_id="points-download")

            @shown
            def points_upload(path):
                if not path:
                    return None, None, "", None
                return str(demo.point_view(path)), None, "", None

            @shown
            def points_go(path, label, count):
                result = demo.predict_points(path, label, int(count))
                return (str(result.model_path), result.scores, result.summary,
                        str(result.download) if result.download else None)

            points_outputs = [points_view, points_scores, points_text, points_download]
            points_file.change(points_upload, points_file, points_outputs)
            points_run.click(points_go, [points_file, points_ckpt, points_count], points_outputs)
            points_ckpt.change(demo.describe, points_ckpt, points_about)

        # ---------------- Generate ----------------
        generation.build_tab(demo, shown)
    return page


def launch(demo: Demo, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           block: bool = True) -> gr.Blocks:
    """Serve the page (``block=False`` returns at once, for tests)."""
    page = build(demo)
    page.queue(default_concurrency_limit=1)  # one model run at a time: the CPU is the bottleneck
    page.launch(server_name=host, server_port=port, share=share, show_error=True, inbrowser=False,
                max_file_size=f"{int(demo.limits.max_upload_mb * 1024)}kb", ssr_mode=False,
                prevent_thread_lock=not block, quiet=not block, footer_links=[], theme=offline_theme(),
                allowed_paths=[str(demo.workdir)])
    return page


def workdir() -> Path:
    """A fresh folder for this run's downloads and examples (under the system temp dir, which Gradio serves)."""
    return Path(tempfile.mkdtemp(prefix="vadapt-demo-"))
