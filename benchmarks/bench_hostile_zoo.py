"""Hostile inputs through `vadapt infer` and the app's upload reader: is every case reported, how long does the
refusal take, and how much memory does it cost?

The zoo (made in a temporary folder): a VRT disguised as ``.tif`` reading a "secret" file through a raw band, one
reading another GeoTIFF through a SimpleSource, one fetching ``/vsicurl/http://127.0.0.1:9/``; an ``.npz`` bomb
(20000² zeros, deflated to 0.4 MB); an ``.npy`` whose header declares 10⁶ x 10⁶ px; a GeoTIFF whose header
declares 200000²; a truncated GeoTIFF; a directory named ``x.tif``; a broken symlink; a symlink loop; and three
good images with odd names (brackets, unicode, spaces), which must come out.

* ``vadapt infer`` (a fresh process, a tiny EfficientNet-Lite checkpoint): wall time, peak RSS of the process
  (``ru_maxrss`` of the child), and each file's outcome from ``report.json``.
* The app: each file through ``vadapt.app.images.load_image`` (the upload path) in one fresh process, RSS before
  and after each file (the bombs' criterion: refused at <= 1.1x the memory before the upload).

Run: ``python benchmarks/bench_hostile_zoo.py`` (~1 min on 2 cores).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np

GOOD = ("with [brackets].tif", "ünïcødé 東京.png", "a b.tif")


def make_zoo(root: Path) -> None:
    import rasterio
    from PIL import Image
    from rasterio.transform import from_origin

    zoo = root / "zoo"
    zoo.mkdir(parents=True)
    profile = dict(driver="GTiff", count=3, dtype="uint8", crs="EPSG:32633", transform=from_origin(0, 0, 10, 10))
    image = (np.random.default_rng(0).random((3, 64, 64)) * 255).astype(np.uint8)
    for name in GOOD:
        if name.endswith(".png"):
            Image.fromarray(image.transpose(1, 2, 0)).save(zoo / name)
        else:
            with rasterio.open(zoo / name, "w", height=64, width=64, **profile) as dst:
                dst.write(image)
    other = root / "server_file.tif"
    with rasterio.open(other, "w", height=32, width=32, **profile) as dst:
        dst.write(image[:, :32, :32])
    (root / "secret.txt").write_bytes(b"TOP-SECRET-" * 64)
    (zoo / "vrt_raw.tif").write_text(textwrap.dedent(f"""\
        <VRTDataset rasterXSize="32" rasterYSize="16"><VRTRasterBand dataType="Byte" band="1"
         subClass="VRTRawRasterBand"><SourceFilename relativeToVRT="0">{root / 'secret.txt'}</SourceFilename>
         <ImageOffset>0</ImageOffset><PixelOffset>1</PixelOffset><LineOffset>32</LineOffset></VRTRasterBand>
        </VRTDataset>"""))
    for name, source in (("vrt_simple.tif", other), ("vrt_url.tif", "/vsicurl/http://127.0.0.1:9/x.tif")):
        bands = "".join(f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename '
                        f'relativeToVRT="0">{source}</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource>'
                        "</VRTRasterBand>" for b in (1, 2, 3))
        (zoo / name).write_text(f'<VRTDataset rasterXSize="32" rasterYSize="32">{bands}</VRTDataset>')
    np.savez_compressed(zoo / "bomb.npz", img=np.zeros((20000, 20000), np.uint8))
    header = {"descr": "|u1", "fortran_order": False, "shape": (1_000_000, 1_000_000, 3)}
    with open(zoo / "huge_header.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 64)
    with rasterio.open(zoo / "declares_200000sq.tif", "w", height=200_000, width=200_000, tiled=True,
                       compress="deflate", **profile):
        pass  # nothing written: a few KB on disk
    whole = zoo / "a b.tif"
    (zoo / "truncated.tif").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    (zoo / "folder.tif").mkdir()
    (zoo / "broken.tif").symlink_to(root / "does_not_exist.tif")
    (zoo / "loop.tif").symlink_to(zoo / "loop.tif")
    assert zipfile.ZipFile(zoo / "bomb.npz").infolist()[0].file_size == 20000 * 20000 + 128


def make_checkpoint(root: Path) -> Path:
    import torch

    from vadapt.adapters import LoraConfig
    from vadapt.backbones import create_backbone
    from vadapt.checkpoint import save_adapter
    from vadapt.tasks import SemanticSegmentationTask

    weights = root / "backbone.pth"
    torch.save(create_backbone("efficientnet_lite0_test").model.state_dict(), weights)
    task = SemanticSegmentationTask(backbone="efficientnet_lite0_test", weights=str(weights), num_classes=2,
                                    adapter=LoraConfig(r=2), head="fpn", head_channels=16)
    return save_adapter(task, root / "seg.safetensors")


APP = """
import json, resource, sys, time
from pathlib import Path
from vadapt.app.images import load_image
from vadapt.app.limits import AppError, Limits
import psutil
proc, rows = psutil.Process(), []
for path in sorted(Path(sys.argv[1]).iterdir()):
    before = proc.memory_info().rss
    start = time.perf_counter()
    try:
        load_image(path, Limits())
        outcome = "read"
    except AppError as exc:
        outcome = "refused: " + str(exc)[:150]
    except Exception as exc:  # the app shows a generic error for these: count them as a failure of the bench
        outcome = f"UNHANDLED {type(exc).__name__}: {str(exc)[:120]}"
    rows.append((path.name, outcome, time.perf_counter() - start, before / 2**20, proc.memory_info().rss / 2**20))
print(json.dumps({"rows": rows, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_zoo(root)
        checkpoint = make_checkpoint(root)
        out = root / "out"
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "vadapt.cli", "infer", "--checkpoint", str(checkpoint),
                               "--input", str(root / "zoo"), "--output", str(out), "--quiet"],
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        report = json.loads((out / "report.json").read_text())
        print(f"## vadapt infer over the zoo: exit {proc.returncode}, {seconds:.1f} s, peak RSS {peak:.0f} MB "
              f"(load average {os.getloadavg()[0]:.2f})\n")
        print("| file | outcome |\n|---|---|")
        for name in report.get("done", []):
            print(f"| {name} | done |")
        failed = [(row["input"], row["reason"]) for row in report.get("failed", [])]
        for name, reason in failed:
            print(f"| {name} | failed: {reason[:140]} |")
        for name in report.get("ignored", []):
            print(f"| {name} | ignored |")
        listed = {*report.get("done", []), *(n for n, _ in failed), *report.get("ignored", [])}
        missing = sorted(p.name for p in (root / "zoo").iterdir() if p.name not in {Path(n).name for n in listed})
        print(f"\nnot reported: {missing or 'none'}\n")

        app = subprocess.run([sys.executable, "-c", APP, str(root / "zoo")], capture_output=True, text=True)
        result = json.loads(app.stdout.strip().splitlines()[-1])
        print(f"## the app's upload reader: peak RSS {result['peak_mb']:.0f} MB\n")
        print("| file | outcome | ms | RSS before MB | RSS after MB | after / before |\n|---|---|---:|---:|---:|---:|")
        for name, outcome, secs, before, after in result["rows"]:
            print(f"| {name} | {outcome} | {1000 * secs:.0f} | {before:.0f} | {after:.0f} | {after / before:.2f} |")


if __name__ == "__main__":
    main()
