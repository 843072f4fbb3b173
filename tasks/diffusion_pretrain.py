"""Pretraining a small diffusion base offline, so that a "frozen pretrained base" exists without downloads.

No Stable Diffusion weights can be downloaded here, so the generation demos (``benchmarks/bench_resadapter.py``,
``configs/resadapter_shapes_demo.yaml``) adapt a base pretrained by :func:`pretrain_diffusion_base` (behind
``vadapt pretrain-diffusion``): a :class:`~vadapt.tasks.generation.DiffusionAdapterTask` with
``train_unet=True`` (the whole UNet trains; the tiny offline CLIP text encoder stays frozen at its random
initialisation, which still tells the prompts apart) on :class:`~vadapt.data.generation.ShapesImageDataModule`
images (one coloured shape on black, prompt ``"a red circle"``) at ONE resolution, with the base's DDPM schedule,
v-prediction (default; written into the folder's scheduler config, with x0 clipping in pixel space), condition
dropout for classifier-free guidance, AdamW with linear decay, and an exponential moving average of the UNet's
weights (diffusers' ``EMAModel``, the standard of diffusion training: an average over the last ~1/(1-decay)
steps gives much cleaner samples than the last step's weights of a briefly trained base). The EMA weights are
what gets written.

The result is a diffusers folder (``model_index.json``, ``unet/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``; no ``vae/`` for the pixel-space ``pixel_demo`` base) written atomically (a temporary folder
renamed into place), loadable as ``weights: <output>`` by every diffusion task, with a ``pretrain.json`` record of
the run (steps, resolution, last training loss, the data's shapes and colours).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L


class UNetEMA(L.Callback):
    """Keep diffusers' ``EMAModel`` of the task's UNet during ``fit`` and copy it into the UNet when fit ends.

    ``decay`` is the cap; with ``use_ema_warmup`` the decay grows as ``1 - (1 + step) ** -0.75`` (diffusers'
    warm-up), so short runs average over a proportionally short window instead of keeping the random init.
    """

    def __init__(self, decay: float = 0.999) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.ema: Any = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from diffusers.training_utils import EMAModel

        self.ema = EMAModel(pl_module.backbone.unet.parameters(), decay=self.decay, use_ema_warmup=True, power=0.75)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.ema.step(pl_module.backbone.unet.parameters())

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.ema is not None and self.ema.optimization_step > 0:
            self.ema.copy_to(pl_module.backbone.unet.parameters())


def pretrain_diffusion_base(
    output: str | os.PathLike,
    backbone: str = "pixel_demo",
    resolution: int = 32,
    epochs: int = 1000,
    max_minutes: float | None = None,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    num_samples: int = 8192,
    *,
    max_steps: int = -1,
    shapes: tuple[str, ...] = ("circle", "square", "triangle"),
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow"),
    scale: tuple[float, float] = (0.35, 0.7),
    condition_dropout: float = 0.1,
    prediction_type: str | None = "v_prediction",
    clip_sample: bool | None = None,
    ema_decay: float | None = 0.999,
    accelerator: str = "auto",
    progress_bar: bool = True,
    overwrite: bool = False,
    **task_options: Any,
) -> Path:
    """Train the whole UNet of ``backbone`` (random init) on synthetic shapes at one resolution and write it.

    Args:
        output: the diffusers folder to write (must not exist unless ``overwrite``); written only when training
            ends normally.
        backbone: a diffusion base of the registry (``pixel_demo``: the demo base; ``pixel_test``: tiny, tests).
        resolution: the one training image size (square, pixels; a multiple of the VAE factor).
        epochs: passes over the ``num_samples`` generated images (the first of ``epochs``, ``max_minutes`` and
            ``max_steps`` to be reached stops training).
        max_minutes: wall-clock budget of the training loop (``None``: no limit).
        batch_size, lr, seed: the run (AdamW, linear decay over ``epochs``); everything is seeded by ``seed``.
        num_samples: images per epoch, generated on the fly from ``seed``.
        shapes, colours, scale: what the images show (``ShapesImageDataModule``'s arguments).
        condition_dropout: share of training prompts replaced by the empty one (classifier-free guidance).
        prediction_type: the objective written into the base's scheduler config (``v_prediction``, as SD 2.1:
            no amplified noise-prediction error at high noise, which a briefly trained small base cannot
            afford; ``epsilon``; ``None``: the architecture's own).
        clip_sample: clip the sampler's x0 estimate to [-1, 1] (``None``: on in pixel space, off with a VAE).
        ema_decay: the cap of the weights' moving average that is written (:class:`UNetEMA`); ``None``: write
            the last step's weights.
        accelerator: Lightning's accelerator (``auto``: the GPU when there is one).
        task_options: more :class:`DiffusionAdapterTask` arguments (``snr_gamma``, ``warmup_steps``, ...).
    Returns:
        the written folder.
    """
    from lightning.pytorch.loggers import CSVLogger

    from vadapt.data.generation import ShapesImageDataModule
    from vadapt.tasks.generation import DiffusionAdapterTask

    output = Path(output).expanduser()
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; choose another --output or remove it first")
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output} exists and is not a folder")
    if resolution < 1 or epochs < 1 or batch_size < 1 or num_samples < 1:
        raise ValueError(f"resolution, epochs, batch_size and num_samples must be >= 1, got {resolution}, {epochs}, "
                         f"{batch_size}, {num_samples}")
    if max_minutes is not None and not max_minutes > 0:
        raise ValueError(f"max_minutes must be > 0, got {max_minutes}")
    output.parent.mkdir(parents=True, exist_ok=True)
    L.seed_everything(seed, workers=True, verbose=False)
    datamodule = ShapesImageDataModule(resolution=resolution, num_samples=num_samples, shapes=shapes,
                                       colours=colours, scale=scale, batch_size=batch_size, val_fraction=0.0,
                                       drop_last=True, seed=seed)
    task = DiffusionAdapterTask(backbone=backbone, weights=None, adapter=None, train_unet=True, lr=lr,
                                condition_dropout=condition_dropout, **task_options)
    task.check_size(resolution, resolution)
    if prediction_type is not None:
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
        task.backbone.scheduler_config["prediction_type"] = prediction_type
    clip = task.backbone.vae is None if clip_sample is None else bool(clip_sample)
    task.backbone.scheduler_config["clip_sample"] = clip
    work = output.parent / f".{output.name}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        trainer = L.Trainer(
            max_epochs=epochs, max_steps=max_steps, accelerator=accelerator, devices=1,
            max_time={"minutes": max_minutes} if max_minutes is not None else None,
            default_root_dir=str(work), logger=CSVLogger(str(work), name="pretrain"), enable_checkpointing=False,
            enable_progress_bar=progress_bar, enable_model_summary=False, log_every_n_steps=10,
            limit_val_batches=0, num_sanity_val_steps=0,
            callbacks=[] if ema_decay is None else [UNetEMA(ema_decay)],
        )
        task.configure_callbacks = lambda: []  # no adapter.safetensors of the whole UNet in the log folder
        trainer.fit(task, datamodule=datamodule)
        if trainer.interrupted:
            raise RuntimeError(f"pretraining was interrupted; {output} was not written")
        folder = work / "base"
        task.backbone.cpu().save_pretrained(folder)
        loss = trainer.callback_metrics.get("train_loss")
        record = {"backbone": backbone, "resolution": resolution, "prediction_type": task.prediction_type,
                  "steps": trainer.global_step, "epochs": trainer.current_epoch, "batch_size": batch_size, "lr": lr,
                  "seed": seed, "ema_decay": ema_decay,
                  "last_train_loss": None if loss is None else float(loss), "shapes": list(shapes),
                  "colours": list(colours), "scale": list(scale)}
        (folder / "pretrain.json").write_text(json.dumps(record, indent=2))
        if output.exists():
            shutil.rmtree(output)
        folder.replace(output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return output
