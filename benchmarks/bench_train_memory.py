"""Training-step memory and time: vadapt vs plain timm + peft, ViT-B/16 at 512x512 on CPU.

One training step = forward, a 1x1-conv head on the last feature map + cross-entropy against random labels,
backward, AdamW step. Every (mode, impl) pair runs in its own fresh Python process (this script re-invoked
with ``--worker``), so allocator state, caches and optimizer state never leak from one measurement to the
next.

Memory method (Linux): after the model, head, optimizer and the input batch exist, the worker runs
``gc.collect()``, reads the current RSS (``VmRSS`` in ``/proc/self/status``) as the *baseline*, and resets the
kernel's peak-RSS counter by writing ``5`` to ``/proc/self/clear_refs``. It then runs ``1 + --steps`` training
steps and reads the peak (``VmHWM``, the counter behind ``ru_maxrss``) after the first step and after the
last. ``added = peak over all steps - baseline``: activations saved for backward, gradients, AdamW's two
state buffers, temporaries, and whatever the C allocator keeps. AdamW creates its state lazily inside the
first ``step()``, after backward has freed the activations, so only the later steps hold state and
activations at once: the first-step peak alone (also reported) undercounts full fine-tuning. If
``clear_refs`` is not writable the worker falls back to the lifetime ``ru_maxrss`` (and says so).

``--malloc-mmap-threshold BYTES`` makes each worker call glibc ``mallopt(M_MMAP_THRESHOLD, BYTES)`` before
importing torch. That fixes the threshold (glibc otherwise raises it dynamically up to 32 MiB after large
frees), so large tensors are ``mmap``-ed and returned to the OS when freed instead of being kept, fragmented,
in malloc's heap; it separates what the step needs from what the allocator retains.

Time: the first step is the warm-up (it also allocates AdamW state); the median wall time of the next
``--steps`` steps is reported.

Modes: ``full`` (all backbone parameters train), ``lora`` (r=8, alpha=16, dropout 0, on ``qkv``),
``lora_ckpt`` (the same + per-block gradient checkpointing), ``bottleneck`` (AdaptFormer-style parallel
adapter on each block's ``mlp``; vadapt ``BottleneckConfig()`` defaults: dim 64, scale 0.1, dropout 0.1;
the plain implementation is a hand-written module with the same shape and placement) and ``linear``
(backbone frozen, only the head trains).

Implementations: ``plain`` = ``timm.create_model(..., num_classes=0)`` + ``peft.inject_adapter_in_model`` +
``model.set_grad_checkpointing(True)``, features from ``model.forward_features``; ``vadapt`` =
``create_backbone`` + ``apply_adapter`` (+ ``backbone.grad_checkpointing = True``), features =
``backbone(x)[-1]``.

Run: ``python benchmarks/bench_train_memory.py`` (prints a markdown table); ``--help`` for options.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODES = ("full", "lora", "lora_ckpt", "bottleneck", "linear")
IMPLS = ("plain", "vadapt")
ARCH = "vit_base_patch16_224"
NUM_CLASSES = 16


# ---- memory probes ---------------------------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_mb() -> float:
    try:
        return _status_kb("VmHWM") / 1024
    except (OSError, RuntimeError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---- models ----------------------------------------------------------------------------------------------------


def _plain_bottleneck(model, dim: int = 64, scale: float = 0.1, dropout: float = 0.1) -> None:
    """AdaptFormer-style parallel adapter around each block's ``mlp`` (same as vadapt's defaults)."""
    import math

    from torch import nn

    class Parallel(nn.Module):
        def __init__(self, mlp: nn.Module, width: int) -> None:
            super().__init__()
            self.mlp = mlp
            self.down = nn.Linear(width, dim)
            self.act = nn.ReLU()
            self.drop = nn.Dropout(dropout)
            self.up = nn.Linear(dim, width)
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

        def forward(self, x):
            return self.mlp(x) + scale * self.up(self.drop(self.act(self.down(x))))

    for block in model.blocks:
        block.mlp = Parallel(block.mlp, model.embed_dim)


def build(impl: str, mode: str, img_size: int):
    """Return ``(model, features_fn, embed_dim)``; ``features_fn(x)`` gives a ``(B, C, h, w)`` map."""
    if impl == "plain":
        import peft
        import timm

        model = timm.create_model(ARCH, pretrained=False, img_size=img_size, num_classes=0)
        for p in model.parameters():
            p.requires_grad_(mode == "full")
        if mode in ("lora", "lora_ckpt"):
            cfg = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["qkv"], bias="none")
            model = peft.inject_adapter_in_model(cfg, model)
        elif mode == "bottleneck":
            _plain_bottleneck(model)
        if mode == "lora_ckpt":
            model.set_grad_checkpointing(True)
        prefix = model.num_prefix_tokens

        def features(x):
            tokens = model.forward_features(x)[:, prefix:]
            b, n, c = tokens.shape
            side = int(round(n**0.5))
            return tokens.transpose(1, 2).reshape(b, c, side, side)

        return model, features, model.embed_dim

    from vadapt.adapters import BottleneckConfig, LoraConfig, apply_adapter
    from vadapt.backbones import create_backbone

    backbone = create_backbone(ARCH, img_size=img_size)
    if mode == "full":
        for p in backbone.parameters():
            p.requires_grad_(True)
    elif mode in ("lora", "lora_ckpt"):
        apply_adapter(backbone, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["qkv"]))
    elif mode == "bottleneck":
        apply_adapter(backbone, BottleneckConfig())
    if mode == "lora_ckpt":
        backbone.grad_checkpointing = True

    def features(x):
        return backbone(x)[-1]

    return backbone, features, backbone.out_channels[-1]


def set_mmap_threshold(nbytes: int) -> bool:
    """glibc ``mallopt(M_MMAP_THRESHOLD, nbytes)``; False where that is not available."""
    import ctypes

    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, int(nbytes)))  # M_MMAP_THRESHOLD = -3
    except (OSError, AttributeError):
        return False


def worker(args: argparse.Namespace) -> dict:
    import gc

    mallopt_ok = set_mmap_threshold(args.malloc_mmap_threshold) if args.malloc_mmap_threshold else None
    import torch
    from torch import nn

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, features, width = build(args.impl, args.mode, args.img_size)
    model.train()
    head = nn.Conv2d(width, NUM_CLASSES, 1)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    optimizer = torch.optim.AdamW(trainable + list(head.parameters()), lr=1e-4)
    side = args.img_size // 16
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    y = torch.randint(0, NUM_CLASSES, (args.batch, side, side))

    missing_grads = []

    def step() -> None:
        logits = head(features(x))
        loss = nn.functional.cross_entropy(logits, y)
        loss.backward()
        missing_grads.append(sum(p.grad is None for p in trainable))  # sanity: every trainable param got a grad
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    gc.collect()
    baseline = rss_mb()
    resettable = reset_peak()
    if not resettable:
        print("warning: /proc/self/clear_refs not writable; peak is the lifetime ru_maxrss", file=sys.stderr)
    t0 = time.perf_counter()
    step()
    first_time = time.perf_counter() - t0
    first_peak = peak_mb()

    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    run_peak = peak_mb()
    return {
        "impl": args.impl,
        "mode": args.mode,
        "trainable_params": n_trainable + sum(p.numel() for p in head.parameters()),
        "baseline_mb": baseline,
        "peak_mb": run_peak,
        "added_mb": run_peak - baseline,
        "first_step_added_mb": first_peak - baseline,
        "params_without_grad": max(missing_grads),
        "mmap_threshold": args.malloc_mmap_threshold,
        "mallopt_ok": mallopt_ok,
        "first_step_s": first_time,
        "step_s": statistics.median(times),
        "step_times_s": times,
        "peak_reset": resettable,
        "torch": torch.__version__,
    }


# ---- driver ----------------------------------------------------------------------------------------------------


def run_one(impl: str, mode: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable, os.path.abspath(__file__), "--worker", "--impl", impl, "--mode", mode,
        "--img-size", str(args.img_size), "--batch", str(args.batch), "--steps", str(args.steps),
        "--threads", str(args.threads), "--malloc-mmap-threshold", str(args.malloc_mmap_threshold),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {impl}/{mode} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: list[dict], modes: list[str], impls: list[str]) -> str:
    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    groups = {(m, i): [r for r in results if r["mode"] == m and r["impl"] == i] for m in modes for i in impls}
    multi = max(len(g) for g in groups.values()) > 1
    lines = [
        "| mode | impl | trainable params | added MB | ratio to full FT (same impl) | first-step added MB | "
        "step time s |" + (" added MB per run |" if multi else ""),
        "|---|---|---:|---:|---:|---:|---:|" + ("---|" if multi else ""),
    ]
    for m in modes:
        for i in impls:
            rows = groups[(m, i)]
            if not rows:
                continue
            added = med(rows, "added_mb")
            full = groups.get(("full", i))
            ratio = f"{added / med(full, 'added_mb'):.2f}x" if full else "n/a"
            line = (
                f"| {m} | {i} | {rows[0]['trainable_params']:,} | {added:.0f} | {ratio} | "
                f"{med(rows, 'first_step_added_mb'):.0f} | {med(rows, 'step_s'):.2f} |"
            )
            if multi:
                line += " " + ", ".join(f"{r['added_mb']:.0f}" for r in rows) + " |"
            lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1, help="fresh processes per (mode, impl) (default 1)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the first (default 2)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    parser.add_argument("--img-size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each worker")
    parser.add_argument("--malloc-mmap-threshold", type=int, default=0, metavar="BYTES",
                        help="workers call glibc mallopt(M_MMAP_THRESHOLD, BYTES) first (default 0: leave glibc's "
                        "dynamic threshold alone)")
    parser.add_argument("--json", help="also write all raw results to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(args)))
        return

    results = []
    start = time.perf_counter()
    load_before = os.getloadavg()
    for rep in range(args.repeats):
        for mode in args.modes:
            for impl in args.impls:  # interleaved, so slow drift hits both implementations alike
                r = run_one(impl, mode, args)
                r["repeat"] = rep
                results.append(r)
                print(
                    f"[{time.perf_counter() - start:6.0f}s] rep {rep} {mode:10s} {impl:6s} "
                    f"baseline {r['baseline_mb']:.0f} MB, added {r['added_mb']:.0f} MB "
                    f"(first step {r['first_step_added_mb']:.0f} MB), step {r['step_s']:.2f} s, "
                    f"params without grad {r['params_without_grad']}",
                    file=sys.stderr, flush=True,
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    bad = [r for r in results if r["params_without_grad"]]
    if bad:
        print(f"WARNING: trainable parameters without a gradient in {[(r['mode'], r['impl']) for r in bad]}")
    allocator = (
        f"glibc mallopt(M_MMAP_THRESHOLD, {args.malloc_mmap_threshold})" if args.malloc_mmap_threshold
        else "default glibc malloc"
    )
    print(
        f"\nViT-B/16 ({ARCH}), {args.img_size}x{args.img_size}, batch {args.batch}, float32, CPU, "
        f"{args.threads} threads, torch {results[0]['torch']}, {allocator}; {args.repeats} fresh process(es) "
        f"per row; added MB = peak RSS over {args.steps + 1} steps - RSS after model + optimizer creation; "
        f"step time = median of the {args.steps} steps after the first; "
        f"{time.perf_counter() - start:.0f} s total; load average before / after "
        f"{load_before[0]:.2f} / {os.getloadavg()[0]:.2f}\n"
    )
    print(table(results, args.modes, args.impls))


if __name__ == "__main__":
    main()
