"""Inference latency of LoRA (unmerged / merged) vs the plain backbone: vadapt vs plain timm + peft.

ViT-B/16 (timm ``vit_base_patch16_224`` architecture, random init), batch 1, 512x512, float32, CPU,
``torch.inference_mode()``. Six variants live in one process:

* vadapt: ``create_backbone(..., img_size=512)`` (no adapter); the same + ``apply_adapter(LoraConfig(r=8,
  lora_alpha=16, target_modules=["qkv"]))`` (unmerged); the same + ``merge_adapter`` (merged). Called as
  ``backbone(x)`` (all default ``out_indices`` maps).
* plain: ``timm.create_model(..., num_classes=0)``; + ``peft.inject_adapter_in_model`` (unmerged); + merge:
  every peft ``BaseTunerLayer`` is ``merge()``-d and replaced by its ``base_layer`` (what
  ``LoraModel.merge_and_unload`` does). Called as ``model.forward_features(x)``.

LoRA ``B`` starts non-zero (small random values, the same in every LoRA variant) so the merged outputs can be
checked against the unmerged ones; zeros would time the same.

After a warm-up, each round runs every variant once, in a shuffled order, and records its wall time; the
report gives the median per variant, the ratio of medians to the same implementation's plain backbone, and
the median and interquartile range of the per-round ratios (paired, which cancels slow drift of the
machine).

Run: ``python benchmarks/bench_inference.py`` (``--rounds`` to change the number of timed rounds).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

ARCH = "vit_base_patch16_224"


def _init_lora_b(model, seed: int = 0) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def _plain_merge(model) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    tuned = [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, module in tuned:
        module.merge()
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, module.get_base_layer())


def build_variants(img_size: int) -> dict:
    import peft
    import timm
    import torch

    from vadapt.adapters import LoraConfig, apply_adapter, merge_adapter
    from vadapt.backbones import create_backbone

    variants = {}

    # vadapt
    def vadapt_backbone():
        torch.manual_seed(0)
        return create_backbone(ARCH, img_size=img_size).eval()

    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["qkv"])
    base = vadapt_backbone()
    unmerged = apply_adapter(vadapt_backbone(), cfg)
    _init_lora_b(unmerged)
    merged = apply_adapter(vadapt_backbone(), cfg)
    _init_lora_b(merged)
    merge_adapter(merged, cfg)
    variants[("vadapt", "backbone")] = base
    variants[("vadapt", "lora unmerged")] = unmerged
    variants[("vadapt", "lora merged")] = merged

    # plain timm + peft
    def plain_model():
        torch.manual_seed(0)
        m = timm.create_model(ARCH, pretrained=False, img_size=img_size, num_classes=0).eval()
        for p in m.parameters():
            p.requires_grad_(False)
        return m

    def plain_lora():
        pcfg = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["qkv"], bias="none")
        m = peft.inject_adapter_in_model(pcfg, plain_model()).eval()
        _init_lora_b(m)
        return m

    pbase = plain_model()
    punmerged = plain_lora()
    pmerged = plain_lora()
    _plain_merge(pmerged)

    class Features(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model.forward_features(x)

    variants[("plain", "backbone")] = Features(pbase)
    variants[("plain", "lora unmerged")] = Features(punmerged)
    variants[("plain", "lora merged")] = Features(pmerged)
    return variants


def check(variants: dict, img_size: int) -> list[str]:
    """Merged == unmerged (same LoRA init), and the merged models hold no peft layers."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    notes = []
    x = torch.randn(1, 3, img_size, img_size)
    with torch.inference_mode():
        for impl in ("vadapt", "plain"):
            a = variants[(impl, "lora unmerged")](x)
            b = variants[(impl, "lora merged")](x)
            a = a[-1] if isinstance(a, list) else a
            b = b[-1] if isinstance(b, list) else b
            err = (a - b).abs().max().item()
            left = sum(isinstance(m, BaseTunerLayer) for m in variants[(impl, "lora merged")].modules())
            notes.append(f"{impl}: max |merged - unmerged| = {err:.2e}, peft layers left after merge = {left}")
            if err > 1e-3 or left:
                raise AssertionError(notes[-1])
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="timed rounds (each runs every variant once)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs of each variant first")
    parser.add_argument("--img-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    variants = build_variants(args.img_size)
    notes = check(variants, args.img_size)
    for n in notes:
        print(n, file=sys.stderr)

    x = torch.randn(1, 3, args.img_size, args.img_size)
    keys = list(variants)
    times: dict = {k: [] for k in keys}
    rng = random.Random(0)
    with torch.inference_mode():
        for _ in range(args.warmup):
            for k in keys:
                variants[k](x)
        start = time.perf_counter()
        for r in range(args.rounds):
            order = keys[:]
            rng.shuffle(order)
            for k in order:
                t0 = time.perf_counter()
                variants[k](x)
                times[k].append(time.perf_counter() - t0)
            if (r + 1) % 5 == 0:
                print(f"[{time.perf_counter() - start:6.0f}s] round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)

    print(
        f"\nViT-B/16 ({ARCH}), batch 1, {args.img_size}x{args.img_size}, float32, CPU, {args.threads} threads, "
        f"torch {torch.__version__}, inference_mode, {args.rounds} rounds (shuffled round-robin) after "
        f"{args.warmup} warm-up runs each\n"
    )
    print("| impl | variant | median ms | min ms | ratio to backbone (medians) | paired ratio, median | "
          "paired ratio, 25-75 % |")
    print("|---|---|---:|---:|---:|---:|---|")
    for k in keys:
        impl, name = k
        ref = times[(impl, "backbone")]
        med = statistics.median(times[k]) * 1e3
        ratio = statistics.median(times[k]) / statistics.median(ref)
        ratios = [t / b for t, b in zip(times[k], ref)]
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        print(f"| {impl} | {name} | {med:.1f} | {min(times[k]) * 1e3:.1f} | {ratio:.3f} | "
              f"{statistics.median(ratios):.3f} | {q1:.3f}-{q3:.3f} |")
    print()
    for n in notes:
        print(f"- check: {n}")


if __name__ == "__main__":
    main()
