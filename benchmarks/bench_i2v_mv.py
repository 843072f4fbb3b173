"""I2V-Adapter and MV-Adapter on tiny pixel-space diffusion bases pretrained here: an honest CPU demo without
downloadable weights.

No Stable Diffusion / AnimateDiff weights exist on this machine, so each arm first PRETRAINS its own tiny base
on synthetic data (the whole UNet trains: ``DiffusionAdapterTask(..., train_unet=True)``), saves it as a
diffusers folder (``DiffusionBase.save_pretrained``), then trains the adapter on that FROZEN base (loaded back
with ``weights=<folder>``) and compares base vs base + adapter on held-out seeds.

Demo bases (built in this script, registered in this process only, under names no project file uses): a pixel-space
``UNet2DConditionModel`` (no VAE: the UNet denoises 3-channel images in [-1, 1]), 3 levels of widths ``--widths``
(16, 32, 64), one layer per block, the tiny frozen random CLIP text encoder of ``pixel_test`` (character-level
tokenizer), the DDPM schedule of SD1.5 with v-prediction and x0 clipping (as ``vadapt pretrain-diffusion``). Video
base (I2V arm): transformer blocks (``attn1`` + cross- attention) at the res/2 and res/4 levels and the mid block,
made an AnimateDiff ``UNetMotionModel`` with a small ``MotionAdapter`` (same widths, 1 motion layer per block, 2
heads, motion mid block). Image base (MV arm): the SD layout, transformer blocks at the res and res/2 levels and the
mid block (the T2IAdapter's intra-block residuals need it: diffusers adds a plain ``DownBlock2D``'s residual after
its down-sampling).

Arms (``--arms``, default ``i2v mv``):

* ``i2v``: data ``ShapesVideoDataModule`` (``--res`` 16 px, ``--frames`` 6, one coloured 2-D shape moving on a
  straight line, prompt "a red circle moving left", seed 0, train split). (1) Base pretraining as TEXT-TO-VIDEO,
  in AnimateDiff's order: first every frame as a 1-frame clip (appearance; ``--pretrain-steps`` of
  ``--pretrain-batch`` frames), then whole clips (motion; ``--motion-steps`` of ``--batch`` clips); unet + motion
  modules train (``kind="video"``, ``train_unet=True``) in both. (2) I2V-Adapter (``I2VAdapterConfig``,
  official defaults) on the frozen base, same clips: frame 0 stays clean and is left out of the loss.
  Evaluation on ``--eval-clips`` clips drawn from seed ``--eval-seed`` (never seen in training): base = text-to-
  video from the clip's prompt (no image); +I2V = the same prompt and the clip's true frame 0. Measured: frame 0
  of the output vs the input (max |diff| in [0, 1], exact float equality, equality after uint8 quantisation);
  over frames 1..F-1: share with exactly one object (``count_objects``, black background; a frame whose border is
more than 20 % foreground counts as none: a noise-like sample is not an object), share whose colour
  name (``colour_name(dominant_colour(.))``) equals frame 0's, shape IoU vs frame 0 (foreground masks, the
  frame's mask shifted so the centroids coincide), share of clips where every later frame has one object of
  frame 0's colour, and the mean centroid travel frame 1 -> F-1 (pixels; does it move at all). The same measures
  on the real held-out clips are given as the data row.
* ``mv``: data ``ShapesMultiviewDataModule`` (``--res`` 16, ``--views`` 4: elevation 0, azimuths 90 deg apart,
  the official orbit for N != 6; sphere / cube / cylinder / cone, prompt "a red cube"). (1) Base pretraining as
  TEXT-TO-IMAGE on single views (every view of every training object, flattened). (2) MV-Adapter
  (``MVAdapterConfig(num_views=N, downscale_factor=1)``: text-to-multiview, row-wise multi-view attention
  beside every ``attn1``, camera maps through the T2IAdapter condition encoder, Min-SNR gamma 5; the factor is 1
  because the base is pixel space, so the encoder's features land on the UNet's levels). Evaluation on
  ``--eval-objects`` prompts drawn from seed ``--eval-seed``: base = N independent samples of the prompt;
  +MV = one N-view sample with the default cameras. Consistency score = share of objects whose N views all have
  exactly one object and one colour name; the HEIGHT SPREAD: max - min over the views of the object's vertical
  extent in pixels (the orbit is at elevation 0, so a real object has the same height in every view: 0 px on
  the real renders; independent samples of the base draw independent sizes); also the mean pairwise distance of
  the views' dominant colours (RGB in [0, 1]), the coefficient of variation of the foreground area across views,
  and the share of views whose colour name is the prompt's. The same measures on the real held-out renders are
  the data row.

Training (every stage): a plain loop (no Lightning Trainer) over ``task._shared_step(batch, "train")``, AdamW
(lr ``--lr`` 1e-3, weight decay 0.01, 20 warm-up steps), gradient-norm clip 1, condition dropout 0.1, batches
drawn with a seeded generator from the pre-rendered training set, ``--*-steps`` steps or ``--*-minutes`` minutes,
whichever comes first (the steps actually done are reported), ``torch.manual_seed(0)``. Base pretraining as
``vadapt pretrain-diffusion``: Min-SNR gamma ``--snr-gamma`` 5, the learning rate decaying linearly to 0 over the
steps, and the moving average of the weights (``--ema`` 0.999, diffusers' ``EMAModel``) is the base that is
saved; adapters: constant rate after the warm-up. Sampling: DDIM, ``--steps`` 30, classifier-free guidance
``--guidance`` 1 (none: guidance 3 over-saturates these small bases, found on the ResAdapter demo's base at its
own resolution, before any adapter sample here), fixed seeds.

Trainable parameters: counted (``requires_grad``) on the demo bases, and on the real architectures on the meta
device (no weights): I2V-Adapter on SD1.5 (the published 24,793,280), MV-Adapter t2mv on SD2.1 / SDXL
(127,496,320 / 490,923,200), beside the whole UNet's count (full fine-tuning).

Memory: each configuration runs in its own fresh subprocess (``--worker``) on the same batch (``--mem-batch``
clips / objects; the full fine-tune of the MV arm sees the same views flattened as single images): after task,
optimizer and batch exist, ``gc.collect()``, baseline = ``VmRSS``, reset the kernel's peak counter
(``/proc/self/clear_refs``), 3 training steps, ``added MB = VmHWM - baseline`` (gradients, AdamW state,
activations), as ``bench_train_memory.py``.

Run: ``python benchmarks/bench_i2v_mv.py`` (both arms one after the other), ``--arms i2v`` or ``--arms mv`` (one
arm; results are merged into the same JSON; BENCHMARKS.md section 10 gives the exact commands and times),
``--quick`` (smoke test, 2 min, numbers meaningless; pictures go to ``runs/bench_i2v_mv/``). Output: markdown tables
on stdout, every number in ``--out`` (default ``runs/bench_i2v_mv.json``), pictures ``docs/i2v_demo.png`` (per clip:
the real clip, base text-to-video, +I2V from the real frame 0) and ``docs/mv_demo.png`` (per object: the real
renders, the base's N independent samples, +MV-Adapter), and the two pretrained bases under ``runs/bench_i2v_mv/``."""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
VIDEO_ARCH = "animatediff_i2vmv_demo"  # _is_motion(): the name starts with "animatediff"
IMAGE_ARCH = "i2vmv_demo"
BACKGROUND = "black"
COLOURS = ("red", "green", "blue", "yellow")
SHAPES_2D = ("circle", "square", "triangle")
SHAPES_3D = ("sphere", "cube", "cylinder", "cone")
# real architectures, for the trainable counts
SD15_I2V, SD21_MV, SDXL_MV = 24_793_280, 127_496_320, 490_923_200

warnings.filterwarnings("ignore")


# ---- demo bases ------------------------------------------------------------------------------------------------


def demo_unet(res: int, attention_at_full_res: bool, widths: tuple[int, ...] = (16, 32, 64)) -> dict[str, Any]:
    """3 levels (res, res/2, res/4) of ``widths``. Video base: attention at res/2, res/4 and the mid block
    (cheaper); image base for MV: the SD layout (attention at res and res/2, none at the last level), which the
    T2IAdapter's intra-block residuals need (a plain ``DownBlock2D`` gets its residual after down-sampling)."""
    down = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D") if attention_at_full_res else (
        "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    up = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D") if attention_at_full_res else (
        "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    return dict(sample_size=res, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=tuple(widths),
                down_block_types=down, up_block_types=up, cross_attention_dim=32, attention_head_dim=8,
                norm_num_groups=8)


def register_demo_bases(res: int, widths: tuple[int, ...] = (16, 32, 64)) -> None:
    """Add the two demo architectures to this process's diffusion registry (no project file changes)."""
    from vadapt.backbones import diffusion as d
    from vadapt.backbones.base import BACKBONES, register_backbone

    if IMAGE_ARCH in d.TINY_CONFIGS:
        return
    text = d.TINY_CONFIGS["pixel_test"]["text_encoder"]
    d.TINY_CONFIGS[IMAGE_ARCH] = {"base": "sd15", "unet": demo_unet(res, True, widths), "vae": None,
                                  "text_encoder": text}
    d.TINY_CONFIGS[VIDEO_ARCH] = {
        "base": "sd15", "unet": demo_unet(res, False, widths), "vae": None, "text_encoder": text,
        "motion_adapter": dict(block_out_channels=tuple(widths), motion_layers_per_block=1,
                               motion_num_attention_heads=2, motion_norm_num_groups=8, motion_max_seq_length=32,
                               use_motion_mid_block=True),
    }
    d.ARCHS = (*d.ARCHS, IMAGE_ARCH, VIDEO_ARCH)
    for name in (IMAGE_ARCH, VIDEO_ARCH):
        if name not in BACKBONES:
            register_backbone(name, family="diffusion", builder=d.DiffusionBase, arch=name, tiny=True,
                              description="bench_i2v_mv demo base (pixel space)")


def pixel_objective(task) -> None:
    """The objective of ``vadapt pretrain-diffusion`` for a pixel-space base: v-prediction (no amplified noise
    error at high noise) and x0 clipping to [-1, 1] in the sampler; saved with the base's scheduler config."""
    task.backbone.scheduler_config.update(prediction_type="v_prediction", clip_sample=True)
    task._noise_scheduler = None


def make_task(arch: str, kind: str, adapter: Any = None, weights: str | None = None, train_unet: bool = False,
              args: argparse.Namespace | None = None, **extra: Any):
    from vadapt.tasks.generation import DiffusionAdapterTask

    opts: dict[str, Any] = {}
    if args is not None:
        opts = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, num_frames=args.frames,
                    num_views=args.views, lr=args.lr)
    return DiffusionAdapterTask(backbone=arch, weights=weights, adapter=adapter, kind=kind, train_unet=train_unet,
                                condition_dropout=0.1, sampler="ddim", **opts, **extra)


def i2v_config(args: argparse.Namespace):
    from vadapt.adapters.i2v_adapter import I2VAdapterConfig

    return I2VAdapterConfig(num_frames=args.frames)


def mv_config(args: argparse.Namespace):
    from vadapt.adapters.mv_adapter import MVAdapterConfig

    return MVAdapterConfig(num_views=args.views, downscale_factor=1)


def trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ---- data ------------------------------------------------------------------------------------------------------


def video_module(args: argparse.Namespace, seed: int, num: int):
    from vadapt.data.generation import ShapesVideoDataModule

    return ShapesVideoDataModule(resolution=args.res, num_frames=args.frames, num_samples=max(num, 2),
                                 shapes=SHAPES_2D, colours=COLOURS, background=BACKGROUND, seed=seed)


def mv_module(args: argparse.Namespace, seed: int, num: int):
    from vadapt.data.generation import ShapesMultiviewDataModule

    return ShapesMultiviewDataModule(resolution=args.res, num_views=args.views, num_samples=max(num, 2),
                                     shapes=SHAPES_3D, colours=COLOURS, background=BACKGROUND, seed=seed)


def render_items(module, seed: int, split: int, count: int) -> list[dict[str, Any]]:
    """Items ``0..count-1`` drawn from ``default_rng([seed, split, i])`` (split 0: training; 2: evaluation)."""
    return [module.item(np.random.default_rng([seed, split, i]), i) for i in range(count)]


def batches(items: list[dict[str, Any]], size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    while True:
        idx = torch.randint(len(items), (size,), generator=g).tolist()
        out: dict[str, Any] = {"prompt": [items[i]["prompt"] for i in idx]}
        for key, value in items[idx[0]].items():
            if isinstance(value, torch.Tensor):
                out[key] = torch.stack([items[i][key] for i in idx])
        yield out


def flatten_views(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"image": view, "prompt": item["prompt"]} for item in items for view in item["views"]]


def single_frames(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every frame of every clip as a 1-frame clip ``(1, 3, H, W)`` with the clip's prompt."""
    return [{"video": frame[None], "prompt": item["prompt"]} for item in items for frame in item["video"]]


# ---- training --------------------------------------------------------------------------------------------------


def train(task, stream, steps: int, minutes: float, lr: float, label: str, ema: float | None = None
          ) -> dict[str, Any]:
    """AdamW, 20 warm-up steps; with ``ema`` (pretraining): the learning rate then decays linearly to 0 over
    ``steps`` and the weights' moving average (diffusers' ``EMAModel``, warm-up on) is what the task keeps."""
    params = [p for p in task.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    if ema:
        from diffusers.training_utils import EMAModel

        average = EMAModel(params, decay=ema, use_ema_warmup=True, power=0.75)
        factor = lambda s: min((s + 1) / 20, max(0.0, 1 - s / steps))  # noqa: E731
    else:
        factor = lambda s: min(1.0, (s + 1) / 20)  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    task.train()
    losses: list[float] = []
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(steps):
        loss = task._shared_step(next(stream), "train")
        if not torch.isfinite(loss):
            raise RuntimeError(f"{label}: non-finite loss at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if ema:
            average.step(params)
        losses.append(float(loss))
        if (step + 1) % 25 == 0:
            print(f"  {label} step {step + 1}: loss {np.mean(losses[-25:]):.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        if minutes and time.perf_counter() - t0 > minutes * 60:
            break
    if ema:
        average.copy_to(params)
    task.eval()
    tail = max(1, len(losses) // 10)
    return {"steps": len(losses), "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "loss_first": float(np.mean(losses[:tail])), "loss_last": float(np.mean(losses[-tail:])),
            "trainable": len(params) and sum(p.numel() for p in params)}


# ---- measures --------------------------------------------------------------------------------------------------


def colour_of(image: torch.Tensor) -> tuple[str | None, tuple[float, float, float] | None]:
    from vadapt.data.measures import colour_name, dominant_colour

    rgb = dominant_colour(image, BACKGROUND)
    return colour_name(rgb, COLOURS), rgb


def n_objects(image: torch.Tensor) -> int:
    """``count_objects`` on the black background; 0 when more than 20 % of the border pixels are foreground (an
    undenoised / background-less sample would otherwise be "one object" filling the frame; the real clips and
    renders never get there)."""
    from vadapt.data.measures import count_objects

    mask = mask_of(image)
    border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    if border.mean() > 0.2:
        return 0
    return count_objects(image, BACKGROUND)


def mask_of(image: torch.Tensor) -> np.ndarray:
    from vadapt.data.measures import foreground_mask

    return foreground_mask(image, BACKGROUND)


def centroid(mask: np.ndarray) -> np.ndarray | None:
    ys, xs = np.nonzero(mask)
    return None if len(ys) == 0 else np.array([ys.mean(), xs.mean()])


def aligned_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of mask ``b`` shifted (nearest pixel) so its centroid lies on ``a``'s, and ``a``."""
    from scipy import ndimage

    ca, cb = centroid(a), centroid(b)
    if ca is None or cb is None:
        return 0.0
    moved = ndimage.shift(b.astype(np.float32), ca - cb, order=0, mode="constant", cval=0.0) > 0.5
    union = np.logical_or(a, moved).sum()
    return float(np.logical_and(a, moved).sum() / union) if union else 0.0


def clip_scores(clip: torch.Tensor, first: torch.Tensor) -> dict[str, float]:
    """Measures of a clip ``(F, 3, H, W)`` against the input frame 0 ``(3, H, W)``."""
    ref_colour, _ = colour_of(first)
    ref_mask = mask_of(first)
    one, same, ious, good = [], [], [], []
    for frame in clip[1:]:
        o = n_objects(frame) == 1
        c = colour_of(frame)[0] == ref_colour
        one.append(o)
        same.append(c)
        good.append(o and c)
        ious.append(aligned_iou(ref_mask, mask_of(frame)))
    c1, cl = centroid(mask_of(clip[1])), centroid(mask_of(clip[-1]))
    travel = float(np.linalg.norm(cl - c1)) if c1 is not None and cl is not None else float("nan")
    diff = (clip[0] - first).abs()
    q = lambda x: torch.round(x * 255).to(torch.uint8)  # noqa: E731
    return {"frame0_max_abs": float(diff.max()), "frame0_exact": float(torch.equal(clip[0], first)),
            "frame0_exact_uint8": float(torch.equal(q(clip[0]), q(first))),
            "one_object": float(np.mean(one)), "colour_kept": float(np.mean(same)), "shape_iou": float(np.mean(ious)),
            "clip_all_ok": float(all(good)), "travel_px": travel}


def view_scores(views: torch.Tensor, prompt: str) -> dict[str, float]:
    """Consistency measures of ``N`` views ``(N, 3, H, W)`` of one prompt."""
    want = prompt.split()[1]
    counts = [n_objects(v) for v in views]
    named = [colour_of(v) for v in views]
    names = [n for n, _ in named]
    rgbs = [np.asarray(rgb) for _, rgb in named if rgb is not None]
    dists = [float(np.linalg.norm(a - b)) for i, a in enumerate(rgbs) for b in rgbs[i + 1:]]
    areas = np.array([mask_of(v).sum() for v in views], dtype=np.float64)
    rows = [np.nonzero(mask_of(v).any(axis=1))[0] for v, c in zip(views, counts) if c == 1]
    heights = [r[-1] - r[0] + 1 for r in rows]  # an orbit at elevation 0 keeps the object's height in every view
    return {"height_spread_px": float(max(heights) - min(heights)) if len(heights) > 1 else float("nan"),
            "consistent": float(all(c == 1 for c in counts) and len(set(names)) == 1 and names[0] is not None),
            "one_object": float(np.mean([c == 1 for c in counts])),
            "colour_dist": float(np.mean(dists)) if dists else float("nan"),
            "area_cv": float(areas.std() / areas.mean()) if areas.mean() > 0 else float("nan"),
            "prompt_colour": float(np.mean([n == want for n in names]))}


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}


# ---- pictures --------------------------------------------------------------------------------------------------


def save_grid(rows: list[tuple[str, torch.Tensor]], path: Path, scale: int = 3) -> None:
    """One labelled row per ``(label, images (K, 3, H, W))``."""
    from PIL import Image, ImageDraw

    h, w = rows[0][1].shape[-2:]
    cols = max(len(r[1]) for r in rows)
    label_w, pad = 200, 2
    canvas = Image.new("RGB", (label_w + cols * (w * scale + pad), len(rows) * (h * scale + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (label, images) in enumerate(rows):
        y = r * (h * scale + pad)
        draw.text((4, y + h * scale // 2 - 6), label, fill=(0, 0, 0))
        for c, img in enumerate(images):
            arr = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            tile = Image.fromarray(arr).resize((w * scale, h * scale), Image.NEAREST)
            canvas.paste(tile, (label_w + c * (w * scale + pad), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


# ---- memory worker -----------------------------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One training configuration's memory in this fresh process: ``--worker {i2v,video_full,mv,image_full}``."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_train_memory import peak_mb, reset_peak, rss_mb

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    register_demo_bases(args.res, tuple(args.widths))
    mode = args.worker
    if mode in ("i2v", "video_full"):
        items = render_items(video_module(args, 0, 8), 0, 0, args.mem_batch)
        batch = next(batches(items, args.mem_batch, 0))
        task = make_task(VIDEO_ARCH, "video", i2v_config(args) if mode == "i2v" else None,
                         train_unet=mode == "video_full", args=args)
    else:
        items = render_items(mv_module(args, 0, 8), 0, 0, args.mem_batch)
        batch = next(batches(items, args.mem_batch, 0))
        if mode == "mv":
            task = make_task(IMAGE_ARCH, "multiview", mv_config(args), args=args)
        else:  # the same views as single images
            batch = {"image": batch["views"].flatten(0, 1),
                     "prompt": [p for p in batch["prompt"] for _ in range(args.views)]}
            task = make_task(IMAGE_ARCH, "image", None, train_unet=True, args=args)
    task.hparams["condition_dropout"] = 0.0
    task.train()
    params = [p for p in task.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    gc.collect()
    baseline = rss_mb()
    resettable = reset_peak()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        loss = task._shared_step(batch, "train")
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    peak = peak_mb()
    return {"mode": mode, "trainable": sum(p.numel() for p in params), "baseline_mb": baseline, "peak_mb": peak,
            "added_mb": peak - baseline, "peak_reset": resettable, "step_s": float(np.median(times[1:]))}


def run_worker(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", mode, "--res", str(args.res), "--frames",
           str(args.frames), "--views", str(args.views), "--mem-batch", str(args.mem_batch), "--threads",
           str(args.threads), "--widths", *map(str, args.widths)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker {mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- real-architecture counts -------------------------------------------------------------------------------------


class _Holder(torch.nn.Module):
    family = "diffusion"

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.name = "meta"


def real_counts() -> dict[str, int]:
    from diffusers import UNet2DConditionModel

    from vadapt.adapters.i2v_adapter import I2VAdapterConfig, inject_i2v_adapter
    from vadapt.adapters.mv_adapter import MVAdapterConfig, inject_mv_adapter
    from vadapt.backbones.diffusion import UNET_CONFIGS

    out: dict[str, int] = {}
    for base, method, config in (("sd15", "i2v", lambda: I2VAdapterConfig()),
                                 ("sd21", "mv", lambda: MVAdapterConfig.preset("t2mv_sd21")),
                                 ("sdxl", "mv", lambda: MVAdapterConfig.preset("t2mv_sdxl"))):
        with torch.device("meta"):
            holder = _Holder(UNet2DConditionModel(**UNET_CONFIGS[base]))
        holder.requires_grad_(False)  # the frozen base: only what the adapter adds trains
        out[f"{base}_unet"] = sum(p.numel() for p in holder.parameters())
        (inject_i2v_adapter if method == "i2v" else inject_mv_adapter)(holder, config())
        out[f"{base}_{method}"] = trainable(holder)
    return out


# ---- arms ------------------------------------------------------------------------------------------------------


def generate_chunks(fn, n: int, chunk: int) -> torch.Tensor:
    return torch.cat([fn(i, min(i + chunk, n)) for i in range(0, n, chunk)])


def run_i2v(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    res, frames = args.res, args.frames
    data = video_module(args, 0, args.train_clips)
    train_items = render_items(data, 0, 0, args.train_clips)
    eval_items = render_items(data, args.eval_seed, 2, args.eval_clips)
    print(f"[i2v] {len(train_items)} training clips, {len(eval_items)} held-out clips", file=sys.stderr)

    torch.manual_seed(0)
    base = make_task(VIDEO_ARCH, "video", None, train_unet=True, args=args, snr_gamma=args.snr_gamma)
    pixel_objective(base)
    # AnimateDiff's order: appearance on single frames (1-frame clips) first, then motion on whole clips
    frames_phase = train(base, batches(single_frames(train_items), args.pretrain_batch, 0), args.pretrain_steps,
                         args.pretrain_minutes, args.lr, "i2v base, frames", ema=args.ema)
    pre = train(base, batches(train_items, args.batch, 0), args.motion_steps, args.motion_minutes, args.lr,
                "i2v base, clips", ema=args.ema)
    pre["frames_phase"] = frames_phase
    pre["base_params"] = base.backbone.parameter_counts()
    folder = work / "video_base"
    base.backbone.save_pretrained(folder)
    del base
    gc.collect()

    torch.manual_seed(0)
    ours = make_task(VIDEO_ARCH, "video", i2v_config(args), weights=str(folder), args=args)
    n_ours = trainable(ours)
    ad = train(ours, batches(train_items, args.batch, 1), args.adapter_steps, args.adapter_minutes, args.lr,
               "i2v adapter")
    frozen = make_task(VIDEO_ARCH, "video", None, weights=str(folder), args=args)

    prompts = [it["prompt"] for it in eval_items]
    firsts = torch.stack([it["video"][0] for it in eval_items])
    t0 = time.perf_counter()
    base_clips = generate_chunks(lambda a, b: frozen.generate(prompts[a:b], res, res, seed=args.eval_seed + a,
                                                              num_frames=frames), len(prompts), 8)
    ours_clips = generate_chunks(lambda a, b: ours.generate(prompts[a:b], res, res, seed=args.eval_seed + a,
                                                            num_frames=frames, first_frame=firsts[a:b]),
                                 len(prompts), 8)
    sample_s = time.perf_counter() - t0
    real = torch.stack([it["video"] for it in eval_items])
    scores = {name: mean_scores([clip_scores(c, f) for c, f in zip(clips, firsts)])
              for name, clips in (("data", real), ("base", base_clips), ("i2v", ours_clips))}
    rows = []
    for i in range(min(args.picture_rows, len(prompts))):
        rows += [(f"real: {prompts[i][2:]}", real[i]), ("base T2V", base_clips[i]), ("+I2V (frame 0 in)",
                                                                                        ours_clips[i])]
    save_grid(rows, args.pictures / "i2v_demo.png")
    mem = {m: run_worker(m, args) for m in ("i2v", "video_full")}
    return {"pretrain": pre, "adapter": ad, "trainable_ours": n_ours, "trainable_full_unet": pre["trainable"],
            "scores": scores, "sample_s": sample_s, "memory": mem}


def run_mv(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    res, n = args.res, args.views
    data = mv_module(args, 0, args.train_objects)
    t0 = time.perf_counter()
    train_items = render_items(data, 0, 0, args.train_objects)
    eval_items = render_items(data, args.eval_seed, 2, args.eval_objects)
    print(f"[mv] {len(train_items)} training objects x {n} views, {len(eval_items)} held-out objects "
          f"(rendered in {time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    torch.manual_seed(0)
    base = make_task(IMAGE_ARCH, "image", None, train_unet=True, args=args, snr_gamma=args.snr_gamma)
    pixel_objective(base)
    pre = train(base, batches(flatten_views(train_items), args.pretrain_batch, 0), args.pretrain_steps,
                args.pretrain_minutes, args.lr, "mv base", ema=args.ema)
    pre["base_params"] = base.backbone.parameter_counts()
    folder = work / "image_base"
    base.backbone.save_pretrained(folder)
    del base
    gc.collect()

    torch.manual_seed(0)
    ours = make_task(IMAGE_ARCH, "multiview", mv_config(args), weights=str(folder), args=args)
    n_ours = trainable(ours)
    ad = train(ours, batches(train_items, args.batch, 1), args.adapter_steps, args.adapter_minutes, args.lr,
               "mv adapter")
    frozen = make_task(IMAGE_ARCH, "image", None, weights=str(folder), args=args)

    prompts = [it["prompt"] for it in eval_items]
    t0 = time.perf_counter()
    flat = [p for p in prompts for _ in range(n)]  # N independent samples per prompt
    base_views = generate_chunks(lambda a, b: frozen.generate(flat[a:b], res, res, seed=args.eval_seed + a),
                                 len(flat), 8 * n).unflatten(0, (len(prompts), n))
    ours_views = generate_chunks(lambda a, b: ours.generate(prompts[a:b], res, res, seed=args.eval_seed + a,
                                                            num_views=n), len(prompts), 8)
    sample_s = time.perf_counter() - t0
    real = torch.stack([it["views"] for it in eval_items])
    scores = {name: mean_scores([view_scores(v, p) for v, p in zip(views, prompts)])
              for name, views in (("data", real), ("base", base_views), ("mv", ours_views))}
    rows = []
    for i in range(min(args.picture_rows, len(prompts))):
        rows += [(f"real: {prompts[i][2:]}", real[i]), ("base x N indep.", base_views[i]),
                 ("+MV-Adapter", ours_views[i])]
    save_grid(rows, args.pictures / "mv_demo.png", scale=4)
    mem = {m: run_worker(m, args) for m in ("mv", "image_full")}
    return {"pretrain": pre, "adapter": ad, "trainable_ours": n_ours, "trainable_full_unet": pre["trainable"],
            "scores": scores, "sample_s": sample_s, "memory": mem}


# ---- report ------------------------------------------------------------------------------------------------------


def f(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def i2v_tables(r: dict[str, Any], counts: dict[str, int], args: argparse.Namespace) -> str:
    s = r["scores"]
    lines = [f"I2V arm: {args.res} px, {args.frames} frames, {args.eval_clips} held-out clips (seed "
             f"{args.eval_seed}); base pretrain {r['pretrain']['frames_phase']['steps']} steps on single frames "
             f"({r['pretrain']['frames_phase']['wall_s'] / 60:.1f} min) + {r['pretrain']['steps']} on clips "
             f"({r['pretrain']['wall_s'] / 60:.1f} min, loss {f(r['pretrain']['loss_first'], 3)} -> "
             f"{f(r['pretrain']['loss_last'], 3)}), I2V "
             f"{r['adapter']['steps']} steps ({r['adapter']['wall_s'] / 60:.1f} min, loss "
             f"{f(r['adapter']['loss_first'], 3)} -> {f(r['adapter']['loss_last'], 3)})", "",
             "| clips | frame 0 max abs diff | frame 0 exact (float / uint8) | later frames: one object | "
             "colour kept | shape IoU (aligned) | clips all OK | travel f1->fF (px) |",
             "|---|---|---|---|---|---|---|---|"]
    for key, label in (("data", "real held-out clips"), ("base", "base text-to-video (prompt only)"),
                       ("i2v", "base + I2V-Adapter (prompt + frame 0)")):
        v = s[key]
        exact = "n/a (frame 0 not given)" if key == "base" else f"{f(v['frame0_exact'])} / {f(v['frame0_exact_uint8'])}"
        lines.append(f"| {label} | {v['frame0_max_abs']:.2g} | {exact} | {f(v['one_object'])} | "
                     f"{f(v['colour_kept'])} | {f(v['shape_iou'])} | {f(v['clip_all_ok'])} | {f(v['travel_px'], 1)} |")
    m = r["memory"]
    lines += ["", "| I2V arm | trainable params | training memory, added MB (batch "
              f"{args.mem_batch} clips) | step s |", "|---|---|---|---|",
              f"| I2V-Adapter on the demo base | {r['trainable_ours']:,} | {m['i2v']['added_mb']:.0f} | "
              f"{m['i2v']['step_s']:.2f} |",
              f"| full UNet + motion modules fine-tune (demo base) | {m['video_full']['trainable']:,} | "
              f"{m['video_full']['added_mb']:.0f} | {m['video_full']['step_s']:.2f} |",
              f"| I2V-Adapter on SD1.5 (meta device) | {counts['sd15_i2v']:,} | | |",
              f"| SD1.5 UNet (full fine-tune) | {counts['sd15_unet']:,} | | |"]
    return "\n".join(lines)


def mv_tables(r: dict[str, Any], counts: dict[str, int], args: argparse.Namespace) -> str:
    s = r["scores"]
    lines = [f"MV arm: {args.res} px, {args.views} views, {args.eval_objects} held-out prompts (seed "
             f"{args.eval_seed}); base pretrain {r['pretrain']['steps']} steps ({r['pretrain']['wall_s'] / 60:.1f} "
             f"min, loss {f(r['pretrain']['loss_first'], 3)} -> {f(r['pretrain']['loss_last'], 3)}), MV-Adapter "
             f"{r['adapter']['steps']} steps ({r['adapter']['wall_s'] / 60:.1f} min, loss "
             f"{f(r['adapter']['loss_first'], 3)} -> {f(r['adapter']['loss_last'], 3)})", "",
             "| views | consistency score | views with one object | mean pairwise colour dist | area CV | "
             "height spread (px) | views of the prompt's colour |", "|---|---|---|---|---|---|---|"]
    for key, label in (("data", "real held-out renders"), ("base", f"base, {args.views} independent samples"),
                       ("mv", "base + MV-Adapter")):
        v = s[key]
        lines.append(f"| {label} | {f(v['consistent'])} | {f(v['one_object'])} | {f(v['colour_dist'], 3)} | "
                     f"{f(v['area_cv'])} | {f(v['height_spread_px'], 1)} | {f(v['prompt_colour'])} |")
    m = r["memory"]
    lines += ["", f"| MV arm | trainable params | training memory, added MB (batch {args.mem_batch} objects x "
              f"{args.views} views) | step s |", "|---|---|---|---|",
              f"| MV-Adapter on the demo base | {r['trainable_ours']:,} | {m['mv']['added_mb']:.0f} | "
              f"{m['mv']['step_s']:.2f} |",
              f"| full UNet fine-tune (demo base) | {m['image_full']['trainable']:,} | "
              f"{m['image_full']['added_mb']:.0f} | {m['image_full']['step_s']:.2f} |",
              f"| MV-Adapter t2mv on SD2.1 (meta device) | {counts['sd21_mv']:,} | | |",
              f"| SD2.1 UNet (full fine-tune) | {counts['sd21_unet']:,} | | |",
              f"| MV-Adapter t2mv on SDXL (meta device) | {counts['sdxl_mv']:,} | | |",
              f"| SDXL UNet (full fine-tune) | {counts['sdxl_unet']:,} | | |"]
    return "\n".join(lines)


def save_json(path: Path, update: dict[str, Any]) -> None:
    """Merge ``update`` into the JSON at ``path`` (one arm per run is allowed)."""
    previous = json.loads(path.read_text()) if path.is_file() else {}
    previous.update(update)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(previous, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arms", nargs="+", default=["i2v", "mv"], choices=["i2v", "mv"])
    p.add_argument("--out", type=Path, default=None, help="JSON results (default runs/bench_i2v_mv.json)")
    p.add_argument("--res", type=int, default=16)
    p.add_argument("--widths", type=int, nargs=3, default=[16, 32, 64], help="the demo UNets' 3 level widths")
    p.add_argument("--frames", type=int, default=6)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--train-clips", type=int, default=512)
    p.add_argument("--train-objects", type=int, default=256)
    p.add_argument("--eval-clips", type=int, default=16)
    p.add_argument("--eval-objects", type=int, default=16)
    p.add_argument("--eval-seed", type=int, default=1000)
    p.add_argument("--batch", type=int, default=4, help="clips / objects per training step")
    p.add_argument("--pretrain-batch", type=int, default=16, help="single images / frames per pretraining step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--pretrain-steps", type=int, default=3000)
    p.add_argument("--pretrain-minutes", type=float, default=30.0, help="wall-clock cap of pretraining")
    p.add_argument("--motion-steps", type=int, default=1500, help="I2V base: steps on whole clips after the frames")
    p.add_argument("--motion-minutes", type=float, default=30.0)
    p.add_argument("--snr-gamma", type=float, default=5.0, help="Min-SNR gamma of base pretraining")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of base pretraining (0: none)")
    p.add_argument("--adapter-steps", type=int, default=100_000)
    p.add_argument("--adapter-minutes", type=float, default=10.0)
    p.add_argument("--steps", type=int, default=30, help="DDIM sampling steps")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance (1: none)")
    p.add_argument("--mem-batch", type=int, default=2)
    p.add_argument("--picture-rows", type=int, default=3)
    p.add_argument("--pictures", type=Path, default=None, help="folder of the pictures (default docs/; --quick: "
                   "runs/bench_i2v_mv/)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="smoke test (~2 min, numbers meaningless)")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.quick:
        args.pretrain_steps, args.motion_steps, args.adapter_steps, args.steps = 4, 4, 4, 3
        args.train_clips = args.train_objects = 8
        args.eval_clips = args.eval_objects = 3
    torch.set_num_threads(args.threads)
    register_demo_bases(args.res, tuple(args.widths))
    work = ROOT / "runs" / "bench_i2v_mv"
    args.pictures = args.pictures or (work if args.quick else ROOT / "docs")
    out = args.out or ROOT / "runs" / ("bench_i2v_mv_quick.json" if args.quick else "bench_i2v_mv.json")
    counts = real_counts()
    results: dict[str, Any] = {}
    start = time.perf_counter()
    for arm in args.arms:
        t0 = time.perf_counter()
        results[arm] = (run_i2v if arm == "i2v" else run_mv)(args, work)
        results[arm]["arm_wall_s"] = time.perf_counter() - t0
        table = (i2v_tables if arm == "i2v" else mv_tables)(results[arm], counts, args)
        results[arm]["table"] = table
        print(table + "\n", flush=True)
        save_json(out, {arm: results[arm], "counts": counts})
    env = {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads,
           "loadavg": os.getloadavg(), "total_wall_s": time.perf_counter() - start, "args": {
               k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    save_json(out, {f"env_{'_'.join(args.arms)}": env})
    print(f"load average {os.getloadavg()}; total {env['total_wall_s'] / 60:.1f} min; JSON: {out}")


if __name__ == "__main__":
    main()
