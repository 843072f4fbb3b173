"""Prompt tab latency: the first click on a new image (image encoder + decoder) vs the next clicks (decoder only,
cached image embedding), through the app's own code path (``Demo.prompt_view``: model, then the picture).

ViT-B-sized encoder: the ``sam_vit_b`` architecture (89.7 M encoder parameters) with random weights (no download;
the speed does not depend on the values), the official 1024 px input by default, SAM's full-size prompt encoder
and mask decoder, LoRA r=8 on qkv (unmerged, as a trained adapter is served).

    python benchmarks/bench_app_prompt.py [--img-size 1024] [--clicks 7] [--images 2] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=1024)
    parser.add_argument("--clicks", type=int, default=7, help="clicks per image after the first")
    parser.add_argument("--images", type=int, default=2, help="new images (each: one first click + --clicks)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from vadapt.adapters import LoraConfig
    from vadapt.app import Limits
    from vadapt.app.checkpoints import CheckpointInfo
    from vadapt.app.prompts import MODES
    from vadapt.app.service import Demo
    from vadapt.tasks import PromptableSegmentationTask

    torch.manual_seed(0)
    start = time.perf_counter()
    task = PromptableSegmentationTask(backbone="sam_vit_b", weights=None, img_size=args.img_size,
                                      adapter=LoraConfig(r=8)).eval()
    build_s = time.perf_counter() - start
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "bench_app_prompt"
    info = CheckpointInfo(work / "sam_vit_b.safetensors", "sam_vit_b (random weights)", "PromptableSegmentationTask",
                          "sam_vit_b", 0, frozenset({"prompt"}), ("red", "green", "blue"), ("background", "object"))
    demo = Demo([info], Limits(), work)
    demo.models._items[(info.path, "task")] = task  # the loaded model, as the app's cache holds it

    rng = np.random.default_rng(0)
    first, next_clicks, model_first, model_next = [], [], [], []
    for n in range(args.images):
        work.mkdir(parents=True, exist_ok=True)
        picture = work / f"image{n}.png"
        Image.fromarray(rng.integers(0, 255, (args.img_size, args.img_size, 3), dtype=np.uint8)).save(picture)
        image_id, _ = demo.upload(str(picture))
        state = demo.prompt_start(image_id)
        for click in range(args.clicks + 1):
            x, y = rng.uniform(0, args.img_size, size=2)
            state.click(x, y, MODES[click % 2])
            start = time.perf_counter()
            _, text = demo.prompt_view(state, info.label)
            seconds = time.perf_counter() - start
            (first if click == 0 else next_clicks).append(seconds)
            model_ms = float(re.search(r"(\d+) ms", text).group(1))  # the model's share, as the page reports it
            (model_first if click == 0 else model_next).append(model_ms / 1000)
            assert ("image encoded" in text) == (click == 0), text
    print(f"sam_vit_b (random weights, LoRA r=8) at {args.img_size} px, {torch.get_num_threads()} threads, "
          f"model built in {build_s:.1f} s")
    print(f"first click on a new image (encoder + decoder + picture): median {statistics.median(first):.3f} s "
          f"over {len(first)} images ({', '.join(f'{s:.3f}' for s in first)})")
    print(f"next clicks (cached embedding: decoder + picture): median {statistics.median(next_clicks) * 1000:.1f} ms "
          f"over {len(next_clicks)} clicks (min {min(next_clicks) * 1000:.1f}, max {max(next_clicks) * 1000:.1f})")
    print(f"model only (the rest is drawing the picture): first {statistics.median(model_first):.3f} s, "
          f"next {statistics.median(model_next) * 1000:.1f} ms")
    ratio = statistics.median(first) / statistics.median(next_clicks)
    print(f"speed-up of a click once the image is encoded: {ratio:.0f}x")


if __name__ == "__main__":
    main()
