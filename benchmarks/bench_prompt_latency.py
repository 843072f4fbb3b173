"""Prompted inference latency: the first click on an image (encoder + decoder) vs each further click (decoder only).

``PromptableSegmentationTask.predict_with_prompts`` keeps each image's features in an ``EmbeddingCache``, so after
the first click only the prompt encoder and mask decoder run. This measures, per backbone (real architectures,
random weights: no SAM weights can be downloaded here; timing does not depend on the values):

* first click: a new image (cache cleared), one positive point -> mask;
* next click: the same image, a growing list of points (2, 3, ... clicks) -> mask, ``--clicks`` times;

and reports medians over ``--images`` images and the ratio first / next (target >= 10x on ViT-B-sized encoders).

Run: ``python benchmarks/bench_prompt_latency.py`` (default backbones ``sam_vit_b`` at 1024 px and
``sam2.1_hiera_b+`` at 1024 px; about 2 minutes on a 2-core CPU) or ``--backbones sam_test --size 64`` (smoke).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch


def measure(backbone: str, size: int, images: int, clicks: int) -> dict[str, float]:
    from vadapt.tasks import PromptableSegmentationTask

    torch.manual_seed(0)
    task = PromptableSegmentationTask(backbone=backbone, weights=None, img_size=size, mean=[0.5] * 3,
                                      std=[0.25] * 3).eval()
    generator = torch.Generator().manual_seed(0)
    first, nxt = [], []
    for _ in range(images):
        image = torch.rand(3, size, size, generator=generator)
        points = torch.rand(clicks + 1, 2, generator=generator) * (size - 1)
        labels = torch.randint(0, 2, (clicks + 1,), generator=generator)
        labels[0] = 1
        task.cache.clear()
        start = time.perf_counter()
        task.predict_with_prompts(image, points[:1], labels[:1])
        first.append(time.perf_counter() - start)
        for n in range(2, clicks + 2):
            start = time.perf_counter()
            task.predict_with_prompts(image, points[:n], labels[:n])
            nxt.append(time.perf_counter() - start)
    first_ms, next_ms = 1000 * statistics.median(first), 1000 * statistics.median(nxt)
    return {"backbone": backbone, "size": size, "first_click_ms": first_ms, "next_click_ms": next_ms,
            "ratio": first_ms / next_ms, "images": images, "clicks_per_image": clicks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", default="sam_vit_b,sam2.1_hiera_b+")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {args.threads} threads")
    print("| backbone | input | first click (ms) | next click (ms) | first / next |")
    print("|---|---|---:|---:|---:|")
    rows = []
    with torch.inference_mode():
        for name in args.backbones.split(","):
            row = measure(name, args.size, args.images, args.clicks)
            rows.append(row)
            print(f"| {name} | {args.size} px | {row['first_click_ms']:,.0f} | {row['next_click_ms']:,.1f} | "
                  f"{row['ratio']:,.0f}x |", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
