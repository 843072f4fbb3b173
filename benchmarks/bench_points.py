"""Point-cloud classification on a fixed CPU budget: Point-MAE pretrained frozen + adapters vs scratch vs linear probe.

One architecture for every arm: the real-size Point-MAE transformer (``point_mae``: 384-d, 12 blocks, 6 heads,
21,825,024 encoder parameters) with the official classification head (``[cls, max]`` -> 256 -> 256 -> classes,
or ``[cls, prompt, max]`` for IDPT), through :class:`vadapt.tasks.PointClassificationTask`.

Data: the synthetic set of ``vadapt make-shapes`` (all 12 classes, incl. partial views and composed shapes),
written to ``<workdir>/shapes`` with ``--per-class`` samples per class (20% to the ``test`` split), each file
``2 * --points`` surface points; every cloud is subsampled at random to ``--points`` points (default 512) and
unit-sphere normalised by :class:`vadapt.data.points.PointFolderDataModule`. Training uses the whole ``train``
split (``val_fraction=0``) with Point-MAE's scale-and-translate augmentation; the held-out ``test`` split (same
seeded points for every arm, no augmentation, no test-time voting) gives overall accuracy (OA, micro) and mean
class accuracy (mAcc, the mean of the per-class recalls).

Budget (the default, sized to finish in about 25-30 min on a shared 2-core CPU): 12 classes x 40 samples (384
train, 96 test clouds), 512 points, ``G = --num-group`` 32 patches of k = 32 points (the official setting is
1024 points and G = 64, i.e. the same patch overlap; the weights do not depend on G), batch 32 (12 steps an
epoch). Pretraining: ``--pretrain-epochs`` 8 (96 steps) of Point-MAE masked-patch reconstruction
(:class:`vadapt.tasks.point_pretrain.PointMAEPretrainTask`, official recipe: mask ratio 0.6, 4-block decoder,
Chamfer-L2, AdamW lr 1e-3 with warm-up + cosine; but G = ``--num-group``, which ``vadapt pretrain-points`` does not
expose) on the train split only (labels unused). Every arm: ``--epochs`` 4 (48 steps), AdamW lr ``--lr`` 1e-3,
weight decay 0.05, 5 warm-up steps then linear decay, seed ``--seed``. This is a tiny fraction of the papers'
budgets (Point-MAE pretrains 300 epochs on ShapeNet; fine-tuning runs 300 epochs): read the numbers as
"what each recipe reaches in a few minutes", not as paper reproductions.

Arms (``--arms``, default all but ``full_ft``):

* ``scratch``: random init, no adapter, ``freeze_backbone=False`` (every parameter trains): full training.
* ``linear``: the pretrained encoder frozen, no adapter: only the head trains (linear probing with Point-MAE's
  MLP head; the backbone runs in eval mode).
* ``linear_random``: the same on a *random-init* frozen encoder (control: what the head alone gets without
  pretraining).
* ``lora``: pretrained frozen + ``LoraConfig(r=8, lora_alpha=16)`` (the quickstart adapter) + head.
* ``idpt``: pretrained frozen + ``IDPTConfig()`` (official defaults: DGCNN prompt before the last block, k = 20,
  trains the prompt module, ``cls_token``/``cls_pos`` and the head).
* ``point_peft``: pretrained frozen + ``PointPEFTConfig()`` (official defaults, backbone biases frozen) + head; its
  point-prior bank is filled before training with the frozen pretrained features of every training cloud
  (un-augmented), as the official cache prompt (``PointClassificationTask`` does not fill it itself).
* ``full_ft`` (optional): full fine-tuning from the pretrained encoder (every parameter trains).

Memory: every arm (and the pretraining) runs in its own fresh Python process (this script re-invoked with
``--worker ARM``). After the task, its adapter (and Point-PEFT's bank) and the datamodule exist, the worker runs
``gc.collect()``, reads RSS (``VmRSS``) as the baseline and resets the kernel's peak-RSS counter (``VmHWM``, by
writing ``5`` to ``/proc/self/clear_refs``, as ``bench_train_memory.py``), then trains with Lightning's
``Trainer.fit`` and reads the peak. ``train MB`` = peak during fit - baseline: activations kept for backward,
gradients, AdamW state and what glibc's allocator retains (default malloc), i.e. what training adds on top of
holding the model. The ratio is to the ``scratch`` arm of the same run (full training = full fine-tuning memory:
same architecture, every parameter trainable). Peak RSS (absolute) is also reported.

Trainable parameters: ``requires_grad`` parameters of the task (backbone + adapter + head) for our class count,
and for 15 classes with G = 128 (the official ScanObjectNN setting) built on the meta device, beside the papers'
official counts (IDPT 1,696,783; Point-PEFT 773,017 as registered; see ``tests/test_idpt.py`` and
``tests/test_point_peft.py`` for how ours relate to them).

Run (repository root): ``/work/venv/bin/python benchmarks/bench_points.py`` (default budget, all default arms;
see BENCHMARKS.md for the measured wall time), ``--quick`` (smoke test: 5 clouds a class, 1 epoch each; its
numbers mean nothing), ``--pretrained FILE`` to reuse a pretrain file, ``--arms linear,lora`` for a subset,
``--jobs 2 --threads 1`` to run two workers at once with one thread each (the arms that need no pretrained encoder
start beside the pretraining; memory is per process and unaffected, wall times then include the other worker's
share of the CPU). Each worker's log (one line per epoch: mean train loss, elapsed s) is ``<workdir>/<arm>.log``.
Prints a markdown table; writes every number as JSON to ``--output`` (default ``runs/bench_points.json``) and data,
pretrain file and logs under ``--workdir`` (default ``runs/bench_points``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUM_SHAPE_CLASSES = 12  # every class of vadapt make-shapes

ARMS: dict[str, dict] = {
    "scratch": {"label": "scratch (random init, full training)", "pretrained": False, "adapter": None, "freeze": False},
    "linear": {"label": "linear probe (pretrained, frozen)", "pretrained": True, "adapter": None, "freeze": True},
    "linear_random": {
        "label": "linear probe (random init, frozen)",
        "pretrained": False,
        "adapter": None,
        "freeze": True,
    },
    "lora": {"label": "pretrained frozen + LoRA r=8", "pretrained": True, "adapter": "lora", "freeze": True},
    "idpt": {"label": "pretrained frozen + IDPT", "pretrained": True, "adapter": "idpt", "freeze": True},
    "point_peft": {
        "label": "pretrained frozen + Point-PEFT",
        "pretrained": True,
        "adapter": "point_peft",
        "freeze": True,
    },
    "full_ft": {"label": "full fine-tune (pretrained)", "pretrained": True, "adapter": None, "freeze": False},
}
DEFAULT_ARMS = "scratch,linear,linear_random,lora,idpt,point_peft"
#: the papers' trainable counts (15 classes, ScanObjectNN)
OFFICIAL = {"idpt": 1_696_783, "point_peft": 773_017}


# ---- memory probes (as bench_train_memory.py) -------------------------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


def peak_mb() -> float:
    try:
        return _status_kb("VmHWM") / 1024
    except (OSError, RuntimeError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ---- building blocks ---------------------------------------------------------------------------------------------


def make_adapter(kind: str | None):
    """The adapter config (a dataclass) or ``None``."""
    from vadapt.adapters import IDPTConfig, LoraConfig, PointPEFTConfig

    if kind is None:
        return None
    return {"lora": lambda: LoraConfig(r=8, lora_alpha=16), "idpt": IDPTConfig, "point_peft": PointPEFTConfig}[kind]()


def make_datamodule(args, augment: bool = True):
    from vadapt.data.points import PointFolderDataModule

    return PointFolderDataModule(
        root=str(Path(args.workdir) / "shapes"),
        num_points=args.points,
        val_fraction=0.0,
        augment=augment,
        batch_size=args.batch,
        val_batch_size=args.batch,
        num_workers=0,
        drop_last=True,
        seed=args.seed,
    )


def make_trainer(args, folder: Path, epochs: int):
    import lightning as L

    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        default_root_dir=str(folder),
    )


def progress_callback(name: str):
    """A Lightning callback printing each epoch's mean train loss and elapsed time to stderr (the worker log)."""
    import lightning as L

    class Progress(L.Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.losses.append(float(trainer.callback_metrics["train/loss_epoch"]))
            print(
                f"{name} epoch {trainer.current_epoch} loss {self.losses[-1]:.4f} "
                f"{time.perf_counter() - self.t0:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    return Progress()


def count_trainable(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def trainable_at_15_classes(spec: dict) -> int | None:
    """Trainable parameters of the arm's task for 15 classes and G = 128 (official ScanObjectNN), on the meta
    device (no memory, no weights); ``None`` if the task cannot be built there."""
    import torch

    from vadapt.tasks import PointClassificationTask

    try:
        with torch.device("meta"):
            task = PointClassificationTask(
                backbone="point_mae",
                weights=None,
                num_group=128,
                num_classes=15,
                adapter=make_adapter(spec["adapter"]),
                freeze_backbone=spec["freeze"],
                preview_clouds=0,
            )
    except Exception as error:  # noqa: BLE001 - a missing count is reported, not fatal
        print(f"warning: 15-class count on the meta device failed: {error}", file=sys.stderr)
        return None
    return count_trainable(task)


# ---- workers (one fresh process each) ------------------------------------------------------------------------------


def worker_pretrain(args) -> dict:
    import gc

    import lightning as L
    import torch

    from vadapt.tasks.point_pretrain import PointMAEPretrainTask

    num_group = args.num_group

    class Pretrain(PointMAEPretrainTask):
        """The official pretraining task with ``G = --num-group`` patches (the task has no such option)."""

        def backbone_options(self) -> dict:
            return {"num_group": num_group}

    torch.set_num_threads(args.threads)
    L.seed_everything(args.seed, workers=True, verbose=False)
    dm = make_datamodule(args)
    dm.setup("fit")
    task = Pretrain(backbone="point_mae", export_on_fit_end=False)
    folder = Path(args.workdir) / "pretrain"
    trainer = make_trainer(args, folder, args.pretrain_epochs)
    progress = progress_callback("pretrain")
    trainer.callbacks.append(progress)
    gc.collect()
    baseline = rss_mb()
    resettable = reset_peak()
    t0 = time.perf_counter()
    trainer.fit(task, datamodule=dm)
    fit_s = time.perf_counter() - t0
    peak = peak_mb()
    encoder_bns = batch_norms(task.backbone)
    bn_clouds = reestimate_batch_norm(task.backbone, encoder_bns, args, task.backbone.forward_features)
    path = task.save_encoder(Path(args.pretrained), decoder=False)
    return {
        "arm": "pretrain",
        "label": "Point-MAE pretraining (encoder + decoder)",
        "epochs": args.pretrain_epochs,
        "steps": trainer.global_step,
        "trainable": count_trainable(task),
        "fit_s": fit_s,
        "epoch_loss_chamfer_l2": progress.losses,
        "baseline_mb": baseline,
        "peak_mb": peak,
        "train_mb": peak - baseline,
        "peak_reset": resettable,
        "file": str(path),
        "bn_reestimated_on_clouds": bn_clouds,
    }


def reestimate_batch_norm(model, modules: list, args, forward=None) -> int:
    """Re-estimate the running statistics of the BatchNorm ``modules`` of ``model`` on the un-augmented training
    clouds: reset, then a cumulative average (``momentum=None``) over one pass with only those layers in train mode
    (everything else in eval mode, no gradients), as ``torch.optim.swa_utils.update_bn``; ``forward`` (default
    ``model``) is called on each batch of clouds. Leaves ``model`` in eval mode; returns the clouds used.

    Why: a BatchNorm's running variance starts at 1 and keeps ``0.9 ** steps`` of it (0.0064 after 48 steps,
    4e-5 after 96), while the mini-PointNet's first BatchNorm sees inputs of variance ~2e-5 (patch coordinates
    ~0.05): after a short run the running variance is 3x (96 steps) to 300x (48 steps) too large and eval-mode
    outputs collapse (the scratch arm predicts one class for every cloud). Point-MAE's 300-epoch runs do not meet
    this; at this budget the statistics have to be re-estimated.
    """
    import torch

    if not modules:
        return 0
    dm = make_datamodule(args, augment=False)
    dm.setup("fit")
    loader = torch.utils.data.DataLoader(dm.datasets["train"], batch_size=args.batch, shuffle=False)
    forward = forward or model
    model.eval()
    momenta = [m.momentum for m in modules]
    for m in modules:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    seen = 0
    with torch.no_grad():
        for batch in loader:
            forward(batch["points"])
            seen += len(batch["points"])
    for m, momentum in zip(modules, momenta):
        m.momentum = momentum
    model.eval()
    return seen


def batch_norms(module, trainable_only: bool = False) -> list:
    from torch import nn

    return [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and (not trainable_only or any(p.requires_grad for p in m.parameters(recurse=False)))
    ]


def fill_prior_bank(task, args) -> int:
    """Point-PEFT's point-prior bank from the frozen features of every (un-augmented) training cloud."""
    import torch

    from vadapt.adapters.point_peft import point_prior_features

    dm = make_datamodule(args, augment=False)
    dm.setup("fit")
    loader = torch.utils.data.DataLoader(dm.datasets["train"], batch_size=args.batch, shuffle=False)
    feats, labels = [], []
    with torch.no_grad():
        for batch in loader:
            feats.append(point_prior_features(task.backbone, batch["points"]))
            labels.append(batch["label"])
    task.backbone.point_peft.build_prior_bank(torch.cat(feats), torch.cat(labels))
    return task.backbone.point_peft.bank_size


def evaluate(task, args) -> dict:
    """OA and mAcc on the held-out test split (deterministic points, no augmentation, no voting)."""
    import torch

    dm = make_datamodule(args, augment=False)
    dm.setup("test")
    k = NUM_SHAPE_CLASSES
    confusion = torch.zeros(k, k, dtype=torch.long)
    task.eval()
    with torch.inference_mode():
        for batch in dm.test_dataloader():
            pred = task(batch["points"]).argmax(1)
            confusion += torch.bincount(batch["label"] * k + pred, minlength=k * k).view(k, k)
    per_class = confusion.diag().double() / confusion.sum(1).clamp(min=1).double()
    present = confusion.sum(1) > 0
    return {
        "oa": float(confusion.diag().sum() / confusion.sum()),
        "macc": float(per_class[present].mean()),
        "per_class_acc": {name: float(a) for name, a in zip(dm.class_names, per_class)},
        "test_clouds": int(confusion.sum()),
        "confusion": confusion.tolist(),
    }


def worker_arm(args) -> dict:
    import gc

    import lightning as L
    import torch

    from vadapt.tasks import PointClassificationTask

    spec = ARMS[args.worker]
    torch.set_num_threads(args.threads)
    L.seed_everything(args.seed, workers=True, verbose=False)
    dm = make_datamodule(args)
    dm.setup("fit")
    if dm.num_classes != NUM_SHAPE_CLASSES:
        raise RuntimeError(f"expected {NUM_SHAPE_CLASSES} classes in {dm.root}, found {dm.num_classes}")
    task = PointClassificationTask(
        backbone="point_mae",
        weights=args.pretrained if spec["pretrained"] else None,
        num_group=args.num_group,
        num_classes=dm.num_classes,
        class_names=dm.class_names,
        adapter=make_adapter(spec["adapter"]),
        freeze_backbone=spec["freeze"],
        lr=args.lr,
        weight_decay=0.05,
        warmup_steps=args.warmup,
        vote=0,
        preview_clouds=0,
    )
    bank = fill_prior_bank(task, args) if spec["adapter"] == "point_peft" else None
    trainable = count_trainable(task)
    folder = Path(args.workdir) / args.worker
    trainer = make_trainer(args, folder, args.epochs)
    progress = progress_callback(args.worker)
    trainer.callbacks.append(progress)
    gc.collect()
    baseline = rss_mb()
    resettable = reset_peak()
    t0 = time.perf_counter()
    trainer.fit(task, datamodule=dm)
    fit_s = time.perf_counter() - t0
    peak = peak_mb()
    train_loss = trainer.callback_metrics.get("train/loss_epoch")
    t0 = time.perf_counter()
    raw = evaluate(task, args)
    trained_bns = batch_norms(task, trainable_only=True)
    bn_clouds = reestimate_batch_norm(task, trained_bns, args)
    scores = evaluate(task, args)
    eval_s = time.perf_counter() - t0
    scores.update(
        oa_raw_bn=raw["oa"],
        macc_raw_bn=raw["macc"],
        bn_layers_reestimated=len(trained_bns),
        bn_reestimated_on_clouds=bn_clouds,
    )
    return {
        "arm": args.worker,
        "label": spec["label"],
        "trainable": trainable,
        "total": sum(p.numel() for p in task.parameters()),
        "steps": trainer.global_step,
        "fit_s": fit_s,
        "eval_s": eval_s,
        "epoch_train_loss": progress.losses,
        "last_epoch_train_loss": None if train_loss is None else float(train_loss),
        "prior_bank": bank,
        "baseline_mb": baseline,
        "peak_mb": peak,
        "train_mb": peak - baseline,
        "peak_reset": resettable,
        **scores,
    }


# ---- driver ----------------------------------------------------------------------------------------------------------


def run_worker(name: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name]
    for key in (
        "workdir",
        "pretrained",
        "points",
        "num_group",
        "batch",
        "epochs",
        "pretrain_epochs",
        "lr",
        "warmup",
        "threads",
        "seed",
    ):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    log = Path(args.workdir) / f"{name}.log"
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"worker {name} failed:\n{log.read_text()[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    return result


def make_data(args) -> dict:
    from vadapt.data.shapes import make_shapes

    folder = Path(args.workdir) / "shapes"
    stamp = folder / "bench_points.json"
    wanted = {"classes": NUM_SHAPE_CLASSES, "per_class": args.per_class, "points": 2 * args.points, "seed": args.seed}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return {**wanted, "reused": True}
    make_shapes(
        folder, classes=NUM_SHAPE_CLASSES, per_class=args.per_class, points=2 * args.points, seed=args.seed, parts=False
    )
    stamp.write_text(json.dumps(wanted))
    return {**wanted, "reused": False}


def table(results: list[dict], counts15: dict) -> str:
    full = next((r for r in results if r["arm"] == "scratch"), None)
    lines = [
        "| arm | trainable params (12 cl.) | trainable at 15 cl. (ours / paper) | OA | mAcc | train MB "
        "(peak - model) | vs full training | peak RSS MB | fit wall s | steps |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ours15 = counts15.get(r["arm"])
        paper = OFFICIAL.get(r["arm"])
        c15 = "n/a" if ours15 is None else f"{ours15:,}"
        if paper is not None:
            c15 += f" / {paper:,}"
        ratio = f"{r['train_mb'] / full['train_mb']:.2f}x" if full and full["train_mb"] > 0 else "n/a"
        lines.append(
            f"| {r['label']} | {r['trainable']:,} | {c15} | {r['oa']:.3f} | {r['macc']:.3f} | {r['train_mb']:.0f} | "
            f"{ratio} | {r['peak_mb']:.0f} | {r['fit_s']:.0f} | {r['steps']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--arms", default=DEFAULT_ARMS, help=f"comma-separated among {', '.join(ARMS)} (default {DEFAULT_ARMS})"
    )
    parser.add_argument("--per-class", type=int, default=40, help="clouds per class, 20%% held out (default 40)")
    parser.add_argument("--points", type=int, default=512, help="points per cloud (default 512)")
    parser.add_argument("--num-group", type=int, default=32, help="patch centres G (default 32)")
    parser.add_argument("--batch", type=int, default=32, help="clouds per step (default 32)")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs of every arm (default 4)")
    parser.add_argument("--pretrain-epochs", type=int, default=8, help="Point-MAE pretraining epochs (default 8)")
    parser.add_argument(
        "--pretrained",
        default=None,
        help="reuse this pretrain .pth (skip pretraining); default: pretrain into the workdir",
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW lr of every arm (default 1e-3)")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up steps of every arm (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each worker (default 2)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="workers run at once (default 1; more shares the CPU between arms: wall times then mean less)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir",
        default=str(ROOT / "runs" / "bench_points"),
        help="data, pretrain file, logs (default runs/bench_points)",
    )
    parser.add_argument(
        "--output",
        default=str(ROOT / "runs" / "bench_points.json"),
        help="JSON of every number (default runs/bench_points.json)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test (tiny budget; numbers mean nothing)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        result = worker_pretrain(args) if args.worker == "pretrain" else worker_arm(args)
        (Path(args.workdir) / f"{args.worker}.json").write_text(json.dumps(result, indent=1))  # also kept per arm
        print(json.dumps(result))
        return

    if args.quick:
        args.per_class, args.batch, args.epochs, args.pretrain_epochs, args.warmup = 5, 16, 1, 1, 1
        args.workdir = args.workdir.rstrip("/") + "_quick"
        args.output = str(Path(args.output).with_name(Path(args.output).stem + "_quick.json"))
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arms {unknown}; choose among {list(ARMS)}")
    if args.num_group > args.points:
        raise SystemExit(f"--num-group {args.num_group} exceeds --points {args.points}")

    import torch

    t_all = time.perf_counter()
    load_before = os.getloadavg()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = make_data(args)
    data["make_s"] = time.perf_counter() - t0
    print(f"data: {data}", file=sys.stderr, flush=True)

    def report(name: str, r: dict) -> None:
        if name == "pretrain":
            losses = ", ".join(f"{v:.4f}" for v in r["epoch_loss_chamfer_l2"])
            text = f"pretrain: {r['steps']} steps in {r['fit_s']:.0f} s; epoch Chamfer-L2 {losses}"
        else:
            text = (
                f"{name}: OA {r['oa']:.3f} mAcc {r['macc']:.3f}, trainable {r['trainable']:,}, train MB "
                f"{r['train_mb']:.0f}, fit {r['fit_s']:.0f} s, last loss {r['last_epoch_train_loss']}"
            )
        print(f"[{time.perf_counter() - t_all:5.0f}s] {text}", file=sys.stderr, flush=True)

    # workers run --jobs at a time; arms on the pretrained encoder wait for the pretraining worker
    pool = ThreadPoolExecutor(max_workers=args.jobs)
    futures: dict[str, Future] = {}
    if args.pretrained is None and any(ARMS[a]["pretrained"] for a in arms):
        args.pretrained = str(Path(args.workdir) / "point_mae_pretrain.pth")
        futures["pretrain"] = pool.submit(run_worker, "pretrain", args)
    elif args.pretrained is None:
        args.pretrained = "none"
    pre = futures.get("pretrain")

    def after_pretraining(arm: str, args: argparse.Namespace) -> dict:
        if pre is not None:
            pre.result()
        return run_worker(arm, args)

    for arm in sorted(arms, key=lambda a: ARMS[a]["pretrained"]):  # arms that need no pretraining first
        futures[arm] = pool.submit(after_pretraining if ARMS[arm]["pretrained"] else run_worker, arm, args)
    done: dict[str, dict] = {}
    for future in as_completed(futures.values()):
        name = next(k for k, f in futures.items() if f is future)
        done[name] = future.result()
        report(name, done[name])
    pool.shutdown()
    pretrain = done.get("pretrain")
    results = [done[arm] for arm in arms]
    counts15 = {arm: trainable_at_15_classes(ARMS[arm]) for arm in arms}
    total_s = time.perf_counter() - t_all

    meta = {
        "torch": torch.__version__,
        "threads": args.threads,
        "jobs": args.jobs,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "total_wall_s": total_s,
        "quick": args.quick,
        "budget": {
            k: getattr(args, k)
            for k in ("per_class", "points", "num_group", "batch", "epochs", "pretrain_epochs", "lr", "warmup", "seed")
        },
        "data": data,
        "pretrained": args.pretrained,
        "malloc": "default glibc",
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        json.dumps(
            {
                "meta": meta,
                "pretrain": pretrain,
                "trainable_15_classes_g128": counts15,
                "official_15_classes": OFFICIAL,
                "results": results,
            },
            indent=1,
        )
    )

    n_train = NUM_SHAPE_CLASSES * (args.per_class - max(1, round(args.per_class * 0.2)))
    n_test = results[0]["test_clouds"] if results else 0
    print()
    print(
        f"vadapt make-shapes, {NUM_SHAPE_CLASSES} classes: {n_train} train / {n_test} held-out test clouds, "
        f"{args.points} points, G={args.num_group}; point_mae (384-d, 12 blocks); "
        + (
            f"pretraining {pretrain['epochs']} epochs ({pretrain['steps']} steps, {pretrain['fit_s']:.0f} s); "
            if pretrain
            else f"pretrained file {args.pretrained}; "
        )
        + f"every arm {args.epochs} epochs x batch {args.batch}, AdamW lr {args.lr:g}; seed {args.seed}; "
        f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} cores; load average "
        f"{load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}; total wall {total_s:.0f} s"
        + (" [QUICK: meaningless]" if args.quick else "")
    )
    print()
    print(table(results, counts15))
    print(f"\nJSON: {output}")


if __name__ == "__main__":
    main()
