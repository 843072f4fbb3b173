"""The Generate tab: sampling from diffusion adapter checkpoints (``DiffusionAdapterTask``), without Gradio
except in :func:`build_tab`, which imports it when the page is built.

* The picker lists the checkpoints whose task generates (the ``generate`` kind of
  :func:`vadapt.app.checkpoints.kinds_of`); the task's ``kind`` decides the inputs and the output: an image
  (``image``), an animated GIF of ``F`` frames (``video``; with an I2V-Adapter a first frame is required), or a
  row of ``N`` views (``multiview``; an image-to-multiview MV-Adapter needs a reference image).
* Strength: ResAdapter's LoRA strength (:func:`~vadapt.adapters.resadapter.model.set_resadapter_strength`),
  where 0 switches the adapter off entirely (:func:`~vadapt.adapters.resadapter.model.disable_resadapter`: LoRA
  branch off *and* the base norms back, i.e. the base model exactly); MV-Adapter's multi-view attention weight
  (``mv_scale``, :func:`~vadapt.adapters.mv_adapter.model.set_mv_scales`); I2V-Adapter has none.
* The size is checked against the VAE factor (the task's one-sentence message) and the first frame / reference
  image for presence before any denoising; progress is reported per denoising step.
* :func:`make_demo_checkpoints` writes the built-in demo: tiny random-init bases (``sd15_test``,
  ``animatediff_test``) as diffusers folders, and a ResAdapter, an I2V-Adapter and an MV-Adapter with RANDOM
  weights beside them (they show the plumbing, not image quality).
"""

from __future__ import annotations

import functools
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoints import CheckpointInfo
from .limits import AppError, Limits

IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".webp", ".bmp"]
MAX_SIDE = 2048
MAX_STEPS = 200
MAX_FRAMES = 32
RANDOM_NOTE = ("random weights (a tiny random-init base, `{backbone}`, and an untrained adapter): it shows the "
               "plumbing (prompt, adapter, sampler, picture), not image quality; see BENCHMARKS.md for trained results")
# the built-in demo (make_demo_checkpoints): file names and the base folders beside them
DEMO_RESADAPTER = "resadapter_tiny.safetensors"
DEMO_I2V = "i2v_tiny.safetensors"
DEMO_MV = "mv_tiny.safetensors"
DEMO_CHECKPOINTS = (DEMO_RESADAPTER, DEMO_I2V, DEMO_MV)
DEMO_DEFAULT = "resadapter_tiny"  # the tab's default among the built-in ones (a user's own checkpoint comes first)
DEMO_BASES = {"sd15_test": "sd15_tiny_base", "animatediff_test": "animatediff_tiny_base"}
DEMO_FRAMES = DEMO_VIEWS = 4
_RUN_LOCK = threading.Lock()  # strength is state of the cached model: set it and sample as one step

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class GenerationInfo:
    """What the tab needs to know about a diffusion checkpoint, read from its manifest (no model built)."""

    kind: str  # image, video, multiview
    adapter: str  # resadapter, i2v_adapter, mv_adapter, lora, ... or "" (none)
    backbone: str
    size: int  # a default side in pixels (the UNet's sample size times the VAE factor)
    vae_factor: int
    steps: int
    guidance: float
    num_frames: int
    num_views: int
    use_ref: bool
    strength: float  # the adapter's stored strength (ResAdapter) / mv_scale (MV-Adapter); 1.0 otherwise

    @property
    def i2v(self) -> bool:
        return self.adapter == "i2v_adapter"

    @property
    def has_strength(self) -> bool:
        return self.adapter in ("resadapter", "mv_adapter")

    @property
    def random_weights(self) -> bool:
        return self.backbone.endswith("_test")  # the tiny architectures exist only with random weights


@dataclass(frozen=True)
class Controls:
    """Which inputs the tab shows for a checkpoint (and the strength slider's meaning)."""

    kind: str
    strength_visible: bool
    strength_label: str
    strength_value: float
    strength_max: float
    strength_note: str
    first_frame: bool
    reference: bool
    frames: bool
    size: int
    steps: int
    guidance: float
    num_frames: int


@dataclass
class GenerateResult:
    """What the tab shows after a run: one of ``image``, ``frames`` or ``views``, the file written and a line."""

    kind: str
    path: Path  # PNG (image), GIF (video) or PNG row of views (multiview)
    summary: str
    image: np.ndarray | None = None  # (H, W, 3) uint8
    frames: np.ndarray | None = None  # (F, H, W, 3) uint8
    views: list[np.ndarray] | None = None  # N x (H, W, 3) uint8
    steps_run: int = 0


# ---- checkpoints -----------------------------------------------------------------------------------------
def is_generation_checkpoint(info: CheckpointInfo) -> bool:
    """Whether a checkpoint is a diffusion adapter (the Generate tab's)."""
    return "generate" in info.kinds


def choices(checkpoints: dict[str, CheckpointInfo]) -> list[str]:
    """Labels of the diffusion adapter checkpoints."""
    return [label for label, info in checkpoints.items() if is_generation_checkpoint(info)]


def checkpoint(checkpoints: dict[str, CheckpointInfo], label: str | None) -> CheckpointInfo:
    """The diffusion checkpoint behind a label; anything else (a path, another tab's model) is refused."""
    info = checkpoints.get(label or "")
    if info is None:
        raise AppError("pick a checkpoint from the list" if not label else "unknown checkpoint: pick one from "
                       "the list")
    if not is_generation_checkpoint(info):
        raise AppError(f"{info.path.name} is a {info.task}; the Generate tab needs a diffusion adapter checkpoint")
    return info


@functools.lru_cache(maxsize=64)
def _manifest(path: Path, mtime: float) -> dict[str, Any]:
    from vadapt.checkpoint import read_manifest

    return read_manifest(path)


def generation_info(info: CheckpointInfo) -> GenerationInfo:
    """The kind, adapter and sampling defaults of a diffusion checkpoint, from its manifest."""
    manifest = _manifest(info.path, info.path.stat().st_mtime)
    args = manifest["init_args"]
    adapter = manifest.get("adapter") or args.get("adapter") or {}
    adapter_args = adapter.get("init_args", {}) if isinstance(adapter, dict) else {}
    class_name = str(adapter.get("class_path", "")).rsplit(".", 1)[-1] if isinstance(adapter, dict) else ""
    method = {"ResAdapterConfig": "resadapter", "I2VAdapterConfig": "i2v_adapter",
              "MVAdapterConfig": "mv_adapter"}.get(class_name, class_name.removesuffix("Config").lower())
    meta = manifest.get("backbone", {})
    factor = int(meta.get("vae_scale_factor") or 8)
    sample = int(meta.get("sample_size") or 64)
    strength = adapter_args.get("strength" if method == "resadapter" else "mv_scale", 1.0)
    return GenerationInfo(
        kind=str(args.get("kind", "image")), adapter=method, backbone=str(meta.get("name") or args.get("backbone")),
        size=sample * factor, vae_factor=factor, steps=int(args.get("num_inference_steps") or 25),
        guidance=float(args.get("guidance_scale", 7.5)),
        num_frames=int(adapter_args.get("num_frames") or args.get("num_frames") or 16),
        num_views=int(args.get("num_views") or adapter_args.get("num_views") or 6),
        use_ref=bool(adapter_args.get("use_ref", False)), strength=float(1.0 if strength is None else strength))


def describe(checkpoints: dict[str, CheckpointInfo], label: str | None) -> str:
    """Markdown about a diffusion checkpoint: adapter, base, kind, what it needs, and whether it is random."""
    info = checkpoints.get(label or "")
    if info is None or not is_generation_checkpoint(info):
        if choices(checkpoints):
            return "No checkpoint selected."
        return ("No diffusion adapter checkpoint found under --checkpoints: train one (e.g. "
                "configs/resadapter_sd15.yaml, i2v_adapter_sd15.yaml, mv_adapter_sd21.yaml) and pick it here.")
    g = generation_info(info)
    what = {"image": "text-to-image", "video": f"video, {g.num_frames} frames (animated GIF)",
            "multiview": f"multi-view, {g.num_views} views in a row"}.get(g.kind, g.kind)
    needs = ""
    if g.kind == "video" and g.i2v:
        needs = "  \nneeds a **first frame** (image-to-video): it is kept as frame 0 and the others follow it"
    elif g.kind == "multiview" and g.use_ref:
        needs = "  \nneeds a **reference image** (image-to-multiview)"
    text = (f"**{g.adapter or 'no adapter'}** on **{g.backbone}**, {what}, {info.trainable:,} trainable "
            f"parameters; size: multiples of {g.vae_factor} px (default {g.size}){needs}")
    if g.random_weights:
        text += "  \n_Demo model with " + RANDOM_NOTE.format(backbone=g.backbone) + "._"
    return text


def controls(checkpoints: dict[str, CheckpointInfo], label: str | None) -> Controls:
    """The inputs to show for a checkpoint (all hidden but the common ones when none is picked)."""
    info = checkpoints.get(label or "")
    if info is None or not is_generation_checkpoint(info):
        return Controls("image", False, "strength", 1.0, 1.0, "", False, False, False, 64, 10, 7.5, DEMO_FRAMES)
    g = generation_info(info)
    if g.adapter == "resadapter":
        label_, maximum = "ResAdapter strength (LoRA scale; 0 = adapter off, the base model exactly)", 2.0
        note = "0 turns ResAdapter off (LoRA branch and adapted norms), so the base model samples."
    elif g.adapter == "mv_adapter":
        label_, maximum = "MV-Adapter multi-view attention weight (mv_scale)", 2.0
        note = "0 drops the multi-view attention (views drawn independently); the camera and reference branches stay."
    else:
        label_, maximum = "strength", 1.0
        note = ("I2V-Adapter has no strength: it always conditions on the first frame." if g.i2v else
                "This adapter has no strength control here.")
    return Controls(g.kind, g.has_strength, label_, g.strength, maximum, note, g.kind == "video" and g.i2v,
                    g.kind == "multiview" and g.use_ref, g.kind == "video", g.size, g.steps, g.guidance,
                    g.num_frames)


# ---- inputs ----------------------------------------------------------------------------------------------
def read_image_input(value: Any, height: int, width: int, limits: Limits, what: str) -> Any:
    """An uploaded image (path, or ``(H, W, 3)`` array as Gradio gives it) resized to ``(1, 3, height, width)``
    in [0, 1]; its size is checked against the limits from the header before any pixel is decoded."""
    import torch
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, np.ndarray):
        array = value
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        limits.check_image(array.shape[0], array.shape[1], 1, what)
        if array.dtype != np.uint8:
            array = np.clip(array.astype(np.float64) * (255 if array.max() <= 1 else 1), 0, 255).astype(np.uint8)
        picture = Image.fromarray(np.ascontiguousarray(array[..., :3]))
    else:
        path = Path(value)
        if not path.is_file():
            raise AppError(f"the {what} is no longer on the server: upload it again")
        limits.check_file_size(path.stat().st_size, path.name)
        try:
            with Image.open(path) as image:
                limits.check_image(image.height, image.width, 1, path.name)
                picture = image.convert("RGB")
        except (OSError, UnidentifiedImageError):
            raise AppError(f"cannot read {path.name} as an image (PNG, JPEG, WebP, BMP)") from None
    picture = picture.convert("RGB").resize((width, height), Image.BICUBIC)
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)


def check_numbers(height: Any, width: Any, steps: Any, seed: Any, frames: Any, limits: Limits) -> tuple[int, ...]:
    """Whole numbers within the tab's bounds (the VAE factor is the task's to check)."""
    values = []
    for name, value in (("height", height), ("width", width), ("steps", steps), ("seed", seed), ("frames", frames)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise AppError(f"{name} must be a whole number, got {value!r}") from None
        if number != int(number):
            raise AppError(f"{name} must be a whole number, got {value}")
        values.append(int(number))
    height, width, steps, seed, frames = values
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
        raise AppError(f"height and width must be between 1 and {MAX_SIDE} px, got {height}x{width}")
    if height * width > limits.max_pixels:
        raise AppError(f"{width}x{height} = {height * width:,} pixels; this demo generates up to "
                       f"{limits.max_pixels:,} pixels")
    if not 1 <= steps <= MAX_STEPS:
        raise AppError(f"steps must be between 1 and {MAX_STEPS}, got {steps}")
    if not 0 <= seed < 2**63:
        raise AppError(f"seed must be between 0 and 2^63 - 1, got {seed}")
    if not 1 <= frames <= MAX_FRAMES:
        raise AppError(f"frames must be between 1 and {MAX_FRAMES}, got {frames}")
    return height, width, steps, seed, frames


def apply_strength(task: Any, g: GenerationInfo, strength: float | None) -> str:
    """Set the adapter's strength on a loaded task (see module docstring); returns a few words for the summary."""
    if g.adapter == "resadapter":
        from vadapt.adapters.resadapter.model import disable_resadapter, enable_resadapter, set_resadapter_strength

        value = g.strength if strength is None else float(strength)
        if value < 0:
            raise AppError(f"strength must be >= 0, got {value:g}")
        if value == 0:
            disable_resadapter(task.backbone)
            return "ResAdapter off"
        enable_resadapter(task.backbone)
        set_resadapter_strength(task.backbone, value)
        return f"ResAdapter strength {value:g}"
    if g.adapter == "mv_adapter":
        from vadapt.adapters.mv_adapter.model import set_mv_scales

        value = g.strength if strength is None else float(strength)
        if value < 0:
            raise AppError(f"mv_scale must be >= 0, got {value:g}")
        set_mv_scales(task.backbone, mv_scale=value)
        return f"mv_scale {value:g}"
    return g.adapter or "no adapter"


# ---- sampling --------------------------------------------------------------------------------------------
def generate(demo: Any, label: str | None, prompt: str, negative_prompt: str = "", height: Any = None,
             width: Any = None, seed: Any = 0, steps: Any = None, guidance: Any = None, strength: Any = None,
             first_frame: Any = None, reference: Any = None, num_frames: Any = None,
             progress: Progress | None = None) -> GenerateResult:
    """Sample with a diffusion checkpoint of ``demo`` (a :class:`~.service.Demo`) and write the result under its
    workdir. Everything the user can get wrong is refused with one sentence before any denoising."""
    from vadapt.inference.generate import to_uint8, write_gif, write_png

    info = checkpoint(demo.checkpoints, label)
    g = generation_info(info)
    prompt = (prompt or "").strip()
    if len(prompt) > 1000 or len(negative_prompt or "") > 1000:
        raise AppError("prompts are limited to 1,000 characters")
    height, width, steps, seed, frames = check_numbers(
        g.size if height in (None, "") else height, g.size if width in (None, "") else width,
        g.steps if steps in (None, "") else steps, 0 if seed in (None, "") else seed,
        g.num_frames if num_frames in (None, "") else num_frames, demo.limits)
    scale = g.guidance if guidance in (None, "") else float(guidance)
    if not 0 <= scale <= 50:
        raise AppError(f"guidance must be between 0 and 50, got {scale:g}")
    task = demo.models.task(info)
    try:
        task.check_size(height, width)  # the task's own sentence, before any denoising
    except ValueError as exc:
        raise AppError(str(exc)) from None
    extra: dict[str, Any] = {}
    if g.kind == "video":
        extra["num_frames"] = frames
        if first_frame is not None:
            extra["first_frame"] = read_image_input(first_frame, height, width, demo.limits, "first frame")
        elif g.i2v:
            raise AppError("this I2V-Adapter animates an image: upload a first frame")
    elif g.kind == "multiview":
        extra["num_views"] = g.num_views
        if reference is not None:
            extra["reference"] = read_image_input(reference, height, width, demo.limits, "reference image")
        elif g.use_ref:
            raise AppError("this image-to-multiview MV-Adapter needs a reference image: upload one")
    done = [0]

    def tick(step: int, total: int) -> None:
        done[0] = step
        if progress is not None:
            progress(step, total)

    start = time.perf_counter()
    with _RUN_LOCK:
        how = apply_strength(task, g, strength)
        try:
            out = task.generate([prompt], height, width, seed=seed, num_inference_steps=steps, guidance_scale=scale,
                                negative_prompt=negative_prompt or "", progress=tick, **extra)
        except ValueError as exc:  # e.g. a view count the adapter refuses: raised before denoising
            raise AppError(str(exc).splitlines()[0]) from None
    seconds = time.perf_counter() - start
    folder = demo.workdir / uuid.uuid4().hex
    folder.mkdir(parents=True, exist_ok=True)
    stem = _slug(prompt)
    summary = f"{width}x{height} px, seed {seed}, {steps} step(s), guidance {scale:g}, {how}: {seconds:.1f} s"
    if g.kind == "video":
        clip = to_uint8(out[0])  # (F, H, W, 3)
        path = write_gif(clip, folder / f"{stem}_seed{seed}.gif")
        return GenerateResult("video", path, f"{len(clip)} frames, " + summary, frames=clip, steps_run=done[0])
    if g.kind == "multiview":
        views = list(to_uint8(out[0]))  # N x (H, W, 3)
        path = write_png(np.concatenate(views, axis=1), folder / f"{stem}_seed{seed}_views.png")
        return GenerateResult("multiview", path, f"{len(views)} views, " + summary, views=views, steps_run=done[0])
    image = to_uint8(out[:1])[0]
    path = write_png(image, folder / f"{stem}_seed{seed}.png")
    return GenerateResult("image", path, summary, image=image, steps_run=done[0])


def cli_command(info: CheckpointInfo) -> str:
    """The ``vadapt generate`` command for a diffusion checkpoint (the Batch tab shows it)."""
    from .checkpoints import sidecar_weights

    g = generation_info(info)
    base = sidecar_weights(info.path)
    parts = ["vadapt generate", f"--checkpoint {info.public()}", f"--weights {info.public(base)}" if base else "",
             '--prompt "a red cube"', f"--height {g.size} --width {g.size}",
             "--first-frame frame0.png" if g.kind == "video" and g.i2v else "",
             "--reference object.png" if g.kind == "multiview" and g.use_ref else "", "--output images/"]
    return " ".join(p for p in parts if p)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:40] or "image"


# ---- the built-in demo -----------------------------------------------------------------------------------
def make_demo_checkpoints(folder: Path, progress: Callable[[str], None] = print) -> list[Path]:
    """Write the tiny bases (diffusers folders) and the three demo adapters with random weights into ``folder``
    (about 6 MB, a few seconds). Each adapter's manifest names its base by a path relative to ``folder``,
    which :func:`vadapt.app.checkpoints.sidecar_weights` resolves, so the folder can move as a whole."""
    import shutil

    import torch

    from vadapt.adapters import I2VAdapterConfig, MVAdapterConfig, ResAdapterConfig
    from vadapt.backbones import create_backbone
    from vadapt.checkpoint import save_adapter
    from vadapt.tasks.generation import DiffusionAdapterTask

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    progress(f"building the tiny generation demo (random weights) in {folder}")
    for arch, name in DEMO_BASES.items():
        torch.manual_seed(0)
        tmp = folder / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        base = create_backbone(arch)
        base.unet.half()  # stored in float16 (half the bytes); diffusers loads them as float32 again, so the
        base.vae.half()   # model is the rounded random init exactly (the text encoder would stay float16: kept)
        base.save_pretrained(tmp)
        shutil.rmtree(folder / name, ignore_errors=True)
        tmp.rename(folder / name)
    specs = (
        (DEMO_RESADAPTER, "sd15_test", dict(kind="image", adapter=ResAdapterConfig(r=4))),
        (DEMO_I2V, "animatediff_test", dict(kind="video", num_frames=DEMO_FRAMES,
                                            adapter=I2VAdapterConfig(num_frames=DEMO_FRAMES))),
        (DEMO_MV, "sd15_test", dict(kind="multiview", num_views=DEMO_VIEWS,
                                    adapter=MVAdapterConfig(num_views=DEMO_VIEWS, use_ref=True))),
    )
    written = []
    for seed, (file, arch, args) in enumerate(specs):
        torch.manual_seed(seed + 1)
        task = DiffusionAdapterTask(backbone=arch, weights=str(folder / DEMO_BASES[arch]), num_inference_steps=10,
                                    **args)
        with torch.no_grad():  # "trained" = random: zero-initialised outputs would make the adapter a no-op
            for p in task.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.05)
        task.hparams["weights"] = DEMO_BASES[arch]  # relative to the checkpoint's folder
        written.append(save_adapter(task.eval(), folder / file))
    return written


# ---- the page --------------------------------------------------------------------------------------------
def not_ready(demo: Any, label: str | None, first_frame: Any, reference: Any) -> str | None:
    """Why Generate cannot run now (``None``: it can): no diffusion checkpoint, none picked, or the first frame /
    reference image the picked adapter needs is not uploaded yet."""
    k = controls(demo.checkpoints, label)
    missing = None
    if k.first_frame and not first_frame:
        missing = "Upload a first frame (this I2V-Adapter animates an image), then Generate."
    elif k.reference and not reference:
        missing = "Upload a reference image (this image-to-multiview MV-Adapter needs one), then Generate."
    return demo.not_ready("generate", label, missing)


def display_clip(result: GenerateResult) -> Path | None:
    """The clip as the page shows it: a GIF of the frames enlarged (:func:`~.render.enlarge`) beside the real-size
    one, which stays the download. ``None`` for results without frames."""
    from vadapt.inference.generate import write_gif

    from .render import enlarge

    if result.frames is None:
        return None
    shown = enlarge(result.frames)
    if shown is result.frames:
        return result.path
    return write_gif(shown, result.path.with_name(f"{result.path.stem}_shown.gif"))


def build_tab(demo: Any) -> None:
    """The Generate tab, inside the caller's ``gr.Blocks``; it reports like the other tabs (:func:`.ui.on`)."""
    import gradio as gr

    from .render import enlarge
    from .ui import IMAGE_BUTTONS, message_area, on, result_image, run_button

    checkpoints = demo.checkpoints
    first = demo.default("generate", DEMO_DEFAULT)
    c = controls(checkpoints, first)
    reason = not_ready(demo, first, None, None)
    with gr.Tab("Generate", id="generate"):
        gr.Markdown("Text (and image) to image, video or multi-view with a diffusion adapter on a frozen base. The "
                    "built-in demo adapters are tiny and have **random weights**: they show the plumbing, not "
                    "image quality (see BENCHMARKS.md for trained results). Runs on this machine's CPU/GPU.")
        with gr.Row():
            with gr.Column(scale=1):
                ckpt = gr.Dropdown(label="diffusion adapter checkpoint", choices=choices(checkpoints), value=first,
                                   elem_id="gen-ckpt")
                about = gr.Markdown(describe(checkpoints, first), elem_id="gen-about")
                prompt = gr.Textbox(label="prompt", value="a red cube on a white table", lines=2,
                                    elem_id="gen-prompt")
                negative = gr.Textbox(label="negative prompt", value="", elem_id="gen-negative")
                first_frame = gr.Image(label="first frame (image-to-video)", type="filepath", sources=["upload"],
                                       visible=c.first_frame, buttons=IMAGE_BUTTONS, elem_id="gen-first-frame")
                reference = gr.Image(label="reference image (image-to-multiview)", type="filepath",
                                     sources=["upload"], visible=c.reference, buttons=IMAGE_BUTTONS,
                                     elem_id="gen-reference")
                with gr.Row():
                    height = gr.Number(label="height (px)", value=c.size, precision=0, elem_id="gen-height")
                    width = gr.Number(label="width (px)", value=c.size, precision=0, elem_id="gen-width")
                    seed = gr.Number(label="seed", value=0, precision=0, elem_id="gen-seed")
                with gr.Row():
                    steps = gr.Slider(1, 100, value=c.steps, step=1, label="denoising steps", elem_id="gen-steps")
                    guidance = gr.Slider(0.0, 20.0, value=c.guidance, step=0.5,
                                         label="guidance scale (<= 1: no classifier-free guidance)",
                                         elem_id="gen-guidance")
                frames = gr.Slider(2, MAX_FRAMES, value=c.num_frames, step=1, label="frames", visible=c.frames,
                                   elem_id="gen-frames")
                strength = gr.Slider(0.0, c.strength_max, value=c.strength_value, step=0.05, label=c.strength_label,
                                     interactive=c.strength_visible, elem_id="gen-strength")
                strength_note = gr.Markdown(c.strength_note, elem_id="gen-strength-note")
                run = gr.Button("Generate", variant="primary", interactive=reason is None, elem_id="gen-run")
                message = message_area("gen-message", reason)
            with gr.Column(scale=2):
                image_out = result_image("image", "gen-image", visible=c.kind == "image",
                                         elem_classes=["vadapt-pixels"])
                video_out = gr.Image(label="clip (animated GIF)", type="filepath", interactive=False,
                                     buttons=IMAGE_BUTTONS, visible=c.kind == "video", elem_classes=["vadapt-pixels"],
                                     elem_id="gen-video")
                views_out = gr.Gallery(label="views", columns=max(generation_views(checkpoints, first), 1), rows=1,
                                       height="auto", object_fit="contain", buttons=IMAGE_BUTTONS,
                                       visible=c.kind == "multiview", elem_classes=["vadapt-pixels"],
                                       elem_id="gen-views")
                text = gr.Markdown(elem_id="gen-text")
                download = gr.File(label="download (real size)", interactive=False, elem_id="gen-download")

        def pick(label, first_path, reference_path):
            k = controls(checkpoints, label)
            why = not_ready(demo, label, first_path if k.first_frame else None,
                            reference_path if k.reference else None)
            return [describe(checkpoints, label), gr.update(visible=k.first_frame), gr.update(visible=k.reference),
                    k.size, k.size, k.steps, k.guidance, gr.update(visible=k.frames, value=k.num_frames),
                    gr.update(maximum=k.strength_max, value=k.strength_value, label=k.strength_label,
                              interactive=k.strength_visible), k.strength_note,
                    gr.update(visible=k.kind == "image"), gr.update(visible=k.kind == "video"),
                    gr.update(visible=k.kind == "multiview", columns=max(generation_views(checkpoints, label), 1)),
                    run_button(why), why or ""]

        on(ckpt.change, pick, [ckpt, first_frame, reference],
           [about, first_frame, reference, height, width, steps, guidance, frames, strength, strength_note,
            image_out, video_out, views_out, run], message)

        def uploaded(label, first_path, reference_path):
            why = not_ready(demo, label, first_path, reference_path)
            return run_button(why), why or ""

        for picture in (first_frame, reference):
            on(picture.change, uploaded, [ckpt, first_frame, reference], [run], message)

        def go(label, prompt_text, negative_text, first_path, reference_path, h, w, seed_value, steps_value,
               guidance_value, frames_value, strength_value, progress=gr.Progress()):  # noqa: B008 - Gradio's API
            def tick(step: int, total: int) -> None:
                progress((step, total), desc="denoising", unit="steps")

            k = controls(checkpoints, label)
            result = generate(demo, label, prompt_text, negative_text, h, w, seed_value, steps_value,
                              guidance_value, strength_value if k.strength_visible else None,
                              first_path or None, reference_path or None, frames_value, tick)
            image = enlarge(result.image) if result.image is not None else gr.update()
            clip = str(display_clip(result)) if result.kind == "video" else gr.update()
            views = ([(enlarge(v), f"view {i + 1}") for i, v in enumerate(result.views)] if result.views
                     else gr.update())
            return image, clip, views, result.summary, str(result.path), "Done."

        on(run.click, go, [ckpt, prompt, negative, first_frame, reference, height, width, seed, steps, guidance,
                           frames, strength], [image_out, video_out, views_out, text, download], message)


def generation_views(checkpoints: dict[str, CheckpointInfo], label: str | None) -> int:
    """The number of views of a multi-view checkpoint (0 otherwise): the gallery's columns."""
    info = checkpoints.get(label or "")
    if info is None or not is_generation_checkpoint(info):
        return 0
    g = generation_info(info)
    return g.num_views if g.kind == "multiview" else 0
