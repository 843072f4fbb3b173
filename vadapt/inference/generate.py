"""``vadapt generate``: sample from a diffusion task built from a config or an adapter checkpoint.

Images are written as PNG (``<output>/<prompt>_seed<S>_<n>.png``), clips (video tasks) as animated GIF or MP4, and
multi-view sets as one PNG grid (views side by side); each file atomically (a temporary name, then a rename),
with a progress bar over the denoising steps. Bad sizes, a missing first frame or reference image, a view count
the adapter refuses: one sentence before any denoising.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class GenerateReport:
    written: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        where = self.written[0].parent if self.written else "nowhere"
        return f"wrote {len(self.written)} file(s) to {where}"


def load_generation_task(config: str | None = None, checkpoint: str | None = None, weights: str | None = None):
    """The generating task (``DiffusionAdapterTask``) of an adapter checkpoint (``checkpoint``) or of a config's
    ``model`` section."""
    if checkpoint:
        from vadapt.loading import load_task

        task = load_task(checkpoint, weights=weights)
    elif config:
        from vadapt.loading import task_from_config_file

        task = task_from_config_file(config, **({"weights": weights} if weights else {}))
    else:
        raise ValueError("give --config (a generation YAML) or --checkpoint (an adapter .safetensors)")
    if task.capabilities.output != "generated":
        raise ValueError(f"{checkpoint or config} holds a {type(task).__name__}, which does not generate images "
                         "(vadapt generate runs diffusion adapter checkpoints)")
    return task.eval()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` in [0, 1] -> ``(B, H, W, 3)`` uint8."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def write_png(array: np.ndarray, path: Path) -> Path:
    from PIL import Image

    tmp = path.with_name(f".{path.name}.tmp.png")
    Image.fromarray(array).save(tmp)
    tmp.replace(path)
    return path


def write_gif(frames: np.ndarray, path: Path, fps: int = 8) -> Path:
    """``(F, H, W, 3)`` uint8 -> an animated GIF, looping."""
    from PIL import Image

    tmp = path.with_name(f".{path.name}.tmp.gif")
    images = [Image.fromarray(f) for f in frames]
    images[0].save(tmp, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    tmp.replace(path)
    return path


def write_mp4(frames: np.ndarray, path: Path, fps: int = 8) -> Path:
    """``(F, H, W, 3)`` uint8 -> an MP4 clip through OpenCV (installed with albumentations): H.264 (``avc1``)
    where the build has the encoder, else MPEG-4 Part 2 (``mp4v``, in every OpenCV wheel)."""
    import cv2

    tmp = path.with_name(f".{path.name}.tmp.mp4")  # OpenCV picks the container from the extension
    h, w = frames.shape[1:3]
    for codec in ("avc1", "mp4v"):
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*codec), fps, (w, h))
        if writer.isOpened():
            break
        writer.release()
    else:
        raise ValueError("OpenCV cannot write MP4 here (no avc1 or mp4v encoder); use --video-format gif")
    try:
        for frame in frames:
            writer.write(np.ascontiguousarray(frame[..., ::-1]))  # RGB -> OpenCV's BGR
    finally:
        writer.release()
    tmp.replace(path)
    return path


def read_image(path: str | Path, height: int, width: int) -> torch.Tensor:
    """An RGB image file resized to ``(1, 3, height, width)`` in [0, 1]; one sentence if it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB").resize((width, height), Image.BICUBIC)
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"{path} could not be read as an image ({exc})") from None
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of a prompt."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:limit] or "image"


def generate(
    output: str | Path,
    prompts: list[str],
    height: int,
    width: int,
    config: str | None = None,
    checkpoint: str | None = None,
    weights: str | None = None,
    seed: int = 0,
    num_images: int = 1,
    steps: int | None = None,
    guidance: float | None = None,
    negative_prompt: str = "",
    sampler: str | None = None,
    device: str = "cpu",
    progress: bool = True,
    first_frame: str | None = None,
    reference: str | None = None,
    num_frames: int | None = None,
    num_views: int | None = None,
    video_format: str = "gif",
    fps: int = 8,
) -> GenerateReport:
    """Sample ``num_images`` per prompt and write them to ``output`` (see module docstring); ``first_frame`` (I2V)
    and ``reference`` (image-to-multiview) are image files, resized to the output size; clips are written as
    ``video_format`` (``gif`` or ``mp4``) at ``fps``."""
    from tqdm.auto import tqdm

    if not prompts:
        raise ValueError("give at least one --prompt")
    if video_format not in ("gif", "mp4") or fps < 1:
        raise ValueError(f"video_format must be 'gif' or 'mp4' and fps >= 1, got {video_format!r} and {fps}")
    task = load_generation_task(config, checkpoint, weights).to(device)
    task.check_size(height, width)  # before anything is written or denoised
    kind = task.hparams["kind"]
    extra: dict[str, Any] = {}
    if kind == "video":
        extra["num_frames"] = num_frames
        if first_frame:
            extra["first_frame"] = read_image(first_frame, height, width)
        elif task.is_i2v():
            raise ValueError("this I2V-Adapter animates an image: give --first-frame IMAGE")
    elif kind == "multiview":
        extra["num_views"] = num_views
        if reference:
            extra["reference"] = read_image(reference, height, width)
        elif getattr(task.adapter_config, "use_ref", False):
            raise ValueError("this image-to-multiview adapter needs --reference IMAGE")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    report = GenerateReport()
    for p_index, prompt in enumerate(prompts):
        batch = [prompt] * num_images
        bar = tqdm(total=steps or task.hparams["num_inference_steps"], desc=f"prompt {p_index + 1}/{len(prompts)}",
                   disable=not progress, unit="step")

        def tick(step: int, total: int, bar=bar) -> None:
            bar.total = total
            bar.update(step - bar.n)

        images = task.generate(batch, height, width, seed=seed + p_index, num_inference_steps=steps,
                               guidance_scale=guidance, negative_prompt=negative_prompt, sampler=sampler,
                               progress=tick, **extra)
        bar.close()
        stem = f"{slug(prompt)}_seed{seed + p_index}"
        for n, sample in enumerate(images):
            if kind == "video":  # (F, 3, H, W)
                writer = write_mp4 if video_format == "mp4" else write_gif
                report.written.append(writer(to_uint8(sample), out / f"{stem}_{n}.{video_format}", fps))
            elif kind == "multiview":  # (N, 3, H, W) -> one row of views
                grid = np.concatenate(list(to_uint8(sample)), axis=1)
                report.written.append(write_png(grid, out / f"{stem}_{n}_views.png"))
            else:
                report.written.append(write_png(to_uint8(sample[None])[0], out / f"{stem}_{n}.png"))
    return report
