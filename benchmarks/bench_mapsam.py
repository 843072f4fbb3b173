"""MapSAM-style few-shot road extraction on historical map tiles: MapSAM vs a plain decoder vs full fine-tuning.

Data: the 10 real historical map tiles in ``../shared/data/historical_roads`` (``images/DH_1940_Clipped_R_C.tif``:
256x256 RGBA uint8 GeoTIFF, RGB bands used, scaled to [0, 1]; ``masks/GT_colored_R_C.tif``: RGB colour mask, any
non-black pixel = road = 1, black = 0). Research use only: read in place, never copied.

Protocol:

* every tile is cut into its four 128x128 quadrants (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right);
* training set (10 shots): from each of the first 5 tiles in sorted file order, the 2 quadrants with the most
  road pixels (ties: lower quadrant index first);
* test set: all 20 quadrants of the other 5 tiles (no tile is in both sets);
* quadrants are upsampled to ``--size`` (default 256; image bilinear, mask nearest) and fed whole; predictions
  are resampled back to the native 128x128 (logits bilinear) and scored there;
* input normalisation: per-band mean / std computed on the 10 training quadrants (printed), for every arm.

Arms (``--arms``, default ``mapsam,plain,full``), all on the SAM ViT-B image encoder (``sam_vit_b``) with
``img_size = --size`` and ``weights=None``: NO pretrained SAM weights exist on this machine, so every encoder
(and MapSAM's prompt encoder / mask decoder) starts from RANDOM INIT. The numbers say whether each recipe
learns from 10 shots on a CPU budget, nothing about MapSAM's paper accuracy (which relies on SA-1B weights).

* ``mapsam``: ``PromptableSegmentationTask(prompting=PromptingConfig(mode="automatic"))`` (MapSAM: coarse-mask
  heads -> automatic point prompts + positional-semantic prompt), q/v DoRA r=4 on the frozen encoder, prompt
  encoder and mask decoder trained, loss 0.2 focal + 0.8 dice (+ the same on the coarse mask). AdamW lr 0.005,
  weight decay 0.1 (MapSAM's official values). If this diverges (non-finite loss, or a last-epoch mean loss above
  the first epoch's), the arm is rerun with lr 1e-3 (``mapsam_lr1e-3``) unless ``--no-fallback``.
* ``plain``: ``SemanticSegmentationTask`` (2 classes, cross-entropy, ignore 255), the same q/v DoRA r=4 on the
  frozen encoder, decode head ``--head`` (default ``fpn``, 64 channels: on SAM's single 256-channel stride-16
  neck map it is 1x1 conv -> 3x3 conv/BN/ReLU -> 1x1 classifier, logits bilinearly upsampled x16; ``linear`` is
  BN + one 1x1 conv). AdamW lr 1e-3, weight decay 0.01.
* ``full``: as ``plain`` with ``adapter=None, freeze_backbone=False``: every encoder weight trains. AdamW with two
  parameter groups: encoder lr 1e-4, head lr 1e-3, weight decay 0.01.

Training (every arm): a plain loop (no Lightning Trainer), losses from ``task._shared_step(batch, "train")``,
AdamW over the parameters with ``requires_grad``, batch ``--batch`` (2), ``--epochs`` (40) passes over the
10 shots (reshuffled each epoch), random hflip / vflip / rot90 applied identically to image and mask, linear
warm-up over the first 10% of steps then poly 0.9 decay (MapSAM's schedule; used for all arms), seed 0 (the same
batches and augmentations for every arm), ``torch.set_num_threads(2)``.

Metrics (road class, on the 20 native-resolution test quadrants): F1 and IoU per quadrant averaged over
quadrants (MapSAM's macro protocol; a quadrant with no road and no predicted road counts as 1 here, the official
code counts it 0) and pooled over all test pixels (micro; torchmetrics ``BinaryF1Score`` / ``BinaryJaccardIndex``).
Trivial baselines (all road, all background) are scored the same way. Also reported per arm: trainable parameters
(sum of ``numel`` over ``requires_grad``), training CPU time (``time.process_time``, all threads) and wall time,
final train loss (mean over the last epoch's steps).

Run: ``python benchmarks/bench_mapsam.py`` (all three arms, 40 epochs at 256 px; see the report for the
measured time on a shared 2-core CPU), ``--arms mapsam --epochs 2`` (timing probe) or ``--tiny`` (smoke test:
``sam_test`` backbone at 64 px, 2 epochs, < 1 min; its numbers mean nothing). Results: a markdown table on stdout
and a JSON of every number in ``--out`` (default ``runs/bench_mapsam.json``; ``--tiny``:
``runs/bench_mapsam_tiny.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "historical_roads"
ARMS = ("mapsam", "plain", "full", "plain_balanced")
DEFAULT_ARMS = ("mapsam", "plain", "full")
QUAD = 128  # quadrant side (tiles are 256x256)


@dataclass
class Split:
    """Quadrants as tensors: images ``(N, 3, S, S)`` in [0, 1] at the model size, masks ``(N, S, S)`` long 0/1,
    native masks ``(N, 128, 128)`` (test scoring) and ``(tile, quadrant)`` names."""

    images: Tensor
    masks: Tensor
    native_masks: Tensor
    names: list[str]


# ---- data ----------------------------------------------------------------------------------------------------
def read_tile(image_path: Path, mask_path: Path) -> tuple[Tensor, Tensor]:
    """One tile -> RGB ``(3, 256, 256)`` float in [0, 1] and road mask ``(256, 256)`` long (non-black = 1)."""
    import rasterio

    with rasterio.open(image_path) as src:
        rgb = torch.from_numpy(src.read([1, 2, 3])).float() / 255.0
    with rasterio.open(mask_path) as src:
        colour = torch.from_numpy(src.read())
    return rgb, (colour.amax(dim=0) > 0).long()


def quadrants(t: Tensor) -> list[Tensor]:
    """``(..., 256, 256)`` -> the four ``(..., 128, 128)`` quadrants: top-left, top-right, bottom-left, bottom-right."""
    return [t[..., r : r + QUAD, c : c + QUAD] for r in (0, QUAD) for c in (0, QUAD)]


def load_splits(data: Path, size: int) -> tuple[Split, Split, dict[str, Any]]:
    """The 10-shot training split and the 20-quadrant test split (see module docstring)."""
    images = sorted((data / "images").glob("DH_1940_Clipped_*.tif"))
    if len(images) != 10:
        raise SystemExit(f"expected 10 tiles in {data / 'images'}, found {len(images)}")
    train: list[tuple[Tensor, Tensor, str]] = []
    test: list[tuple[Tensor, Tensor, str]] = []
    info: dict[str, Any] = {"train_tiles": [], "test_tiles": [], "train_quadrants": []}
    for i, path in enumerate(images):
        tile = path.stem.removeprefix("DH_1940_Clipped_")
        mask_path = data / "masks" / f"GT_colored_{tile}.tif"
        if not mask_path.is_file():
            raise SystemExit(f"mask {mask_path} missing for {path.name}")
        rgb, mask = read_tile(path, mask_path)
        parts = list(zip(quadrants(rgb), quadrants(mask)))
        if i < 5:
            info["train_tiles"].append(tile)
            ranked = sorted(range(4), key=lambda q: (-int(parts[q][1].sum()), q))[:2]
            for q in sorted(ranked):
                train.append((*parts[q], f"{tile}/q{q}"))
                info["train_quadrants"].append(f"{tile}/q{q}")
        else:
            info["test_tiles"].append(tile)
            test.extend((*parts[q], f"{tile}/q{q}") for q in range(4))

    def stack(items: list[tuple[Tensor, Tensor, str]]) -> Split:
        img = torch.stack([x for x, _, _ in items])
        msk = torch.stack([m for _, m, _ in items])
        up = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
        up_mask = F.interpolate(msk[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
        return Split(up, up_mask, msk, [n for _, _, n in items])

    tr, te = stack(train), stack(test)
    native_train = torch.stack([x for x, _, _ in train])  # statistics on the native training quadrants
    info["mean"] = [round(float(v), 4) for v in native_train.mean(dim=(0, 2, 3))]
    info["std"] = [round(float(v), 4) for v in native_train.std(dim=(0, 2, 3))]
    info["train_road_fraction"] = float(tr.native_masks.float().mean())
    info["test_road_fraction"] = float(te.native_masks.float().mean())
    info["test_quadrants_without_road"] = int((te.native_masks.flatten(1).sum(1) == 0).sum())
    return tr, te, info


def augment(images: Tensor, masks: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random hflip / vflip / rot90 per sample, identical for image ``(B, 3, S, S)`` and mask ``(B, S, S)``."""
    out_i, out_m = [], []
    for img, msk in zip(images, masks):
        h, v, k = torch.randint(0, 2, (2,), generator=generator).tolist() + [
            int(torch.randint(0, 4, (1,), generator=generator))]
        if h:
            img, msk = img.flip(-1), msk.flip(-1)
        if v:
            img, msk = img.flip(-2), msk.flip(-2)
        img, msk = img.rot90(k, dims=(-2, -1)), msk.rot90(k, dims=(-2, -1))
        out_i.append(img)
        out_m.append(msk)
    return torch.stack(out_i).contiguous(), torch.stack(out_m).contiguous()


# ---- models --------------------------------------------------------------------------------------------------
def build_task(arm: str, args: argparse.Namespace, info: dict[str, Any]) -> torch.nn.Module:
    from vadapt.adapters import QVDoraConfig
    from vadapt.tasks import PromptableSegmentationTask, SemanticSegmentationTask
    from vadapt.tasks.promptable_config import DecoderConfig, LossConfig, PromptingConfig

    common = {"backbone": args.backbone, "weights": None, "img_size": args.size, "mean": info["mean"],
              "std": info["std"]}
    if arm.startswith("mapsam"):
        return PromptableSegmentationTask(
            **common, adapter=QVDoraConfig(r=4), prompting=PromptingConfig(mode="automatic"),
            decoder=DecoderConfig(prompt_encoder="train", mask_decoder="train"),
            loss=LossConfig(focal_weight=0.2, dice_weight=0.8), lr=arm_lr(arm, args), weight_decay=0.1,
            preview_images=0,
        )
    plain = arm.startswith("plain")
    road = info["train_road_fraction"]  # "balanced" weights (as scikit-learn): n / (2 * count) per class
    weights = [0.5 / (1 - road), 0.5 / road] if arm == "plain_balanced" else None
    return SemanticSegmentationTask(
        **common, num_classes=2, class_names=["background", "road"], adapter=QVDoraConfig(r=4) if plain else None,
        freeze_backbone=plain, head=args.head, head_channels=args.head_channels, ignore_index=255, lr=1e-3,
        weight_decay=1e-2, preview_images=0, class_weights=weights,
    )


def arm_lr(arm: str, args: argparse.Namespace) -> float:
    if arm == "mapsam":
        return args.mapsam_lr
    if arm.startswith("mapsam_lr"):
        return float(arm.removeprefix("mapsam_lr"))
    return 1e-3


def make_optimizer(arm: str, task: torch.nn.Module, args: argparse.Namespace) -> torch.optim.AdamW:
    """AdamW: one group (mapsam, plain) or encoder 1e-4 / rest 1e-3 (full)."""
    params = [(n, p) for n, p in task.named_parameters() if p.requires_grad]
    if arm.startswith("mapsam"):
        return torch.optim.AdamW([p for _, p in params], lr=arm_lr(arm, args), weight_decay=0.1)
    if arm == "full":
        groups = [{"params": [p for n, p in params if n.startswith("backbone.")], "lr": 1e-4},
                  {"params": [p for n, p in params if not n.startswith("backbone.")], "lr": 1e-3}]
        return torch.optim.AdamW(groups, weight_decay=1e-2)
    return torch.optim.AdamW([p for _, p in params], lr=1e-3, weight_decay=1e-2)


def poly_factor(step: int, total: int, warmup: int) -> float:
    """MapSAM's schedule: linear warm-up over ``warmup`` steps, then ``(1 - t)^0.9`` decay."""
    if step < warmup:
        return (step + 1) / warmup
    return max(1.0 - (step - warmup) / max(total - warmup, 1), 0.0) ** 0.9


# ---- evaluation ----------------------------------------------------------------------------------------------
def predict(arm: str, task: torch.nn.Module, test: Split) -> Tensor:
    """Road predictions ``(N, 128, 128)`` bool at native resolution (logits resampled bilinearly)."""
    task.eval()
    preds = []
    with torch.inference_mode():
        for i in range(len(test.images)):
            x = test.images[i : i + 1]
            if arm.startswith("mapsam"):
                logits, _ = task(x)
                logit = F.interpolate(logits[:, :1], size=(QUAD, QUAD), mode="bilinear", align_corners=False)
                preds.append(logit[:, 0] > 0)
            else:
                logits = F.interpolate(task(x), size=(QUAD, QUAD), mode="bilinear", align_corners=False)
                preds.append(logits.argmax(1) == 1)
    return torch.cat(preds)


def scores(pred: Tensor, truth: Tensor) -> dict[str, float]:
    """Road F1 / IoU: macro (per quadrant, empty-vs-empty = 1) and micro (pooled, torchmetrics)."""
    from torchmetrics.classification import BinaryF1Score, BinaryJaccardIndex

    p, t = pred.flatten(1).bool(), truth.flatten(1).bool()
    tp = (p & t).sum(1).double()
    fp = (p & ~t).sum(1).double()
    fn = (~p & t).sum(1).double()
    f1 = torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), torch.ones_like(tp))
    iou = torch.where(tp + fp + fn > 0, tp / (tp + fp + fn).clamp(min=1), torch.ones_like(tp))
    pf, tf = p.long().flatten(), t.long().flatten()
    return {
        "f1_macro": float(f1.mean()), "iou_macro": float(iou.mean()),
        "f1_micro": float(BinaryF1Score()(pf, tf)), "iou_micro": float(BinaryJaccardIndex()(pf, tf)),
        "predicted_road_fraction": float(p.float().mean()),
    }


def save_picture(task: torch.nn.Module, test: Split, path: str, count: int = 4) -> None:
    """image | truth | prediction of the first ``count`` test quadrants, with MapSAM's automatic points."""
    import numpy as np

    rows = []
    with torch.inference_mode():
        for i in range(count):
            x = test.images[i : i + 1]
            logits, _, _, coords, labels = task.segment_automatic(x)
            truth = F.interpolate(test.native_masks[i : i + 1, None].float(), size=x.shape[-2:], mode="nearest")
            rows.append((x[0].numpy(), truth[0, 0].long().numpy(), (logits[0, 0] > 0).long().numpy(),
                         coords[0].numpy(), labels[0].numpy(), np.full(4, np.nan)))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    task.preview_picture(rows).save(path)
    print(f"picture: {path}")


# ---- one arm -------------------------------------------------------------------------------------------------
def run_arm(arm: str, args: argparse.Namespace, train: Split, test: Split, info: dict[str, Any]) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    task = build_task(arm, args, info)
    trainable = sum(p.numel() for p in task.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in task.parameters())
    optimizer = make_optimizer(arm, task, args)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    steps_per_epoch = math.ceil(len(train.images) / args.batch)
    total = steps_per_epoch * args.epochs
    warmup = max(1, round(0.1 * total))
    generator = torch.Generator().manual_seed(args.seed)  # same batches and augmentations for every arm
    epoch_losses: list[float] = []
    epoch_wall: list[float] = []
    diverged, step = False, 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    task.train()
    for _ in range(args.epochs):
        t_epoch = time.perf_counter()
        order = torch.randperm(len(train.images), generator=generator)
        losses = []
        for start in range(0, len(order), args.batch):
            idx = order[start : start + args.batch]
            x, y = augment(train.images[idx], train.masks[idx], generator)
            for group, lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = lr * poly_factor(step, total, warmup)
            loss = task._shared_step({"image": x, "mask": y}, "train")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                diverged = True
                break
        epoch_losses.append(sum(losses) / len(losses))
        epoch_wall.append(time.perf_counter() - t_epoch)
        print(f"  [{arm}] epoch {len(epoch_losses)}/{args.epochs} loss {epoch_losses[-1]:.4f} "
              f"({epoch_wall[-1]:.1f} s)", flush=True)
        if diverged:
            break
    train_cpu, train_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if len(epoch_losses) > 1 and epoch_losses[-1] > epoch_losses[0]:
        diverged = True
    t0 = time.perf_counter()
    result = {
        "arm": arm, "lr": base_lrs, "trainable": trainable, "total_params": total_params, "steps": step,
        "train_cpu_min": train_cpu / 60, "train_wall_min": train_wall / 60, "epoch_wall_s": epoch_wall,
        "epoch_losses": epoch_losses, "final_train_loss": epoch_losses[-1] if epoch_losses else float("nan"),
        "diverged": diverged,
    }
    if math.isfinite(result["final_train_loss"]):
        result.update(scores(predict(arm, task, test), test.native_masks))
    result["eval_wall_s"] = time.perf_counter() - t0
    if args.picture and arm.startswith("mapsam") and math.isfinite(result["final_train_loss"]):
        save_picture(task, test, args.picture)
    print(json.dumps({k: v for k, v in result.items() if k not in ("epoch_losses", "epoch_wall_s")}), flush=True)
    return result


# ---- report --------------------------------------------------------------------------------------------------
LABELS = {
    "mapsam": "(a) MapSAM: automatic prompts, q/v DoRA r=4, PE + decoder trained",
    "plain": "(b) q/v DoRA r=4 + {head} head",
    "plain_balanced": "(b') as (b), class-balanced cross-entropy",
    "full": "(c) full fine-tuning + {head} head",
}


def label(arm: str, head: str) -> str:
    if arm.startswith("mapsam_lr"):
        return LABELS["mapsam"] + " (lr fallback)"
    return LABELS[arm].format(head=head)


def fmt(r: dict[str, Any], key: str) -> str:
    return f"{r[key]:.3f}" if key in r else "n/a"


def table(results: list[dict[str, Any]], baselines: dict[str, dict[str, float]], head: str) -> str:
    lines = [
        "| arm | lr | trainable params | train CPU min | train wall min | final train loss | F1 macro | IoU macro "
        "| F1 micro | IoU micro | predicted road % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lrs = " / ".join(f"{v:g}" for v in r["lr"])
        flag = " (diverged)" if r["diverged"] else ""
        lines.append(
            f"| {label(r['arm'], head)} | {lrs} | {r['trainable']:,} | {r['train_cpu_min']:.2f} | "
            f"{r['train_wall_min']:.2f} | {r['final_train_loss']:.4f}{flag} | {fmt(r, 'f1_macro')} | "
            f"{fmt(r, 'iou_macro')} | {fmt(r, 'f1_micro')} | {fmt(r, 'iou_micro')} | "
            + (f"{100 * r['predicted_road_fraction']:.1f} |" if "predicted_road_fraction" in r else "n/a |")
        )
    for name, s in baselines.items():
        lines.append(f"| trivial: {name} | - | 0 | - | - | - | {s['f1_macro']:.3f} | {s['iou_macro']:.3f} | "
                     f"{s['f1_micro']:.3f} | {s['iou_micro']:.3f} | {100 * s['predicted_road_fraction']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"comma-separated among {', '.join(ARMS)}")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default runs/bench_mapsam.json)")
    parser.add_argument("--size", type=int, default=256, help="model input size (quadrants upsampled to it)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--mapsam-lr", type=float, default=0.005, help="MapSAM's official AdamW lr")
    parser.add_argument("--no-fallback", action="store_true", help="do not rerun a diverged MapSAM arm at lr 1e-3")
    parser.add_argument("--head", choices=("fpn", "linear", "uper"), default="fpn", help="head of arms plain/full")
    parser.add_argument("--head-channels", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="smoke test: sam_test at 64 px, 2 epochs (meaningless)")
    parser.add_argument("--picture", default="", help="write image | truth | MapSAM prediction (with its points)")
    args = parser.parse_args()
    args.backbone = "sam_vit_b"
    if args.tiny:
        args.backbone, args.size, args.epochs = "sam_test", 64, 2
    if args.out is None:
        args.out = ROOT / "runs" / ("bench_mapsam_tiny.json" if args.tiny else "bench_mapsam.json")
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arms {unknown}; choose among {', '.join(ARMS)}")
    if not (args.data / "images").is_dir() or not (args.data / "masks").is_dir():
        print(f"historical road tiles not found at {args.data} (expected ../shared/data/historical_roads with "
              "images/ and masks/): skipping the benchmark")
        return

    torch.set_num_threads(args.threads)
    # _shared_step logs with self.log; without a Trainer Lightning warns once per call site, harmlessly
    warnings.filterwarnings("ignore", message=r".*self\.log\(\)")
    train, test, info = load_splits(args.data, args.size)
    print(f"train quadrants: {', '.join(train.names)}; test tiles: {', '.join(info['test_tiles'])}; "
          f"normalisation mean {info['mean']} std {info['std']} (training quadrants)", flush=True)

    truth = test.native_masks
    baselines = {"all road": scores(torch.ones_like(truth, dtype=torch.bool), truth),
                 "all background": scores(torch.zeros_like(truth, dtype=torch.bool), truth)}
    results = []
    t_all, cpu_all = time.perf_counter(), time.process_time()
    for arm in arms:
        result = run_arm(arm, args, train, test, info)
        results.append(result)
        if arm == "mapsam" and result["diverged"] and not args.no_fallback and args.mapsam_lr != 1e-3:
            print(f"  [mapsam] diverged at lr {args.mapsam_lr:g}: rerunning at lr 1e-3", flush=True)
            results.append(run_arm("mapsam_lr0.001", args, train, test, info))
    total_wall, total_cpu = time.perf_counter() - t_all, time.process_time() - cpu_all

    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "backbone": args.backbone,
        "weights": None, "size": args.size, "epochs": args.epochs, "batch": args.batch, "seed": args.seed,
        "head": args.head, "head_channels": args.head_channels, "tiny": args.tiny, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "cores": os.cpu_count(), "cpu": platform.processor() or
        platform.machine(), "total_wall_min": total_wall / 60, "total_cpu_min": total_cpu / 60, **info,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "baselines": baselines, "results": results}, indent=1))

    print()
    print("Command: `" + meta["command"] + "`")
    print()
    print(f"Historical road tiles ({args.data}): 10-shot training = 2 quadrants (most road) of each of the first 5 "
          f"tiles ({', '.join(train.names)}); test = the 20 quadrants of tiles {', '.join(info['test_tiles'])} "
          f"({100 * info['test_road_fraction']:.1f}% road pixels, {info['test_quadrants_without_road']} quadrants "
          f"without road). 128x128 quadrants upsampled to {args.size}px, scored at 128x128. Encoder "
          f"`{args.backbone}` with weights=None: RANDOM INIT (no pretrained SAM weights on this machine). "
          f"{args.epochs} epochs x {math.ceil(len(train.images) / args.batch)} steps of batch {args.batch}, "
          f"warm-up 10% + poly 0.9, seed {args.seed}; normalisation mean {info['mean']} / std {info['std']} "
          f"computed on the training quadrants. torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores ({meta['cpu']}), machine possibly shared; total {total_wall / 60:.1f} min wall, "
          f"{total_cpu / 60:.1f} CPU min" + (" [TINY: meaningless]" if args.tiny else ""))
    print()
    print(table(results, baselines, args.head))
    print()
    print("Road class. Macro = per-quadrant F1 / IoU averaged over the 20 test quadrants (MapSAM's protocol, but a "
          "quadrant with no road and no predicted road counts 1 here, 0 in the official code); micro = pooled over "
          "all test pixels (torchmetrics). CPU min = time.process_time of training (all threads). lr of (c): "
          f"encoder / head. JSON: {args.out}")


if __name__ == "__main__":
    main()
