"""ResAdapter's claim, measured offline: a base trained at one resolution makes duplicated or broken objects
outside it, and ResAdapter (Cheng et al., 2024, arXiv:2403.02084) fixes that without touching the base.

No Stable Diffusion weights can be downloaded here, so the base is the small pixel-space ``pixel_demo`` UNet
pretrained by this script (``vadapt pretrain-diffusion``, the whole UNet, a few CPU minutes) on synthetic images
of ONE coloured shape on black (``ShapesImageDataModule``: circle / square / triangle in red / green / blue /
yellow, prompt ``"a red circle"``) at ONE resolution ``R`` (default 16 px: the CPU budget of this machine).

1. **Base**: ``pretrain_diffusion_base`` at ``R`` (or ``--base DIR``, a folder it wrote): 3,000 steps of batch 16,
   lr 1e-3 decaying linearly to 0, Min-SNR gamma 5, v-prediction, and the EMA of the weights (decay 0.999) is
   what is saved; these made the difference between a base that draws noise and one that draws clean shapes
   (BENCHMARKS.md section 11).
2. **ResAdapter** (``ResAdapterConfig()`` defaults: ResCLoRA r=16, alpha 8 on the 2 down- and 2 up-sampler convs
   + ResENorm) trains on the frozen base with the same data generator on mixed-resolution buckets
   ``[R/2, R, 2R, 3R/2 x R, R x 3R/2]`` (the paper trains on many sizes and aspect ratios), a fixed time budget.
3. **Sampling**: ``K`` images per resolution at 0.5x, 1x, 2x ``R`` for the base (the adapter disabled, which
   restores the base exactly; checked against a fresh base below), base + ResAdapter (strength 1), and strength
   0 (the LoRA branch off, ResENorm kept: the official strength scales only the LoRA). DDIM, classifier-free
   guidance, the same prompts and held-out seeds (``--sample-seed``, never used in training or tuning) for every
   arm, so the arms are paired. Sampling settings (30 DDIM steps, guidance 1 = no classifier-free guidance) were
   chosen on the BASE at its own resolution only (guidance 3 over-saturates this small base into blobs), before
   any adapter sample was looked at.
4. **Measures** (``vadapt.data.measures``): ``one object`` = exactly one 8-connected non-black component
   (``count_objects``, components of >= 4 pixels, tolerance 40/255) covering at most half of the image (a
   training shape covers at most ~39 %; more is noise or a coloured background); ``right colour`` = the median
   colour of the non-black pixels is the prompt's colour (``colour_name(dominant_colour(...))`` among the four colours).
5. **Trainable parameters**: ours on the demo base; the real SD1.5 / SDXL counts are the tested values of
   ``tests/test_resadapter.py`` (970,240 / 527,360, built on the meta device there).
6. **Training memory**: peak RSS added by a training step (forward, backward, AdamW step) of ResAdapter versus
   fine-tuning the whole UNet (``train_unet=True``), same batch (``--memory-batch`` images at 2R), each arm in a
   fresh subprocess, the method of ``bench_train_memory.py`` (baseline RSS after model, optimizer and batch exist,
   the kernel's peak counter reset, ``1 + --memory-steps`` steps, peak - baseline); median step time too.

Writes ``<workdir>/results.json``, ``<workdir>/resadapter.safetensors`` and the picture ``--picture``
(rows base / + ResAdapter, 4 samples at each resolution, nearest-upscaled), prints a markdown table.

Run: ``python benchmarks/bench_resadapter.py`` (about 25 minutes on 2 CPU cores); ``--base DIR`` reuses a
pretrained base; ``--help`` for options.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
#: tested in tests/test_resadapter.py (meta-device SD1.5 / SDXL UNets)
REAL_COUNTS = {"sd15": 970_240, "sdxl": 527_360}
#: a training shape covers at most ~39 % of its image (a circle of radius 0.7 x half the side): a "single object"
#: covering more than half the image is noise or background, not one shape
MAX_COVER = 0.5


def prompts(k: int) -> list[str]:
    """``k`` prompts cycling over every (colour, shape) pair."""
    pairs = [f"a {c} {s}" for s in SHAPES for c in COLOURS]
    return [pairs[i % len(pairs)] for i in range(k)]


def buckets_for(res: int) -> list[list[int]]:
    half, big, wide = res // 2, 2 * res, res * 3 // 2
    return [[half, half], [res, res], [big, big], [wide, res], [res, wide]]


# ---- measures ------------------------------------------------------------------------------------------------


def measure(images, texts: list[str]) -> dict[str, float]:
    from vadapt.data.measures import colour_name, count_objects, dominant_colour, foreground_mask

    one = colour = noise = 0
    counts = []
    for image, text in zip(images, texts):
        n = count_objects(image, background="black")
        covered = float(foreground_mask(image, background="black").mean())
        counts.append(n)
        noise += covered > MAX_COVER
        one += n == 1 and covered <= MAX_COVER
        colour += colour_name(dominant_colour(image, background="black"), COLOURS) == text.split()[1]
    k = len(texts)
    return {"one_object": one / k, "right_colour": colour / k, "mean_objects": sum(counts) / k,
            "no_object": sum(c == 0 for c in counts) / k, "several": sum(c > 1 for c in counts) / k,
            "covered_over_half": noise / k}


def sample(task, res: int, k: int, seed: int, steps: int, guidance: float, chunk: int = 32):
    import torch

    texts = prompts(k)
    out = []
    for start in range(0, k, chunk):
        out.append(task.generate(texts[start:start + chunk], res, res, seed=seed + start, num_inference_steps=steps,
                                 guidance_scale=guidance, sampler="ddim"))
    return torch.cat(out), texts


# ---- memory worker (fresh process per arm) --------------------------------------------------------------------


def memory_worker(args: argparse.Namespace) -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_train_memory import peak_mb, reset_peak, rss_mb

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from vadapt.adapters.resadapter import ResAdapterConfig
    from vadapt.data.generation import ShapesImageDataModule
    from vadapt.memory import return_freed_memory_to_os
    from vadapt.tasks.generation import DiffusionAdapterTask

    return_freed_memory_to_os()
    full = args.mode == "full"
    task = DiffusionAdapterTask(backbone=args.backbone, weights=args.base, train_unet=full,
                                adapter=None if full else ResAdapterConfig())
    task.train()
    data = ShapesImageDataModule(resolution=args.memory_res, num_samples=args.memory_batch, val_fraction=0.0,
                                 batch_size=args.memory_batch, seed=0)
    batch = next(iter(data.train_dataloader()))
    params = [p for p in task.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    import gc

    gc.collect()
    baseline = rss_mb()
    exact = reset_peak()
    times = []
    for _ in range(1 + args.memory_steps):
        start = time.perf_counter()
        loss = task.image_loss(batch, "train")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    print(json.dumps({"mode": args.mode, "trainable": sum(p.numel() for p in params), "baseline_mb": baseline,
                      "added_mb": peak_mb() - baseline, "step_s": statistics.median(times[1:] or times),
                      "peak_reset": exact}))


def run_memory(args: argparse.Namespace, base: Path, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", "memory", "--mode", mode, "--base", str(base),
           "--backbone", args.backbone, "--memory-res", str(2 * args.resolution), "--memory-batch",
           str(args.memory_batch), "--memory-steps", str(args.memory_steps), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if out.returncode:
        raise RuntimeError(f"memory worker {mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- adapter training -----------------------------------------------------------------------------------------


def train_resadapter(args: argparse.Namespace, base: Path, workdir: Path):
    import lightning as L

    from vadapt.adapters.resadapter import ResAdapterConfig
    from vadapt.data.generation import ShapesImageDataModule
    from vadapt.tasks.generation import DiffusionAdapterTask

    L.seed_everything(args.seed + 1, verbose=False)
    data = ShapesImageDataModule(num_samples=8192, shapes=SHAPES, colours=COLOURS,
                                 buckets=buckets_for(args.resolution), batch_size=args.adapter_batch_size,
                                 val_fraction=0.0, drop_last=True, seed=args.seed + 1)
    task = DiffusionAdapterTask(backbone=args.backbone, weights=str(base), adapter=ResAdapterConfig(),
                                lr=args.adapter_lr, condition_dropout=0.1)
    trainer = L.Trainer(max_epochs=1000, max_steps=args.adapter_steps, max_time={"minutes": args.adapter_minutes},
                        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        default_root_dir=str(workdir / "adapter_logs"))
    task.configure_callbacks = lambda: []
    start = time.perf_counter()
    trainer.fit(task, datamodule=data)
    seconds = time.perf_counter() - start
    from vadapt.checkpoint import save_adapter

    save_adapter(task, workdir / "resadapter.safetensors")
    task.eval()
    return task, trainer.global_step, seconds


# ---- picture --------------------------------------------------------------------------------------------------


def picture(rows: dict[str, dict[int, object]], path: Path, cell: int = 96, per_res: int = 4) -> None:
    import numpy as np
    from PIL import Image, ImageDraw

    label_w, head_h, gap = 120, 18, 6
    resolutions = sorted(next(iter(rows.values())))
    width = label_w + len(resolutions) * (per_res * cell + gap)
    canvas = Image.new("RGB", (width, head_h + len(rows) * (cell + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, res in enumerate(resolutions):
        draw.text((label_w + j * (per_res * cell + gap) + 4, 3), f"{res} x {res} px", fill=(0, 0, 0))
    for i, (name, by_res) in enumerate(rows.items()):
        y = head_h + i * (cell + 4)
        draw.text((4, y + cell // 2 - 6), name, fill=(0, 0, 0))
        for j, res in enumerate(resolutions):
            for n in range(per_res):
                array = (by_res[res][n].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                tile = Image.fromarray(array).resize((cell, cell), Image.NEAREST)
                canvas.paste(tile, (label_w + j * (per_res * cell + gap) + n * cell, y))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


# ---- main -----------------------------------------------------------------------------------------------------


def table(results: dict) -> str:
    r = results["resolution"]
    lines = ["| arm | resolution | one object | right colour | no object | several objects | covers > 50 % |",
             "|---|---|---|---|---|---|---|"]
    for arm, by_res in results["samples"].items():
        for res, m in by_res.items():
            scale = f"{int(res) / r:g}x"
            lines.append(f"| {arm} | {res} px ({scale}) | {m['one_object']:.0%} | {m['right_colour']:.0%} | "
                         f"{m['no_object']:.0%} | {m['several']:.0%} | {m['covered_over_half']:.0%} |")
    mem = results["memory"]
    lines += ["", "| training | trainable params | added peak RSS | step time |", "|---|---|---|---|"]
    for mode, name in (("resadapter", "ResAdapter (frozen base)"), ("full", "whole UNet fine-tuning")):
        m = mem[mode]
        lines.append(f"| {name} | {m['trainable']:,} | {m['added_mb']:.0f} MB | {m['step_s']:.2f} s |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=str(REPO / "runs" / "bench_resadapter"))
    parser.add_argument("--base", help="a pretrained base folder to reuse (else pretrained into WORKDIR/base)")
    parser.add_argument("--backbone", default="pixel_demo")
    parser.add_argument("--resolution", type=int, default=16, help="the base's one training resolution")
    parser.add_argument("--pretrain-minutes", type=float, default=30.0, help="wall-clock cap of pretraining")
    parser.add_argument("--pretrain-steps", type=int, default=3000,
                        help="also stop pretraining after these steps (the learning rate decays over them)")
    parser.add_argument("--pretrain-lr", type=float, default=1e-3)
    parser.add_argument("--snr-gamma", type=float, default=5.0, help="Min-SNR-gamma weighting of pretraining")
    parser.add_argument("--ema-decay", type=float, default=0.999, help="EMA of the pretrained weights (0: none)")
    parser.add_argument("--adapter-minutes", type=float, default=10.0)
    parser.add_argument("--adapter-steps", type=int, default=-1, help="also stop the adapter after these steps")
    parser.add_argument("--adapter-lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=16, help="pretraining batch")
    parser.add_argument("--adapter-batch-size", type=int, default=8)
    parser.add_argument("--samples", type=int, default=48, help="images per resolution and arm")
    parser.add_argument("--steps", type=int, default=30, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance (1: none)")
    parser.add_argument("--sample-seed", type=int, default=10_000, help="held-out sampling seeds start here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-batch", type=int, default=16)
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--picture", default=str(REPO / "docs" / "resadapter_demo.png"))
    parser.add_argument("--worker", choices=("memory",), help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("resadapter", "full"), help=argparse.SUPPRESS)
    parser.add_argument("--memory-res", type=int, default=32, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "memory":
        memory_worker(args)
        return

    import torch

    torch.set_num_threads(args.threads)
    from vadapt.adapters.resadapter import disable_resadapter, enable_resadapter, set_resadapter_strength
    from vadapt.tasks.diffusion_pretrain import pretrain_diffusion_base
    from vadapt.tasks.generation import DiffusionAdapterTask

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {"resolution": args.resolution, "args": vars(args)}
    t0 = time.perf_counter()
    base = Path(args.base) if args.base else workdir / "base"
    if args.base is None:
        start = time.perf_counter()
        pretrain_diffusion_base(base, backbone=args.backbone, resolution=args.resolution,
                                max_minutes=args.pretrain_minutes, max_steps=args.pretrain_steps,
                                batch_size=args.batch_size, lr=args.pretrain_lr, snr_gamma=args.snr_gamma,
                                ema_decay=args.ema_decay or None, seed=args.seed, shapes=SHAPES, colours=COLOURS,
                                accelerator="cpu", overwrite=True)
        results["pretrain_s"] = time.perf_counter() - start
    print(f"base: {base}", flush=True)

    results["memory"] = {mode: run_memory(args, base, mode) for mode in ("resadapter", "full")}
    print(json.dumps(results["memory"]), flush=True)

    task, steps, seconds = train_resadapter(args, base, workdir)
    trainable = sum(p.numel() for p in task.parameters() if p.requires_grad)
    unet = sum(p.numel() for p in task.backbone.unet.parameters())
    results["adapter"] = {"steps": steps, "seconds": seconds, "trainable": trainable, "unet_params": unet,
                          "buckets": buckets_for(args.resolution)}
    results["real_counts"] = REAL_COUNTS
    print(json.dumps(results["adapter"]), flush=True)

    resolutions = [args.resolution // 2, args.resolution, 2 * args.resolution]
    arms = {"base": ("off", 1.0), "base + ResAdapter": ("on", 1.0), "ResAdapter strength 0 (ResENorm only)":
            ("on", 0.0)}
    results["samples"] = {}
    shown: dict[str, dict[int, object]] = {}
    for arm, (state, strength) in arms.items():
        if state == "off":
            disable_resadapter(task.backbone)
        else:
            enable_resadapter(task.backbone)
            set_resadapter_strength(task.backbone, strength)
        results["samples"][arm] = {}
        for i, res in enumerate(resolutions):
            images, texts = sample(task, res, args.samples, args.sample_seed + 1000 * i, args.steps, args.guidance)
            results["samples"][arm][res] = measure(images, texts)
            if arm != "ResAdapter strength 0 (ResENorm only)":
                shown.setdefault(arm.replace("base + ", "+ "), {})[res] = images[:4]
            print(arm, res, results["samples"][arm][res], flush=True)
    set_resadapter_strength(task.backbone, 1.0)

    # the disabled adapter is the base: same samples as a fresh task without the adapter
    disable_resadapter(task.backbone)
    fresh = DiffusionAdapterTask(backbone=args.backbone, weights=str(base)).eval()
    a = sample(task, args.resolution, 4, args.sample_seed, args.steps, args.guidance)[0]
    b = sample(fresh, args.resolution, 4, args.sample_seed, args.steps, args.guidance)[0]
    results["disabled_equals_base_max_abs_diff"] = float((a - b).abs().max())
    results["total_s"] = time.perf_counter() - t0
    (workdir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    picture(shown, Path(args.picture), per_res=min(4, args.samples))
    print(table(results))
    print(f"adapter: {trainable:,} trainable of a {unet:,}-parameter UNet ({steps} steps, {seconds / 60:.1f} min); "
          f"SD1.5 {REAL_COUNTS['sd15']:,}, SDXL {REAL_COUNTS['sdxl']:,}; disabled vs fresh base max |diff| "
          f"{results['disabled_equals_base_max_abs_diff']:.2e}; total {results['total_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
