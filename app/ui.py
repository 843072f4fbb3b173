"""The Gradio page (the only module that imports ``gradio`` at import time): seven tabs wired to
:class:`~.service.Demo` (the Generate tab's layout is :func:`.generate.build_tab`, called from here).

Every tab has one message area, under its Run button, and every action reports there through :func:`on`: what
it did, or why it failed. A failure changes nothing else on the page (no error badges, the last result stays).
Run buttons are disabled, with the reason in the message area, while the tab cannot run (no checkpoint of its
kind, nothing uploaded yet). Small pictures are shown enlarged (:func:`.render.enlarge`); downloads keep the
real size.

Offline by construction: analytics off (``GRADIO_ANALYTICS_ENABLED=False`` before the import), system fonts
(no web-font fetches), no server-side rendering process, ``share`` only when asked, no Share buttons.
"""

from __future__ import annotations

import copy
import functools
import html
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no usage statistics, no version check
os.environ.setdefault("GRADIO_SSR_MODE", "False")

import gradio as gr  # noqa: E402

from . import demo_files  # noqa: E402
from . import generate as generation  # noqa: E402
from .limits import AppError  # noqa: E402
from .points import UPLOAD_TYPES as POINT_UPLOAD_TYPES  # noqa: E402
from .prompts import MODES, PromptState  # noqa: E402
from .render import enlarge  # noqa: E402
from .service import UPLOAD_FIRST, Demo, failure_message  # noqa: E402

UPLOAD_TYPES = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy", ".npz"]
MESSAGE = "vadapt-message"
ERROR = "vadapt-error"
#: image toolbars: fullscreen only (no Share off Spaces; downloads are the real-size files beside each result)
IMAGE_BUTTONS = ["fullscreen"]
CSS = f"""
.{MESSAGE} {{ min-height: 1.6em; }}
.{ERROR}, .{ERROR} * {{ color: var(--error-text-color, #b91c1c) !important; }}
.vadapt-pixels img {{ image-rendering: pixelated; }}
"""


def offline_theme() -> gr.themes.Base:
    """Gradio's default look with system fonts, so the page needs no font download."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "Consolas", "monospace"])


# ---- the one way actions report ------------------------------------------------------------------------------
def message_area(elem_id: str, text: str | None = "") -> gr.Markdown:
    """A tab's message area (what the last action did, or why it failed, or why Run waits)."""
    return gr.Markdown(text or "", elem_id=elem_id, elem_classes=[MESSAGE])


def status(text: str | None, error: bool = False) -> Any:
    """The message area's update: ``text`` (an error in red, its HTML escaped), or no change for ``None``."""
    if text is None:
        return gr.update()
    if error:
        text = f"**Error:** {html.escape(text, quote=False)}"
    return gr.update(value=text, elem_classes=[MESSAGE, ERROR] if error else [MESSAGE])


def run_button(reason: str | None) -> Any:
    """A Run button's update: enabled when nothing stops the tab (``reason`` is None), else disabled."""
    return gr.update(interactive=reason is None)


def on(event: Callable[..., Any], fn: Callable[..., Sequence[Any]], inputs: Any, outputs: list[Any],
       message: gr.Markdown, failure: dict[Any, Any] | None = None, **options: Any) -> Any:
    """Wire ``fn`` to ``event`` (a listener such as ``button.click``) so that it reports in ``message``.

    ``fn`` returns one value per output and, last, the message text (``None``: leave the area as it is). When
    it raises, no output changes (no error badges; the last result stays) except those named in ``failure``
    (component -> value, e.g. a Run button disabled), and the area shows the one-line reason
    (:func:`~.service.failure_message`: an :class:`~.limits.AppError` as is, a bug as its type, logged in full).
    """
    failure = failure or {}

    @functools.wraps(fn)  # keeps the signature: Gradio passes event data (gr.SelectData) and progress by it
    def reported(*args: Any, **kwargs: Any) -> list[Any]:
        try:
            *values, text = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every failure is the message, never a stack trace or a badge
            kept = [copy.copy(failure[c]) if c in failure else gr.update() for c in outputs]
            return [*kept, status(failure_message(exc), error=True)]
        return [*values, status(text)]

    return event(reported, inputs, [*outputs, message], **options)


def keep(n: int = 1) -> list[Any]:
    """``n`` "no change" updates."""
    return [gr.update() for _ in range(n)]


def _band_dropdowns(label: str) -> list[gr.Dropdown]:
    return [gr.Dropdown(label=f"{label} {c}", choices=[], interactive=True, min_width=80) for c in ("R", "G", "B")]


def _band_updates(image) -> list[Any]:
    labels, picked = image.band_labels(), image.default_rgb()
    return [gr.update(choices=labels, value=picked[i]) for i in range(3)]


def _image_line(image) -> str:
    return (f"{image.name}: {image.shape[1]}x{image.shape[0]} px, {len(image.array)} band(s) "
            f"({', '.join(image.band_labels())})")


def _either(reason: str | None, done: str) -> str:
    """The message after an action that changed whether the tab can run: ``done``, then why Run waits."""
    return f"{done}  \n{reason}" if reason else done


def result_image(label: str, elem_id: str, **kwargs: Any) -> gr.Image:
    """An output picture: no upload, fullscreen only (downloads are the real-size files)."""
    return gr.Image(label=label, type="numpy", format="png", interactive=False, buttons=IMAGE_BUTTONS,
                    elem_id=elem_id, **kwargs)


# ---- the page -------------------------------------------------------------------------------------------------
def build(demo: Demo) -> gr.Blocks:
    """The page for ``demo``; call ``.launch()`` (see :func:`launch`)."""
    # uploads in Gradio's cache are deleted after an hour (checked hourly)
    with gr.Blocks(title="vadapt demo", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown("# vadapt: frozen foundation models + small adapters\nUpload an image, pick an adapter "
                    "checkpoint, run. Files stay on this machine; the models run on its CPU/GPU.")
        _segment_tab(demo)
        _prompt_tab(demo)
        _change_tab(demo)
        _depth_tab(demo)
        _batch_tab(demo)
        _points_tab(demo)
        generation.build_tab(demo)
    return page


def _segment_tab(demo: Demo) -> None:
    default = demo.default("segment", "quickstart")
    reason = demo.not_ready("segment", default, UPLOAD_FIRST["segment"])
    with gr.Tab("Segment", id="segment"):
        image_id, result_id = gr.State(None), gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                file = gr.File(label="image (PNG, JPEG, TIFF, GeoTIFF, .npy/.npz)", file_types=UPLOAD_TYPES,
                               elem_id="seg-file")
                example = (gr.Button("use the example Sentinel-2 scene", size="sm", elem_id="seg-example")
                           if "s2" in demo.examples else None)
                with gr.Accordion("file options", open=False):
                    bands_text = gr.Textbox(label="band names of the file, comma separated (when it does not name "
                                                  "them)", placeholder="blue, green, red, nir")
                    scale = gr.Number(label="extra value factor, before the checkpoint's own scaling (1 = the "
                                            "file's values, as the checkpoint expects them)", value=1.0)
                ckpt = gr.Dropdown(label="adapter checkpoint", choices=demo.choices("segment"), value=default,
                                   elem_id="seg-ckpt")
                about = gr.Markdown(demo.describe(default) if default else "", elem_id="seg-about")
                with gr.Row():
                    rgb = _band_dropdowns("composite")
                opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="mask opacity", elem_id="seg-opacity")
                geotiff = gr.Checkbox(value=True, label="download as GeoTIFF when the input is georeferenced")
                run = gr.Button("Run", variant="primary", interactive=reason is None, elem_id="seg-run")
                message = message_area("seg-message", reason)
            with gr.Column(scale=2):
                view = result_image("result", "seg-view")
                legend = gr.HTML(elem_id="seg-legend")
                summary = gr.Markdown(elem_id="seg-summary")
                download = gr.File(label="mask download", interactive=False, elem_id="seg-download")

    def upload(path, file_bands, factor, label):
        waits = demo.not_ready("segment", label, None if path else UPLOAD_FIRST["segment"])
        if not path:  # the upload was removed: the result stays, Run waits for another
            return [None, *keep(5), *keep(3), run_button(waits), waits]
        new_id, image = demo.upload(path, file_bands, factor)
        return [new_id, None, enlarge(demo.preview(new_id)), "", "", None, *_band_updates(image),
                run_button(waits), _either(waits, _image_line(image))]

    upload_outputs = [image_id, result_id, view, legend, summary, download, *rgb, run]
    upload_failed = {image_id: None, run: run_button("no image")}
    for event in (file.change, bands_text.submit, scale.submit):
        on(event, upload, [file, bands_text, scale, ckpt], upload_outputs, message, upload_failed)
    if example is not None:
        example.click(lambda: str(demo.examples["s2"]), None, file)

    def pick(label, current):
        waits = demo.not_ready("segment", label, None if current else UPLOAD_FIRST["segment"])
        return demo.describe(label), run_button(waits), waits or ""

    on(ckpt.change, pick, [ckpt, image_id], [about, run], message)

    def go(current, label, r, g, b, alpha, as_geotiff):
        result = demo.segment(current, label, [r, g, b], alpha, as_geotiff)
        done = f"Done in {result.seconds:.1f} s with {demo.checkpoints[label].path.name}."
        return result.result_id, enlarge(result.overlay), result.legend, result.summary, str(result.mask_path), done

    on(run.click, go, [image_id, ckpt, *rgb, opacity, geotiff], [result_id, view, legend, summary, download],
       message)

    def redraw(current, result, r, g, b, alpha):
        if result is not None:
            return enlarge(demo.segment_overlay(result, [r, g, b], alpha)), None
        return (enlarge(demo.preview(current, [r, g, b])) if current is not None else gr.update()), None

    for control in (*rgb, opacity):
        on(control.input, redraw, [image_id, result_id, *rgb, opacity], [view], message)


def _prompt_tab(demo: Demo) -> None:
    default = demo.default("prompt", "sam_tiny")
    reason = demo.not_ready("prompt", default, UPLOAD_FIRST["prompt"])
    with gr.Tab("Prompt", id="prompt"):
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                file = gr.File(label="image", file_types=UPLOAD_TYPES, elem_id="prompt-file")
                example = (gr.Button("use the example image", size="sm", elem_id="prompt-example")
                           if "rgb" in demo.examples else None)
                ckpt = gr.Dropdown(label="promptable (SAM-family) checkpoint", choices=demo.choices("prompt"),
                                   value=default, elem_id="prompt-ckpt")
                about = gr.Markdown(demo.describe(default) if default else "", elem_id="prompt-about")
                mode = gr.Radio(list(MODES), value=MODES[0], label="a click adds", elem_id="prompt-mode")
                with gr.Row():
                    undo = gr.Button("Undo", size="sm", elem_id="prompt-undo")
                    clear = gr.Button("Clear", size="sm", elem_id="prompt-clear")
                gr.Markdown("The image is encoded once (first click); further clicks re-run only SAM's prompt "
                            "encoder and mask decoder.")
                message = message_area("prompt-message", reason)
            with gr.Column(scale=2):
                view = result_image("click on the image", "prompt-view")
                text = gr.Markdown(elem_id="prompt-text")

    def upload(path, label):
        waits = demo.not_ready("prompt", label)
        if not path:  # removed: the picture stays (and can still be clicked)
            return [*keep(3), None]
        new_id, image = demo.upload(path)
        new = demo.prompt_start(new_id)
        picture, line = demo.prompt_view(new, None)
        return new, enlarge(picture), line, _either(waits, _image_line(image))

    on(file.change, upload, [file, ckpt], [state, view, text], message)
    if example is not None:
        example.click(lambda: str(demo.examples["rgb"]), None, file)

    def click(current: PromptState | None, label, how, evt: gr.SelectData):
        x, y = evt.index[:2]
        new, picture, line = demo.prompt_click(current, x, y, how, label)
        return new, enlarge(picture), line, ""

    on(view.select, click, [state, ckpt, mode], [state, view, text], message)

    def edit(action: str) -> Callable[..., Any]:
        def run(current: PromptState | None, label):
            new, picture, line = demo.prompt_edit(current, label, action)
            return new, enlarge(picture), line, ""

        run.__name__ = f"prompt_{action}"
        return run

    on(undo.click, edit("undo"), [state, ckpt], [state, view, text], message)
    on(clear.click, edit("clear"), [state, ckpt], [state, view, text], message)
    on(ckpt.change, lambda label: (demo.describe(label), demo.not_ready("prompt", label) or ""), ckpt, [about],
       message)


def _change_tab(demo: Demo) -> None:
    default = demo.default("change", "change_tiny")
    reason = demo.not_ready("change", default, UPLOAD_FIRST["change"])
    with gr.Tab("Change", id="change"):
        before_id, after_id = gr.State(None), gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                before = gr.File(label="before", file_types=UPLOAD_TYPES, elem_id="change-a")
                after = gr.File(label="after", file_types=UPLOAD_TYPES, elem_id="change-b")
                example = (gr.Button("use the example pair", size="sm", elem_id="change-example")
                           if "before" in demo.examples else None)
                ckpt = gr.Dropdown(label="change-detection checkpoint", choices=demo.choices("change"),
                                   value=default, elem_id="change-ckpt")
                about = gr.Markdown(demo.describe(default) if default else "", elem_id="change-about")
                opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="mask opacity")
                run = gr.Button("Run", variant="primary", interactive=reason is None, elem_id="change-run")
                message = message_area("change-message", reason)
            with gr.Column(scale=2):
                view = result_image("changes (red) over the after image", "change-view")
                text = gr.Markdown(elem_id="change-text")
                download = gr.File(label="mask download", interactive=False, elem_id="change-download")

    def waits(label, a, b) -> str | None:
        return demo.not_ready("change", label, None if a and b else UPLOAD_FIRST["change"])

    def upload(which: str) -> Callable[..., Any]:
        def read(path, label, other):
            if not path:
                return None, run_button("no image"), waits(label, None, other)
            new_id, image = demo.upload(path)
            return new_id, run_button(waits(label, new_id, other)), _either(waits(label, new_id, other),
                                                                            f"{which}: {_image_line(image)}")

        read.__name__ = f"upload_{which}"
        return read

    failed = run_button("no image")
    on(before.change, upload("before"), [before, ckpt, after_id], [before_id, run], message,
       {before_id: None, run: failed})
    on(after.change, upload("after"), [after, ckpt, before_id], [after_id, run], message,
       {after_id: None, run: failed})
    if example is not None:
        example.click(lambda: (str(demo.examples["before"]), str(demo.examples["after"])), None, [before, after])

    def pick(label, a, b):
        why = waits(label, a, b)
        return demo.describe(label), run_button(why), why or ""

    on(ckpt.change, pick, [ckpt, before_id, after_id], [about, run], message)

    def go(a, b, label, alpha):
        if not a or not b:
            raise AppError("upload both images (before and after)")
        result = demo.change(a, b, label, alpha)
        done = f"Done in {result.seconds:.1f} s with {demo.checkpoints[label].path.name}."
        return enlarge(result.overlay), result.summary, str(result.mask_path), done

    on(run.click, go, [before_id, after_id, ckpt, opacity], [view, text, download], message)


def _depth_tab(demo: Demo) -> None:
    """Depth checkpoints (``image -> depth_map``): one image in, its relative depth coloured above a colour bar, the
    depth as a 16-bit PNG and as float32 (``.npy``, GeoTIFF for georeferenced inputs). A built-in depth demo is a
    checkpoint file named ``depth*.safetensors`` (the default pick) in the built-in folder; ``depth`` in
    ``demo.examples`` (else ``rgb``) is the example image."""
    default = demo.default("depth", "depth")
    reason = demo.not_ready("depth", default, UPLOAD_FIRST["depth"])
    example_path = demo.examples.get("depth") or demo.examples.get("rgb")
    with gr.Tab("Depth", id="depth"):
        image_id = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                file = gr.File(label="image (PNG, JPEG, TIFF, GeoTIFF, .npy/.npz)", file_types=UPLOAD_TYPES,
                               elem_id="depth-file")
                example = (gr.Button("use the example image", size="sm", elem_id="depth-example")
                           if example_path is not None else None)
                ckpt = gr.Dropdown(label="depth checkpoint", choices=demo.choices("depth"), value=default,
                                   elem_id="depth-ckpt")
                about = gr.Markdown(demo.describe(default) if default else "", elem_id="depth-about")
                geotiff = gr.Checkbox(value=True, label="float download as GeoTIFF when the input is georeferenced "
                                                        "(else .npy)")
                gr.Markdown("Self-supervised depth is relative: right up to one unknown scale. The image is "
                            "predicted whole at the checkpoint's training size, as `vadapt infer` does.")
                run = gr.Button("Run", variant="primary", interactive=reason is None, elem_id="depth-run")
                message = message_area("depth-message", reason)
            with gr.Column(scale=2):
                view = result_image("depth (near red .. far blue) above its colour bar", "depth-view")
                summary = gr.Markdown(elem_id="depth-summary")
                with gr.Row():
                    png = gr.File(label="16-bit PNG (depth x 256, 0 = no depth)", interactive=False,
                                  elem_id="depth-png")
                    floats = gr.File(label="float32 depth (.npy / GeoTIFF)", interactive=False,
                                     elem_id="depth-float")

    def upload(path, label):
        waits = demo.not_ready("depth", label, None if path else UPLOAD_FIRST["depth"])
        if not path:  # the upload was removed: the result stays, Run waits for another
            return [None, *keep(4), run_button(waits), waits]
        new_id, image = demo.upload(path)
        return [new_id, enlarge(demo.preview(new_id)), "", None, None, run_button(waits),
                _either(waits, _image_line(image))]

    on(file.change, upload, [file, ckpt], [image_id, view, summary, png, floats, run], message,
       {image_id: None, run: run_button("no image")})
    if example is not None:
        example.click(lambda: str(example_path), None, file)

    def pick(label, current):
        waits = demo.not_ready("depth", label, None if current else UPLOAD_FIRST["depth"])
        return demo.describe(label), run_button(waits), waits or ""

    on(ckpt.change, pick, [ckpt, image_id], [about, run], message)

    def go(current, label, as_geotiff):
        result = demo.depth(current, label, as_geotiff)
        done = f"Done in {result.seconds:.1f} s with {demo.checkpoints[label].path.name}."
        return result.picture, result.summary, str(result.png_path), str(result.float_path), done

    on(run.click, go, [image_id, ckpt, geotiff], [view, summary, png, floats], message)


def _batch_table(rows: list[tuple[str, str]]) -> str:
    cells = "\n".join(f"| {html.escape(name).replace('|', '&#124;')} | {summary} |" for name, summary in rows)
    return f"| file | mask |\n|---|---|\n{cells}"


def _batch_tab(demo: Demo) -> None:
    default = demo.default("segment", "quickstart")
    reason = demo.batch_not_ready(default, None)
    with gr.Tab("Batch", id="batch"):
        gr.Markdown(f"Segment a few images at once (up to {demo.limits.max_batch_files}) and download their masks "
                    "as a zip. Folders of any size (GeoTIFFs keep their georeference, resumable) are a job for the "
                    "command line: `vadapt infer`, as shown below (see docs/inference.md).")
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label="images", file_count="multiple", file_types=UPLOAD_TYPES, elem_id="batch-files")
                ckpt = gr.Dropdown(label="checkpoint", choices=demo.batch_choices(), value=default,
                                   elem_id="batch-ckpt")
                geotiff = gr.Checkbox(value=True, label="GeoTIFF masks for georeferenced inputs")
                run = gr.Button("Run", variant="primary", interactive=reason is None, elem_id="batch-run")
                message = message_area("batch-message", reason)
            with gr.Column(scale=2):
                table = gr.Markdown(elem_id="batch-table")
                download = gr.File(label="masks (zip)", interactive=False, elem_id="batch-download")
                command = gr.Code(demo.batch_help(default), language="shell", label="a folder, on the command line",
                                  lines=2, wrap_lines=True, show_line_numbers=False, interactive=False,
                                  elem_id="batch-cmd")

    def changed(paths, label):
        why = demo.batch_not_ready(label, paths)
        return demo.batch_help(label), run_button(why), why or f"{len(paths)} file(s) ready."

    on(files.change, changed, [files, ckpt], [command, run], message)
    on(ckpt.change, changed, [files, ckpt], [command, run], message)

    def go(paths, label, as_geotiff):
        result = demo.batch(paths, label, as_geotiff)
        done = f"Segmented {len(result.rows)} of {len(paths)} file(s) in {result.seconds:.1f} s."
        if result.failures:
            done += "  \nNot segmented: " + "; ".join(html.escape(f, quote=False) for f in result.failures)
        return _batch_table(result.rows), str(result.archive), done

    on(run.click, go, [files, ckpt, geotiff], [table, download], message)


def _points_tab(demo: Demo) -> None:
    default = demo.point_default()
    reason = demo.not_ready("points", default, UPLOAD_FIRST["points"])
    with gr.Tab("3D", id="points"):
        cloud = gr.State(None)  # the upload's path once it has been read
        with gr.Row():
            with gr.Column(scale=1):
                file = gr.File(label="point cloud or mesh (.ply, .obj, .off, .npy, .xyz)",
                               file_types=POINT_UPLOAD_TYPES, elem_id="points-file")
                clouds = example_clouds(demo.examples)
                if clouds:
                    with gr.Row():
                        which = gr.Dropdown(label="example cloud (vadapt make-shapes)", choices=list(clouds),
                                            value=next(iter(clouds)), min_width=120, elem_id="points-which")
                        example = gr.Button("use the example cloud", size="sm", elem_id="points-example")
                ckpt = gr.Dropdown(label="point-cloud checkpoint (classification or part segmentation)",
                                   choices=demo.point_choices(), value=default, elem_id="points-ckpt")
                about = gr.Markdown(demo.describe(default) if default else "", elem_id="points-about")
                count = gr.Slider(256, 8192, value=1024, step=256, label="points fed to the model (the built-in "
                                  "3D demo was trained on 1024: keep 512-2048 for it)", elem_id="points-count")
                run = gr.Button("Run", variant="primary", interactive=reason is None, elem_id="points-run")
                message = message_area("points-message", reason)
            with gr.Column(scale=2):
                view = gr.Model3D(label="cloud (coloured by predicted part for part segmentation)",
                                  clear_color=(1.0, 1.0, 1.0, 1.0), elem_id="points-view")
                scores = gr.Label(label="class probabilities / share of points per part", num_top_classes=10,
                                  elem_id="points-scores")
                text = gr.Markdown(elem_id="points-text")
                download = gr.File(label="coloured .ply download (part segmentation)", interactive=False,
                                   elem_id="points-download")

    def upload(path, label):
        waits = demo.not_ready("points", label, None if path else UPLOAD_FIRST["points"])
        if not path:
            return [None, *keep(4), run_button(waits), waits]
        shown = demo.point_view(path)
        return [path, str(shown), None, "", None, run_button(waits), _either(waits, f"{Path(path).name} loaded.")]

    on(file.change, upload, [file, ckpt], [cloud, view, scores, text, download, run], message,
       {cloud: None, run: run_button("no cloud")})
    if clouds:
        example.click(lambda name: str(clouds[name]), which, file)

    def pick(label, path):
        waits = demo.not_ready("points", label, None if path else UPLOAD_FIRST["points"])
        return demo.describe(label) if label else "", run_button(waits), waits or ""

    on(ckpt.change, pick, [ckpt, cloud], [about, run], message)

    def go(path, label, points):
        result = demo.predict_points(path, label, int(points))
        return (str(result.model_path), result.scores, result.summary,
                str(result.download) if result.download else None, f"Done with {demo.checkpoints[label].path.name}.")

    on(run.click, go, [cloud, ckpt, count], [view, scores, text, download], message)


def example_clouds(examples: dict[str, Path]) -> dict[str, Path]:
    """The 3D tab's example clouds by class name (``demo_files.write_examples``' ``points_<class>`` entries)."""
    prefix = demo_files.POINT_EXAMPLE_PREFIX
    return {key.removeprefix(prefix): path for key, path in examples.items() if key.startswith(prefix)}


def launch(demo: Demo, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           block: bool = True) -> gr.Blocks:
    """Serve the page (``block=False`` returns at once, for tests)."""
    page = build(demo)
    page.queue(default_concurrency_limit=1)  # one model run at a time: the CPU is the bottleneck
    page.launch(server_name=host, server_port=port, share=share, show_error=True, inbrowser=False,
                max_file_size=f"{int(demo.limits.max_upload_mb * 1024)}kb", ssr_mode=False,
                prevent_thread_lock=not block, quiet=not block, footer_links=[], theme=offline_theme(), css=CSS,
                allowed_paths=[str(demo.workdir)])
    return page


def workdir() -> Path:
    """A fresh folder for this run's downloads and examples (under the system temp dir, which Gradio serves)."""
    return Path(tempfile.mkdtemp(prefix="vadapt-demo-"))
