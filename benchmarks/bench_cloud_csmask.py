"""Cloud / cloud-shadow segmentation of one real Sentinel-2 L1C scene: our LoRA adapter vs ukis-csmask.

Scene: ``../shared/data/cloud_csmask/sentinel2.npz`` (ukis-csmask's own Sentinel-2 test scene, Apache-2.0):
``img`` (512, 512, 6) float32 TOA reflectance, bands blue, green, red, nir, swir16, swir22; ``msk`` codes
4 = cloud, 0 = cloud shadow, 1-3 = clear. Classes here: 0 clear, 1 cloud, 2 cloud shadow (the same ids as
ukis-csmask's ``csm`` output: 0 background, 1 clouds, 2 cloud shadows, so its output is used unchanged).

Split: the bottom-right 256x256 quadrant (rows 256-511, columns 256-511; ``--held-out`` picks another) is held
out for evaluation; nothing
of it (image or mask) is used for training or for the normalisation statistics. Training crops come from the
other three quadrants (each 256x256, sampled with equal probability; crops never straddle quadrants).

Ours: the quickstart recipe (configs/quickstart.yaml) on these quadrants: EfficientNet-Lite0 with the real
ImageNet weights, frozen, 6 bands (RGB filters kept, NIR/SWIR from the nearest RGB filter), LoRA r=8 /
alpha 16 on every pointwise conv, FPN head (64 ch), AdamW lr 3e-3, 10 warm-up steps then linear decay,
``--epochs`` (default 8) x 128 random 96x96 crops with flips and 90-degree rotations, batch 8, seed 0. Mean/std
are computed on the three training quadrants.

ukis-csmask: ``CSmask(img, band_order=[blue, green, red, nir, swir16, swir22], product_level="l1c")`` (its
6-band L1C ONNX U-Net / EfficientNet-B4, 256x256 tiles with 20% overlap, its own normalisation); ``.csm`` is
the class map. Its own test asserts kappa >= 0.60 on this whole scene; the script reproduces that check.

Both models are evaluated on the held-out quadrant with two inputs: the whole 512x512 scene (prediction then
cropped to the quadrant; the image of the other quadrants is context, never labels) and the quadrant alone.
Reported: Cohen's kappa (3 classes), mIoU over clear / cloud / shadow, per-class IoU, pixel accuracy.

Caveat: ours is trained on 3/4 of this very scene (same date, sensor, illumination); ukis-csmask is a general
pre-trained model that we do not fit to this scene (the scene is its package's test file). This is a
same-scene hold-out, not a test of generalisation to other scenes.

Run: ``python benchmarks/bench_cloud_csmask.py`` (about 30 s on a 2-core CPU; ``--quick`` for a smoke test).
Needs ``pip install ukis-csmask`` (pulls its ONNX weights, ~160 MB). Outputs go to ``--out`` (under /tmp).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCENE = ROOT.parent / "shared" / "data" / "cloud_csmask" / "sentinel2.npz"
BANDS = ["blue", "green", "red", "nir", "swir16", "swir22"]
CLASSES = ["clear", "cloud", "cloud_shadow"]
QUADRANTS = {
    "tl": (slice(0, 256), slice(0, 256)), "tr": (slice(0, 256), slice(256, 512)),
    "bl": (slice(256, 512), slice(0, 256)), "br": (slice(256, 512), slice(256, 512)),
}


def reference_classes(codes: np.ndarray) -> np.ndarray:
    """Reference codes -> class ids: 1-3 clear (0), 4 cloud (1), 0 shadow (2); anything else 255."""
    lut = np.full(256, 255, dtype=np.int64)
    lut[[1, 2, 3]], lut[4], lut[0] = 0, 1, 2
    return lut[codes.astype(np.int64)]


def scores(truth: np.ndarray, pred: np.ndarray, n: int = 3) -> dict:
    """Kappa, IoUs and accuracy from the confusion matrix of the labelled pixels."""
    valid = truth != 255
    cm = np.bincount(n * truth[valid] + pred[valid], minlength=n * n).reshape(n, n).astype(np.float64)
    total = cm.sum()
    po = np.trace(cm) / total
    pe = (cm.sum(0) * cm.sum(1)).sum() / total**2
    tp = np.diag(cm)
    iou = tp / (cm.sum(0) + cm.sum(1) - tp)
    out = {"kappa": (po - pe) / (1 - pe), "miou": float(np.nanmean(iou)), "aacc": po, "pixels": int(total)}
    out.update({f"iou_{c}": float(v) for c, v in zip(CLASSES, iou)})
    out["share_truth"] = [float(v) for v in cm.sum(1) / total]
    out["share_pred"] = [float(v) for v in cm.sum(0) / total]
    return out


def torchmetrics_kappa(truth: np.ndarray, pred: np.ndarray) -> float:
    """Cross-check of our kappa with torchmetrics' CohenKappa."""
    import torch
    from torchmetrics.classification import MulticlassCohenKappa

    valid = truth != 255
    metric = MulticlassCohenKappa(num_classes=3)
    return float(metric(torch.from_numpy(pred[valid]), torch.from_numpy(truth[valid])))


def train_ours(image: np.ndarray, mask: np.ndarray, train_quadrants: list, args) -> tuple[object, dict]:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from vadapt.adapters import LoraConfig
    from vadapt.config import to_plain
    from vadapt.data.scene import RandomCrops
    from vadapt.tasks import SemanticSegmentationTask

    class SeededCrops(RandomCrops):
        # vadapt's RandomCrops uses albumentations' own RNG, which seed_everything does not reach: re-seed it
        # from torch per item so the crops repeat with the seed (as vadapt.data.base.augment_pair does).
        def __getitem__(self, index):
            self.transform.set_random_seed(int(torch.randint(0, 2**31 - 1, ())))
            return super().__getitem__(index)

    regions = [(image[q], mask[q]) for q in train_quadrants]
    pixels = np.concatenate([r.reshape(-1, r.shape[-1]) for r, _ in regions])
    mean, std = pixels.mean(0).tolist(), pixels.std(0).tolist()
    L.seed_everything(args.seed, workers=True)
    loader = DataLoader(SeededCrops(regions, args.crop, args.samples), batch_size=args.batch, shuffle=True)
    task = SemanticSegmentationTask(
        backbone="efficientnet_lite0", weights="pretrained", bands=tuple(BANDS), extra_band_init="copy",
        num_classes=3, class_names=CLASSES, mean=mean, std=std,
        adapter=to_plain(LoraConfig(r=8, lora_alpha=16)),  # a dict: a dataclass breaks CSVLogger's hparams.yaml
        head="fpn", head_channels=64, ignore_index=255, lr=3e-3, warmup_steps=10, preview_images=0,
    )
    out = Path(args.out)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=args.epochs, limit_val_batches=0, num_sanity_val_steps=0,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=4,
        default_root_dir=str(out), logger=L.pytorch.loggers.CSVLogger(str(out)),
    )
    t0 = time.perf_counter()
    trainer.fit(task, train_dataloaders=loader)
    info = {"fit_s": time.perf_counter() - t0, "steps": trainer.global_step, "mean": mean, "std": std,
            "trainable": sum(p.numel() for p in task.parameters() if p.requires_grad),
            "frozen": sum(p.numel() for p in task.parameters() if not p.requires_grad),
            "adapter_file": str(Path(trainer.log_dir) / "adapter.safetensors")}
    return task.eval(), info


def predict_ours(task, image: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
        return task(x).argmax(1)[0].numpy()


def predict_csmask(image: np.ndarray, product_level: str) -> np.ndarray:
    import warnings

    from ukis_csmask.mask import CSmask

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        cs = CSmask(img=np.ascontiguousarray(image), band_order=BANDS, product_level=product_level,
                    providers=["CPUExecutionProvider"])
    return cs.csm[..., 0].astype(np.int64)


def table(rows: list[dict]) -> str:
    lines = ["| model | input | kappa | mIoU | IoU clear | IoU cloud | IoU shadow | pixel acc. "
             "| predicted shadow share |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["scores"]
        lines.append(f"| {r['model']} | {r['input']} | {s['kappa']:.3f} | {s['miou']:.3f} | {s['iou_clear']:.3f} | "
                     f"{s['iou_cloud']:.3f} | {s['iou_cloud_shadow']:.3f} | {s['aacc']:.3f} | "
                     f"{s['share_pred'][2]:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scene", type=Path, default=DEFAULT_SCENE)
    parser.add_argument("--out", default="/tmp/vadapt_bench_cloud")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--samples", type=int, default=128, help="random crops per epoch")
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--held-out", choices=sorted(QUADRANTS), default="br", help="quadrant to evaluate on")
    parser.add_argument("--quick", action="store_true", help="smoke test (1 epoch of 16 crops; meaningless)")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.samples, args.out = 1, 16, args.out.rstrip("/") + "_quick"
    if not args.scene.is_file():
        raise SystemExit(f"scene not found: {args.scene}")
    import torch

    with np.load(args.scene) as data:
        image = data["img"].astype(np.float32)
        codes = data["msk"][..., 0]
    truth = reference_classes(codes)
    held = QUADRANTS[args.held_out]
    train_quadrants = [q for k, q in QUADRANTS.items() if k != args.held_out]
    held_truth = truth[held]
    rows, extra = [], {}

    t0 = time.perf_counter()
    whole = predict_csmask(image, "l1c")
    extra["csmask_whole_scene_s"] = time.perf_counter() - t0
    extra["csmask_whole_scene_kappa_l1c"] = scores(truth, whole)["kappa"]  # ukis-csmask's own test: >= 0.60
    rows.append({"model": "ukis-csmask 1.0 (6-band L1C)", "input": "whole scene, cropped",
                 "scores": scores(held_truth, whole[held])})
    rows.append({"model": "ukis-csmask 1.0 (6-band L1C)", "input": "quadrant only",
                 "scores": scores(held_truth, predict_csmask(image[held], "l1c"))})
    extra["csmask_whole_scene_kappa_l2a"] = scores(truth, predict_csmask(image, "l2a"))["kappa"]

    train_mask = truth.copy()
    train_mask[held] = 255  # belt and braces: the held-out labels are never in a training region anyway
    task, info = train_ours(image, train_mask, train_quadrants, args)
    t0 = time.perf_counter()
    ours_whole = predict_ours(task, image)
    info["predict_whole_s"] = time.perf_counter() - t0
    label = f"ours: frozen EfficientNet-Lite0 + LoRA r=8 ({info['trainable']:,} trained)"
    rows.append({"model": label, "input": "whole scene, cropped", "scores": scores(held_truth, ours_whole[held])})
    rows.append({"model": label, "input": "quadrant only",
                 "scores": scores(held_truth, predict_ours(task, image[held]))})
    extra["torchmetrics_kappa_check"] = {
        "ours_whole": torchmetrics_kappa(held_truth, ours_whole[held]),
        "csmask_whole": torchmetrics_kappa(held_truth, whole[held]),
    }

    Path(args.out).mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "epochs": args.epochs,
            "samples_per_epoch": args.samples, "crop": args.crop, "batch": args.batch, "seed": args.seed,
            "quick": args.quick, "held_out": args.held_out, "ours": info, **extra}
    (Path(args.out) / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    share = ", ".join(f"{c} {v:.3f}" for c, v in zip(CLASSES, rows[0]["scores"]["share_truth"]))
    print()
    print(f"Held-out quadrant {args.held_out} ({rows[0]['scores']['pixels']:,} px; reference shares: {share}). "
          f"Ours: {args.epochs} epochs x {args.samples} crops {args.crop}px, batch {args.batch} = "
          f"{info['steps']} steps, fit {info['fit_s']:.0f} s wall; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads" + (" [QUICK: meaningless]" if args.quick else ""))
    print(f"ukis-csmask on the whole scene (its own test, threshold 0.60): kappa l1c "
          f"{extra['csmask_whole_scene_kappa_l1c']:.3f}, l2a {extra['csmask_whole_scene_kappa_l2a']:.3f} "
          f"({extra['csmask_whole_scene_s']:.0f} s wall for l1c)")
    print(f"kappa cross-check with torchmetrics: {extra['torchmetrics_kappa_check']}")
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
