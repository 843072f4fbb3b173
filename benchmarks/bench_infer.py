"""`vadapt infer` over folders: throughput against a naive loop, and peak memory against image size.

Model: EfficientNet-Lite0 with its real ImageNet weights (the pip package), LoRA r=8 on the pointwise
convolutions, FPN head, 2 classes, RGB. The adapter is random (speed and memory do not depend on its values).

* ``--part throughput``: a folder of ``--images`` RGB PNGs of 512×512. The naive loop is what a user writes
  by hand with the same checkpoint: for each file, open -> ``task(x).argmax`` (batch 1, adapter unmerged)
  -> save PNG. vadapt: ``vadapt infer`` with its defaults (tile 512: one tile per image, batch 1 on CPU, one
  decoding worker, LoRA merged, channels-last), with ``--batch-size 4`` and with ``--precision bf16``. Each
  run is a fresh process timed from start to exit (model loading included), the variants taking turns for
  ``--rounds`` rounds; outputs are compared with the naive loop's.
* ``--part memory``: one synthetic 3-band uint8 GeoTIFF (tiled, deflate) each of 2048², 5000² and
  10000² pixels, predicted with ``vadapt infer`` (tile 512, overlap 64). Peak memory is the largest sum of
  PSS (proportional set size: shared pages counted once) over the process and its DataLoader worker,
  sampled every 0.1 s with psutil.

Run: ``python benchmarks/bench_infer.py --part throughput`` (~6 min on 2 cores) and
``python benchmarks/bench_infer.py --part memory`` (~5 min).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NAIVE = """
import sys, time
from pathlib import Path
import numpy as np, torch
from PIL import Image
from vadapt.loading import load_task
task = load_task(sys.argv[1]).eval()
out = Path(sys.argv[3]); out.mkdir(parents=True, exist_ok=True)
with torch.no_grad():
    for path in sorted(Path(sys.argv[2]).glob("*.png")):
        image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
        x = torch.from_numpy(image).permute(2, 0, 1)[None]
        mask = task(x).argmax(1)[0].to(torch.uint8).numpy()
        Image.fromarray(mask).save(out / path.name)
"""


def make_checkpoint(folder: Path) -> Path:
    import torch

    from vadapt.adapters import LoraConfig
    from vadapt.checkpoint import save_adapter
    from vadapt.tasks import SemanticSegmentationTask

    torch.manual_seed(0)
    task = SemanticSegmentationTask(backbone="efficientnet_lite0", weights="pretrained", num_classes=2,
                                    head="fpn", adapter=LoraConfig(r=8, lora_alpha=16))
    with torch.no_grad():
        for name, p in task.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    return save_adapter(task, folder / "adapter.safetensors")


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """``(3, height, width)`` uint8: smooth fields plus noise (compressible like real imagery)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    phase = rng.uniform(0, 6, 3)
    base = np.stack([np.sin(xx / (40 + 10 * i) + phase[i]) * np.cos(yy / (55 + 7 * i)) for i in range(3)])
    noise = rng.normal(0, 0.1, base.shape).astype(np.float32)
    return np.clip((base + noise) * 80 + 128, 0, 255).astype(np.uint8)


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def throughput(images: int, rounds: int, work: Path) -> None:
    from PIL import Image

    ckpt = make_checkpoint(work)
    folder = work / "pngs"
    folder.mkdir()
    for i in range(images):
        Image.fromarray(smooth_image(512, 512, i).transpose(1, 2, 0)).save(folder / f"{i:03d}.png")
    naive = [sys.executable, "-c", NAIVE, str(ckpt), str(folder)]
    ours = [sys.executable, "-m", "vadapt.cli", "infer", "--checkpoint", str(ckpt), "--input", str(folder),
            "--quiet", "--overwrite"]
    runs = {
        "naive loop (batch 1, unmerged)": [*naive, str(work / "naive")],
        "`vadapt infer` (defaults)": [*ours, "--output", str(work / "ours")],
        "`vadapt infer --batch-size 4`": [*ours, "--output", str(work / "b4"), "--batch-size", "4"],
        "`vadapt infer --precision bf16`": [*ours, "--output", str(work / "bf16"), "--precision", "bf16"],
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):
        for name, cmd in runs.items():
            times[name].append(timed(cmd))
        print(f"round {r}: " + ", ".join(f"{n} {t[-1]:.1f} s" for n, t in times.items()), flush=True)
    agree = {out: np.mean([(np.asarray(Image.open(p)) == np.asarray(Image.open(work / out / p.name))).mean()
                           for p in sorted((work / "naive").glob("*.png"))]) for out in ("ours", "b4", "bf16")}
    naive_s = statistics.median(times["naive loop (batch 1, unmerged)"])
    print(f"\n{images} PNGs of 512×512, {rounds} rounds, median wall time per run (process start to exit)\n")
    print("| run | median s | images/s | speed-up vs naive | pixels agreeing with naive |\n|---|---|---|---|---|")
    for (name, t), out in zip(times.items(), (None, "ours", "b4", "bf16")):
        med = statistics.median(t)
        same = "-" if out is None else f"{agree[out]:.5f}"
        print(f"| {name} | {med:.1f} | {images / med:.2f} | {naive_s / med:.2f}× | {same} |")


def peak_memory(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak PSS of the process tree in MB)."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent, peak = psutil.Process(proc.pid), 0.0
    while proc.poll() is None:
        try:
            members = [parent, *parent.children(recursive=True)]
            peak = max(peak, sum(m.memory_full_info().pss for m in members) / 2**20)
        except psutil.Error:
            pass
        time.sleep(0.1)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}")
    return time.perf_counter() - start, peak


def memory(work: Path, sizes: list[int]) -> None:
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    ckpt = make_checkpoint(work)
    rows = []
    for size in sizes:
        folder = work / f"tif{size}"
        folder.mkdir()
        path = folder / f"scene_{size}.tif"
        profile = {"driver": "GTiff", "height": size, "width": size, "count": 3, "dtype": "uint8",
                   "crs": "EPSG:32633", "transform": from_origin(600_000, 5_000_000, 10, 10), "tiled": True,
                   "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
        with rasterio.open(path, "w", **profile) as dst:
            for top in range(0, size, 1024):
                n = min(1024, size - top)
                block = smooth_image(n, size, top)
                dst.write(block, window=Window(0, top, size, n))
            dst.descriptions = ("red", "green", "blue")
        cmd = [sys.executable, "-m", "vadapt.cli", "infer", "--checkpoint", str(ckpt), "--input", str(folder),
               "--output", str(work / f"out{size}"), "--quiet", "--tile", "512", "--overlap", "64"]
        seconds, peak = peak_memory(cmd)
        rows.append((size, seconds, peak))
        print(f"{size}²: {seconds:.0f} s, peak PSS {peak:.0f} MB", flush=True)
    print("\n| image | wall s | peak memory (PSS, main + worker) | vs 2048² |\n|---|---|---|---|")
    for size, seconds, peak in rows:
        print(f"| {size}×{size}×3 | {seconds:.0f} | {peak:.0f} MB | {peak / rows[0][2]:.2f}× |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("throughput", "memory"), required=True)
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 5000, 10000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.part == "throughput":
            throughput(args.images, args.rounds, Path(tmp))
        else:
            memory(Path(tmp), args.sizes)


if __name__ == "__main__":
    main()
