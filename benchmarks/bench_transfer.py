"""Predict as trained: train on one part of ``../shared/data`` and predict another part the user's way.

Every model is trained with ``vadapt fit --config ...`` and every prediction is written by ``vadapt infer`` on
files training never saw, each in its own process (command-line overrides send the Lightning logs and
checkpoints to ``--out``, under /tmp); the script only builds the inputs, finds ``adapter.safetensors`` and
scores the written masks against the truth in-process. Parts (``--parts``, default all three):

* ``kvasir``: fit ``configs/kvasir_efficientnet_lora.yaml`` as shipped (800 training images resized whole to
  192 px, 4 epochs), then predict the 100 validation JPEGs at their native 352 px (read in place) with
  (a) ``--scale 1 --geometry native`` (what ``vadapt infer`` did before checkpoints recorded their preprocessing),
  (b) ``--scale 1/255 --geometry native`` (the scale fixed by hand), (c) the default flags (scale and whole-image
  resize to 192 px as recorded, probabilities back to 352 px), (d) default + ``--tta flip``, (e) default +
  ``--tta d4``; and in-process (f) the hand pipeline of BENCHMARKS.md section 4 (``load_adapter``, image / 255,
  antialiased bilinear resize to 192, logits upsampled to 352, argmax) and (f') the same without antialiasing.
  Scores: pooled polyp Dice and IoU, per-image mean Dice (masks: grey > 127), predicted polyp share.
* ``cloud``: the quickstart recipe (``configs/quickstart.yaml``, copied to ``--out`` with ``paths`` pointing at
  ``../shared/data/cloud_csmask/sentinel2.npz``, ``file_bands`` set, ``val_fraction: 0.25`` and ``mean`` / ``std``
  removed so that they are computed from the 384 training rows) as is (A) and with the travel options (B:
  ``augment: [hflip, vflip, rot90, band_gain, gamma, haze, blur]``, ``normalization: per_image``). Test GeoTIFFs
  (EPSG:32632, band descriptions set) from the held-out bottom 128 rows only: (i) as they are, 10 m;
  (i') the same with per-band gains and an offset (another calibration); (ii) a re-sampled copy: 3x3 blocks
  area-averaged to 30 m with the gains and offset, truth by majority over each block; (iii) (ii) resampled back
  to 10 m by the user (bilinear), scored against the 10 m truth. Each predicted with the default flags and with
  ``--tta d4``; whether infer printed the pixel-size note is recorded. Scores: Cohen's kappa, mIoU (3 classes),
  per-class IoU, predicted shadow share.
* ``levir``: fit ``configs/levir_cd_efficientnet_lora.yaml`` (train_* and val_* pairs), predict the 7 held-out
  ``test_*`` pairs (symlinked into ``--out``) with ``vadapt infer --input-a A --input-b B``: ``--scale 1``
  (before), default, default + ``--tta d4``. Scores of the change class (label 255): precision, recall, F1, IoU,
  and the predicted vs true changed share.

``--reuse`` keeps a trained ``adapter.safetensors`` found in ``--out`` (reruns redo only the predictions);
``--quick`` is a smoke test (a few training steps, 8 Kvasir images; its numbers mean nothing). Results:
``OUT/results.json`` (parts run earlier are kept), markdown tables on stdout, logs of every command beside it.
The data are read in place (Kvasir-SEG and LEVIR-CD are research-only: never copied, only symlinked).

Run::

    python benchmarks/bench_transfer.py                         # all parts, shipped budgets (see below)
    python benchmarks/bench_transfer.py --parts cloud,levir --reuse   # predictions only, keep the fits
    python benchmarks/bench_transfer.py --quick --out /tmp/vadapt_bench_transfer_quick   # smoke test
    python benchmarks/bench_transfer.py --tables-only           # reprint the tables of OUT/results.json

Time on a 2-core CPU: the three fits take about 3 + 1 + 5 min when the machine is idle (BENCHMARKS.md sections 4,
5 and 7) and each ``vadapt infer`` process 5-30 s; measured 79 min in all with the machine shared (load 5-7, the
Kvasir fit alone 62 min). ``--quick``: about 10 min under the same load.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
KVASIR = SHARED / "kvasir_seg"
SCENE = SHARED / "cloud_csmask" / "sentinel2.npz"
LEVIR = SHARED / "levir_cd"
KVASIR_CONFIG = ROOT / "configs" / "kvasir_efficientnet_lora.yaml"
LEVIR_CONFIG = ROOT / "configs" / "levir_cd_efficientnet_lora.yaml"
QUICKSTART_CONFIG = ROOT / "configs" / "quickstart.yaml"
PARTS = ("kvasir", "cloud", "levir")
BYTE_SCALE = 0.00392156862745098  # 1/255, as the configs write it
BANDS = ["blue", "green", "red", "nir", "swir16", "swir22"]
CLASSES = ["clear", "cloud", "cloud_shadow"]
GAINS = [1.08, 0.93, 1.05, 0.9, 1.12, 0.95]  # another sensor's calibration, per band
OFFSET = 0.01  # reflectance added after the gains
HELD_OUT_ROWS = 128  # val_fraction 0.25 of the 512-row scene
TRAVEL_AUGMENT = ["hflip", "vflip", "rot90", "band_gain", "gamma", "haze", "blur"]
ORIGIN = (399960.0, 5000040.0)  # any UTM 32N origin: the scene's own georeference is not in the npz


# ---- running the CLI ---------------------------------------------------------------------------------------
def vadapt_command() -> list[str]:
    """The ``vadapt`` console script of this interpreter's environment (as a user would type it)."""
    exe = Path(sys.executable).with_name("vadapt")
    return [str(exe)] if exe.exists() else [shutil.which("vadapt") or "vadapt"]


def run_logged(args: list[str], log: Path) -> tuple[float, int, str]:
    """Run ``args`` in the repository root (the configs' relative ``../shared`` paths resolve there), write its
    combined output to ``log``; returns wall seconds, exit code and the output."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$ " + " ".join(args), flush=True)
    started = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - started
    log.write_text("$ " + " ".join(args) + f"\n# exit {proc.returncode}, {seconds:.1f} s\n\n" + proc.stdout)
    return seconds, proc.returncode, proc.stdout


def newest_adapter(run_dir: Path) -> Path | None:
    """The most recently written ``adapter.safetensors`` under ``run_dir`` (Lightning's ``version_N``)."""
    found = sorted(run_dir.glob("**/adapter.safetensors"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def last_val_metrics(log_dir: Path) -> dict[str, float]:
    """The last logged value of every ``val/*`` column of the run's ``metrics.csv`` (the fit's own check)."""
    path = log_dir / "metrics.csv"
    if not path.exists():
        return {}
    last: dict[str, float] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key and key.startswith("val/") and value not in ("", None):
                    last[key] = float(value)
    return last


def fit(name: str, config: Path, run_dir: Path, overrides: list[str], reuse: bool) -> dict[str, Any]:
    """``vadapt fit --config config`` with its outputs under ``run_dir`` (or the adapter found there with
    ``reuse``); returns the adapter path, wall seconds and the fit's last validation metrics."""
    record = run_dir / "fit.json"
    adapter = newest_adapter(run_dir)
    if reuse and adapter is not None and record.exists():
        done = json.loads(record.read_text())
        print(f"[{name}] reusing {adapter} (fitted in {done['fit_s']:.0f} s)", flush=True)
        return {**done, "adapter": str(adapter), "reused": True}
    if run_dir.exists():
        shutil.rmtree(run_dir)  # only the folder this script made for this fit
    args = [*vadapt_command(), "fit", "--config", str(config), "--trainer.default_root_dir", str(run_dir),
            "--trainer.logger.init_args.save_dir", str(run_dir), *overrides]
    load_before = os.getloadavg()[0]
    seconds, code, output = run_logged(args, run_dir.parent / f"{run_dir.name}.log")
    adapter = newest_adapter(run_dir)
    if code != 0 or adapter is None:
        raise RuntimeError(f"{name}: vadapt fit failed (exit {code}); the end of its output:\n{output[-3000:]}")
    done = {"command": " ".join(args), "fit_s": seconds, "load_before": load_before,
            "load_after": os.getloadavg()[0], "val": last_val_metrics(adapter.parent), "adapter": str(adapter)}
    record.write_text(json.dumps(done, indent=1))
    print(f"[{name}] fitted in {seconds:.0f} s: {adapter}", flush=True)
    return {**done, "reused": False}


def infer(adapter: str, output: Path, inputs: list[str], flags: list[str]) -> dict[str, Any]:
    """``vadapt infer`` into a fresh ``output``; returns its wall seconds, report and the notes it printed."""
    if output.exists():
        shutil.rmtree(output)
    args = [*vadapt_command(), "infer", "--checkpoint", adapter, *inputs, "--output", str(output), *flags]
    seconds, code, text = run_logged(args, output.with_name(output.name + ".log"))
    report_path = output / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    if code != 0:
        print(f"  !! exit {code}: {text[-1500:]}", flush=True)
    notes = [line.strip() for line in text.splitlines() if line.strip().startswith("note:")]
    return {"flags": " ".join(flags) or "(defaults)", "exit": code, "wall_s": seconds,
            "infer_s": report.get("seconds"), "load_s": report.get("load_seconds"),
            "done": len(report.get("done", [])), "preprocessing": report.get("preprocessing"),
            "printed_notes": notes, "warnings": report.get("warnings", []), "failed": report.get("failed", [])}


def read_mask(path: Path) -> np.ndarray:
    """A mask written by ``vadapt infer`` (palette PNG or GeoTIFF) as class ids (255: nodata)."""
    if path.suffix == ".tif":
        import rasterio

        with rasterio.open(path) as src:
            return src.read(1)
    from PIL import Image

    return np.asarray(Image.open(path))


# ---- scores ------------------------------------------------------------------------------------------------
def binary_scores(preds: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, float]:
    """Pooled and per-image scores of the positive class (Dice, IoU, precision, recall) and the shares
    (precision ``None`` when nothing is predicted positive)."""
    tp = fp = fn = total = positives = predicted = 0
    per_image = []
    for pred, truth in zip(preds, truths):
        p, t = pred == 1, truth
        a, b, c = int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())
        tp, fp, fn = tp + a, fp + b, fn + c
        total, positives, predicted = total + t.size, positives + int(t.sum()), predicted + int(p.sum())
        per_image.append(1.0 if a + b + c == 0 else 2 * a / (2 * a + b + c))
    return {"dice": 2 * tp / max(2 * tp + fp + fn, 1), "iou": tp / max(tp + fp + fn, 1),
            "precision": tp / (tp + fp) if tp + fp else None, "recall": tp / max(tp + fn, 1),
            "dice_per_image_mean": float(np.mean(per_image)), "accuracy": 1 - (fp + fn) / max(total, 1),
            "share_true": positives / max(total, 1), "share_pred": predicted / max(total, 1), "images": len(preds)}


def multiclass_scores(truth: np.ndarray, pred: np.ndarray, n: int = 3) -> dict[str, Any]:
    """Cohen's kappa, mIoU, per-class IoU and class shares from the confusion matrix of labelled pixels
    (a pixel predicted nodata, 255, counts as wrong)."""
    valid = truth != 255
    t, p = truth[valid].astype(np.int64), pred[valid].astype(np.int64)
    wrong = p >= n
    p = np.where(wrong, (t + 1) % n, p)  # nodata in the prediction: counted as some other class
    cm = np.bincount(n * t + p, minlength=n * n).reshape(n, n).astype(np.float64)
    total = cm.sum()
    po, pe = np.trace(cm) / total, (cm.sum(0) * cm.sum(1)).sum() / total**2
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    out: dict[str, Any] = {"kappa": float((po - pe) / (1 - pe)), "miou": float(np.nanmean(iou)),
                           "accuracy": float(po), "pixels": int(total), "pred_nodata": int(wrong.sum())}
    out.update({f"iou_{c}": float(v) for c, v in zip(CLASSES, iou)})
    out["share_true"] = [float(v) for v in cm.sum(1) / total]
    out["share_pred"] = [float(v) for v in cm.sum(0) / total]
    return out


# ---- part 1: Kvasir-SEG --------------------------------------------------------------------------------------
def hand_pipeline(adapter: str, images: list[Path], antialias: bool) -> tuple[list[np.ndarray], float, float]:
    """BENCHMARKS.md section 4's evaluation on raw files: image / 255, bilinear resize to the training size
    (antialiased or not), logits upsampled to the image size, argmax. Returns the masks, the seconds in all and
    the seconds of them loading the adapter."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from vadapt.loading import load_adapter

    started = time.perf_counter()
    task = load_adapter(adapter, raw_inputs=False).eval()  # the pipeline scales the values itself
    size = tuple(task.preprocessing.resize) if task.preprocessing and task.preprocessing.resize else (192, 192)
    loaded = time.perf_counter() - started
    preds = []
    with torch.inference_mode():
        for path in images:
            rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
            x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
            small = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias)
            logits = F.interpolate(task(small), size=x.shape[-2:], mode="bilinear", align_corners=False)
            preds.append(logits.argmax(1)[0].numpy().astype(np.uint8))
    return preds, time.perf_counter() - started, loaded


def kvasir_truth(stem: str) -> np.ndarray:
    """The polyp mask of one validation image: grey > 127."""
    from PIL import Image

    return np.asarray(Image.open(KVASIR / "val" / "masks" / f"{stem}.jpg").convert("L")) > 127


def part_kvasir(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Fit the Kvasir recipe, predict the validation images five ways with ``vadapt infer`` and two in-process."""
    quick = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches",
             "1"] if args.quick else []
    trained = fit("kvasir", KVASIR_CONFIG, out / "fit", quick, args.reuse)
    images = sorted((KVASIR / "val" / "images").glob("*.jpg"), key=lambda p: int(p.stem) if p.stem.isdigit()
                    else p.stem)
    source = KVASIR / "val" / "images"
    if args.quick:  # a few images, symlinked (never copied)
        images = images[:8]
        source = out / "val_subset"
        if source.exists():
            shutil.rmtree(source)
        source.mkdir(parents=True)
        for path in images:
            (source / path.name).symlink_to(path)
    truths = [kvasir_truth(p.stem) for p in images]
    arms = [
        ("(a) before: --scale 1 --geometry native", ["--scale", "1", "--geometry", "native"]),
        ("(b) scale by hand: --scale 1/255 --geometry native", ["--scale", str(BYTE_SCALE), "--geometry", "native"]),
        ("(c) default flags (as trained)", []),
        ("(d) default + --tta flip", ["--tta", "flip"]),
        ("(e) default + --tta d4", ["--tta", "d4"]),
    ]
    rows = []
    for index, (label, flags) in enumerate(arms):
        run = infer(trained["adapter"], out / f"infer_{'abcde'[index]}", ["--input", str(source)], flags)
        preds = [read_mask(out / f"infer_{'abcde'[index]}" / f"{p.stem}.png") for p in images]
        rows.append({"arm": label, **run, **binary_scores(preds, truths), "load": os.getloadavg()[0]})
        print(f"  {label}: Dice {rows[-1]['dice']:.4f}, {run['wall_s']:.1f} s", flush=True)
    for label, antialias in (("(f) hand pipeline: /255, antialiased resize to 192, in-process", True),
                             ("(f') hand pipeline, resize without antialiasing, in-process", False)):
        preds, seconds, loaded = hand_pipeline(trained["adapter"], images, antialias)
        rows.append({"arm": label, "flags": "in-process", "wall_s": seconds, "infer_s": seconds, "load_s": loaded,
                     **binary_scores(preds, truths), "load": os.getloadavg()[0]})
        print(f"  {label}: Dice {rows[-1]['dice']:.4f}, {seconds:.1f} s", flush=True)
    best_hand = max(r["dice"] for r in rows[-2:])
    default = rows[2]["dice"]
    return {"fit": trained, "arms": rows, "images": len(images), "best_hand_dice": best_hand,
            "default_minus_best_hand": default - best_hand, "target_met": default >= best_hand - 0.01}


# ---- part 2: cloud scene -----------------------------------------------------------------------------------
def scene_config(out: Path, travel: bool) -> Path:
    """The quickstart recipe on the shared scene (mean / std computed from the training rows), optionally with
    the travel options; written to ``out``."""
    config = yaml.safe_load(QUICKSTART_CONFIG.read_text())
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    model.pop("mean", None)
    model.pop("std", None)
    data.update({"paths": [str(SCENE)], "file_bands": BANDS, "val_fraction": 0.25})
    if travel:
        data["augment"] = TRAVEL_AUGMENT
        model["normalization"] = "per_image"
    path = out / f"quickstart_{'travel' if travel else 'as_is'}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# configs/quickstart.yaml on {SCENE} (written by benchmarks/bench_transfer.py)\n"
                    + yaml.safe_dump(config, sort_keys=False))
    return path


def reference_classes(codes: np.ndarray) -> np.ndarray:
    """Reference codes -> class ids: 1-3 clear (0), 4 cloud (1), 0 shadow (2); anything else 255."""
    lut = np.full(256, 255, dtype=np.uint8)
    lut[[1, 2, 3]], lut[4], lut[0] = 0, 1, 2
    return lut[codes.astype(np.int64)]


def write_geotiff(path: Path, image: np.ndarray, pixel: float, top: float) -> None:
    """``(H, W, 6)`` float32 reflectance as a GeoTIFF in EPSG:32632 with ``pixel`` m pixels, bands named."""
    import rasterio
    from rasterio.transform import from_origin

    path.parent.mkdir(parents=True, exist_ok=True)
    height, width, count = image.shape
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=count, dtype="float32",
                       crs="EPSG:32632", transform=from_origin(ORIGIN[0], top, pixel, pixel)) as dst:
        dst.write(image.transpose(2, 0, 1).astype(np.float32))
        dst.descriptions = tuple(BANDS)


def scene_tests(out: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """The held-out rows as test GeoTIFFs and their truths (see the module docstring)."""
    import torch
    import torch.nn.functional as F

    scene = np.load(SCENE)
    img, truth = scene["img"].astype(np.float32), reference_classes(scene["msk"].reshape(scene["msk"].shape[:2]))
    rows = slice(img.shape[0] - HELD_OUT_ROWS, img.shape[0])
    held, held_truth = img[rows], truth[rows]
    top = ORIGIN[1] - 10.0 * rows.start
    gains = np.asarray(GAINS, dtype=np.float32)
    h3, w3 = held.shape[0] // 3, held.shape[1] // 3
    coarse = held[: 3 * h3, : 3 * w3].reshape(h3, 3, w3, 3, 6).mean((1, 3)) * gains + OFFSET
    blocks = held_truth[: 3 * h3, : 3 * w3].reshape(h3, 3, w3, 3).transpose(0, 2, 1, 3).reshape(h3, w3, 9)
    votes = np.stack([(blocks == c).sum(-1) for c in range(3)], -1)
    coarse_truth = np.where(votes.sum(-1) > 0, votes.argmax(-1), 255).astype(np.uint8)
    back = F.interpolate(torch.from_numpy(coarse.transpose(2, 0, 1).copy())[None], scale_factor=3,
                         mode="bilinear", align_corners=False)[0].numpy().transpose(1, 2, 0)
    tests = {
        "(i) held-out rows, 10 m": (out / "test" / "s2_10m.tif", held, 10.0, held_truth),
        "(i') 10 m, band gains + offset": (out / "test" / "s2_10m_gains.tif", held * gains + OFFSET, 10.0,
                                           held_truth),
        "(ii) 3x3-averaged copy, 30 m, gains + offset": (out / "test" / "s2_30m.tif", coarse, 30.0, coarse_truth),
        "(iii) (ii) resampled back to 10 m by the user": (out / "test" / "s2_30m_to_10m.tif", back, 10.0,
                                                          held_truth[: 3 * h3, : 3 * w3]),
    }
    for path, image, pixel, _ in tests.values():
        write_geotiff(path, image, pixel, top)
    return {name: (path, truth) for name, (path, _, _, truth) in tests.items()}


def part_cloud(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Fit the quickstart recipe as is and with the travel options; predict four test GeoTIFFs each."""
    quick = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"] if args.quick else []
    tests = scene_tests(out)
    result: dict[str, Any] = {"tests": {name: str(path) for name, (path, _) in tests.items()}, "arms": {}}
    for key, travel, label in (("A", False, "(A) quickstart recipe"),
                               ("B", True, "(B) + band_gain, gamma, haze, blur, per_image")):
        config = scene_config(out, travel)
        trained = fit(f"cloud {key}", config, out / f"fit_{key}", quick, args.reuse)
        rows = []
        for t, (name, (path, truth)) in enumerate(tests.items()):
            for flags in ([], ["--tta", "d4"]):
                output = out / f"infer_{key}_{t}_{'d4' if flags else 'default'}"
                run = infer(trained["adapter"], output, ["--input", str(path)], flags)
                pred = read_mask(output / path.name)
                noted = [w["reason"] for w in run["warnings"] if "pixel size" in w["reason"]]
                rows.append({"model": label, "test": name, **run, **multiclass_scores(truth, pred),
                             "pixel_size_note": noted or None, "load": os.getloadavg()[0]})
                print(f"  {label} {name} {run['flags']}: kappa {rows[-1]['kappa']:.3f}, "
                      f"note {'yes' if noted else 'no'}", flush=True)
        result["arms"][key] = {"label": label, "config": str(config), "fit": trained, "rows": rows}
    return result


# ---- part 3: LEVIR-CD ----------------------------------------------------------------------------------------
def part_levir(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Fit the LEVIR-CD recipe; predict the held-out ``test_*`` pairs with ``--input-a`` / ``--input-b``."""
    from PIL import Image

    quick = ["--trainer.max_steps", "3"] if args.quick else []
    trained = fit("levir", LEVIR_CONFIG, out / "fit", quick, args.reuse)
    names = sorted(p.name for p in (LEVIR / "A").glob("test_*.png"))
    for side in ("A", "B"):  # symlinks to the held-out pairs only (the data are never copied)
        folder = out / "test" / side
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).symlink_to(LEVIR / side / name)
    truths = [np.asarray(Image.open(LEVIR / "label" / name).convert("L")) > 127 for name in names]
    inputs = ["--input-a", str(out / "test" / "A"), "--input-b", str(out / "test" / "B")]
    rows = []
    for key, label, flags in (("before", "before: --scale 1", ["--scale", "1"]),
                              ("default", "default flags (as trained)", []),
                              ("d4", "default + --tta d4", ["--tta", "d4"])):
        run = infer(trained["adapter"], out / f"infer_{key}", inputs, flags)
        preds = [read_mask(out / f"infer_{key}" / name) for name in names]
        rows.append({"arm": label, **run, **binary_scores(preds, truths), "load": os.getloadavg()[0]})
        print(f"  {label}: F1 {rows[-1]['dice']:.3f}, {run['wall_s']:.1f} s", flush=True)
    return {"fit": trained, "arms": rows, "pairs": len(names)}


# ---- report ------------------------------------------------------------------------------------------------
def predict_seconds(row: dict[str, Any]) -> float:
    """Seconds spent predicting: ``vadapt infer``'s run less its model loading (report.json), or the whole
    in-process pipeline."""
    if row.get("load_s") is None:
        return float(row["infer_s"] or 0.0)
    return float(row["infer_s"]) - float(row["load_s"])


def tables(results: dict[str, Any]) -> str:
    """Markdown tables of every part in ``results``."""
    lines: list[str] = []
    if "kvasir" in results:
        k = results["kvasir"]
        lines += [f"Kvasir-SEG ({k['images']} validation images at 352 px; fit {k['fit']['fit_s']:.0f} s)", "",
                  "| arm | polyp Dice (pooled) | Dice (per-image mean) | IoU | predicted polyp share (truth "
                  f"{k['arms'][0]['share_true']:.3f}) | process s | predict s | load avg |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in k["arms"]:
            lines.append(f"| {r['arm']} | {r['dice']:.3f} | {r['dice_per_image_mean']:.3f} | {r['iou']:.3f} | "
                         f"{r['share_pred']:.3f} | {r['wall_s']:.1f} | {predict_seconds(r):.1f} | {r['load']:.1f} |")
        lines += ["", f"default minus best hand pipeline: {k['default_minus_best_hand']:+.4f} Dice "
                  f"(target within 0.01: {'met' if k['target_met'] else 'NOT met'})", ""]
    if "cloud" in results:
        lines += ["Cloud scene (held-out bottom 128 rows)", "",
                  "| model | test input | flags | kappa | mIoU | IoU cloud | IoU shadow | shadow share pred / true | "
                  "pixel-size note | process s | predict s |", "|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|"]
        for arm in results["cloud"]["arms"].values():
            for r in arm["rows"]:
                lines.append(f"| {r['model']} | {r['test']} | {r['flags']} | {r['kappa']:.3f} | {r['miou']:.3f} | "
                             f"{r['iou_cloud']:.3f} | {r['iou_cloud_shadow']:.3f} | {r['share_pred'][2]:.3f} / "
                             f"{r['share_true'][2]:.3f} | {'yes' if r['pixel_size_note'] else 'no'} | "
                             f"{r['wall_s']:.1f} | {predict_seconds(r):.1f} |")
        fits = ", ".join(f"{a['label']} {a['fit']['fit_s']:.0f} s (its own last val/miou "
                         f"{a['fit'].get('val', {}).get('val/miou', float('nan')):.3f})"
                         for a in results["cloud"]["arms"].values())
        lines += ["", f"fits: {fits}", ""]
    if "levir" in results:
        lv = results["levir"]
        lines += [f"LEVIR-CD ({lv['pairs']} test pairs, 256 px; fit {lv['fit']['fit_s']:.0f} s)", "",
                  "| arm | precision | recall | F1 | IoU | changed share pred / true | process s | predict s "
                  "| load avg |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in lv["arms"]:
            precision = "- (none predicted)" if r["precision"] is None else f"{r['precision']:.3f}"
            lines.append(f"| {r['arm']} | {precision} | {r['recall']:.3f} | {r['dice']:.3f} | "
                         f"{r['iou']:.3f} | {r['share_pred']:.3f} / {r['share_true']:.3f} | {r['wall_s']:.1f} | "
                         f"{predict_seconds(r):.1f} | {r['load']:.1f} |")
        val = lv["fit"].get("val", {})
        if val:
            lines += ["", "the fit's own last validation on the same pairs: " + ", ".join(
                f"{k} {val[k]:.3f}" for k in ("val/precision", "val/recall", "val/f1", "val/iou") if k in val)]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """CPU, cores, software versions and the load average when the run started."""
    import torch

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "load_at_start": os.getloadavg()}


def main() -> None:
    """Run the selected parts, merge them into ``OUT/results.json`` and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated among {', '.join(PARTS)}")
    parser.add_argument("--quick", action="store_true", help="smoke test (tiny budgets; numbers mean nothing)")
    parser.add_argument("--reuse", action="store_true", help="keep a trained adapter found in --out")
    parser.add_argument("--out", type=Path, default=Path("/tmp/vadapt_bench_transfer"))
    parser.add_argument("--tables-only", action="store_true", help="print the tables of OUT/results.json, run nothing")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose among {', '.join(PARTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if args.tables_only:
        print(tables({p: results[p] for p in PARTS if p in results}))
        return
    results.setdefault("runs", []).append({"machine": machine(), "parts": parts, "quick": args.quick,
                                           "reuse": args.reuse})
    runners = {"kvasir": part_kvasir, "cloud": part_cloud, "levir": part_levir}
    for part in parts:
        started = time.perf_counter()
        print(f"== {part}", flush=True)
        results[part] = {**runners[part](args, args.out / part), "part_s": time.perf_counter() - started,
                         "load_at_end": os.getloadavg()}
        results_path.write_text(json.dumps(results, indent=1))
        print(f"== {part} done in {results[part]['part_s']:.0f} s", flush=True)
    print(tables({p: results[p] for p in PARTS if p in results}))


if __name__ == "__main__":
    main()
