"""The one base of every task: a frozen backbone with an adapter, a head, and the shared plumbing.

Subclasses (torchgeo style) implement ``configure_head``, ``configure_losses``, ``configure_metrics``,
``forward`` and ``_shared_step``; their ``__init__`` signature *is* the YAML config. The arguments every task
shares (optimiser, normalisation, backbone plumbing) are defined once, as keyword arguments of
:meth:`BaseTask.__init__`: a task takes ``**kwargs`` and passes them on with ``super().__init__(**kwargs)``, and
jsonargparse (LightningCLI, :func:`vadapt.loading.build_task`) follows them there, so they are still YAML keys of
the task. A task whose paper uses another default declares that argument itself and passes it on
(``super().__init__(lr=lr, **kwargs)``); a task that has no use for one passes :data:`UNUSED` for it, which takes
it out of the task's YAML schema and hyperparameters.

The base builds the backbone (frozen, bands adapted), injects the adapter, normalises inputs with the stored
statistics, sets up AdamW with warm-up and a poly schedule over the trainable parameters only, keeps frozen
weights out of Lightning checkpoints, and writes an adapter checkpoint (:mod:`vadapt.checkpoint`) when fitting
ends, beside ``curves.png`` (:class:`DrawCurves`) and the per-epoch prediction pictures.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightning as L
import torch

import vadapt.composites  # noqa: F401  (registers the composite backbones: Any2Point)
from vadapt.adapters import AdapterConfig, apply_adapter, as_adapter_config
from vadapt.backbones import Backbone, create_backbone
from vadapt.bands import RGB, BandInit
from vadapt.config import to_plain
from vadapt.contracts import TaskCapabilities
from vadapt.params import count_parameters
from vadapt.preprocessing import Preprocessing

# frozen batch norms stay in eval mode on purpose (their statistics must not move): Lightning's warning about
# modules in eval mode at the start of training says nothing a user of a frozen backbone should act on
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


class _Unused:
    """The type of :data:`UNUSED`."""

    def __repr__(self) -> str:
        return "UNUSED"


#: what a task passes to ``BaseTask.__init__`` for a shared argument it has no use for (e.g. ``mean`` and ``std``
#: for point clouds): jsonargparse then leaves the argument out of the task's YAML schema, as a keyword given in the
#: ``super().__init__`` call, and the base leaves it out of the hyperparameters (the base's default applies)
UNUSED: Any = _Unused()


class BaseTask(L.LightningModule):
    """Shared behaviour of all tasks. Subclasses pass their init args through; see module docstring."""

    backbone: Backbone
    #: submodules built from upstream weights: adapter checkpoints keep only what trains in them
    pretrained_modules: tuple[str, ...] = ("backbone",)
    #: what the task offers the app and the CLI (see :class:`~vadapt.contracts.TaskCapabilities`); every task
    #: declares it, or overrides :meth:`capabilities_for` where it depends on the init args
    CAPABILITIES: ClassVar[TaskCapabilities]
    _scales_values = False  # whether normalise applies value_scale / value_offset (see use_preprocessing)
    _stats_from_data = False  # mean / std still to compute from the training data (non-RGB bands left unset)

    def __init__(
        self,
        *,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        warmup_steps: int = 0,
        poly_power: float = 1.0,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        normalization: Literal["dataset", "per_image"] = "dataset",
        extra_band_init: BandInit = "copy",
        freeze_backbone: bool = True,
        grad_checkpointing: bool = False,
    ) -> None:
        """
        Args:
            lr: AdamW's peak learning rate, over the trainable parameters only.
            weight_decay: AdamW's weight decay.
            warmup_steps: optimiser steps of linear warm-up to ``lr``.
            poly_power: after the warm-up, the learning rate decays as ``(1 - progress) ** poly_power`` to 0 at the
                last step (1: linear).
            mean: per-band input statistics (in the units the datamodule feeds, i.e. after its ``scale``): the model
                normalises its inputs to ``(x - mean) / std`` itself, so training, inference and the app preprocess
                alike; default (``mean`` and ``std`` unset): the backbone's pretraining statistics for RGB bands,
                and for other bands the statistics of the training data, computed when fitting starts (as
                ``vadapt stats`` prints them) and stored in the checkpoint.
            std: per-band input statistics, each > 0; see ``mean``.
            normalization: ``dataset`` (``mean`` / ``std`` above) or ``per_image``: every image, crop or tile is
                standardised by its own per-band mean and std over its pixels that are not 0 in every band
                (padding, nodata) (robust to another sensor's calibration or another season's brightness; the
                pretrained statistics are then not used).
            extra_band_init: first-layer init of bands the pretrained model lacks (``copy``, ``mean``, ``repeat``,
                ``zero``).
            freeze_backbone: ``False`` trains every backbone weight too (full fine-tuning, or training from scratch
                with ``weights: null``): the baselines adapters are compared with.
            grad_checkpointing: recompute adapted blocks in backward to save memory.
        """
        super().__init__()
        # the init args of the task's __init__ and of this one (Lightning follows the super().__init__ frames)
        shared = {name: value for name, value in locals().items() if name in SHARED_DEFAULTS}
        self.save_hyperparameters(ignore=[name for name, value in shared.items() if value is UNUSED])
        # again, with dataclass configs (the adapter's, ...) as {class_path, init_args}: loggers write hparams with
        # OmegaConf, which rejects dataclasses with union-typed fields (as_adapter_config turns it back into the
        # dataclass), and the task's own arguments first
        plain = {k: to_plain(v) if dataclasses.is_dataclass(v) else v for k, v in self.hparams.items()}
        self.save_hyperparameters(dict(sorted(plain.items(), key=lambda item: item[0] in SHARED_DEFAULTS)))
        self.strict_loading = False  # Lightning checkpoints hold only trainable weights (see on_save_checkpoint)
        # file values -> the units training fed (identity while training: the datamodule scaled them already);
        # use_preprocessing sets it for prediction on raw files
        self.register_buffer("value_scale", torch.ones(()), persistent=False)
        self.register_buffer("value_offset", torch.zeros(()), persistent=False)
        #: how the training data were read (value scale, nodata, geometry); set when fitting starts, stored in
        #: checkpoints; None for a task never fitted on a datamodule that describes itself
        self.preprocessing: Preprocessing | None = None
        self.configure_backbone()
        self.configure_head()
        self.configure_losses()
        self.configure_metrics()

    @classmethod
    def upgrade_init_args(cls, init_args: Mapping[str, Any]) -> dict[str, Any]:
        """``init_args`` stored by an earlier vadapt (adapter checkpoint manifests, Lightning checkpoints) in the
        form this version's ``__init__`` takes; :mod:`vadapt.loading` calls it before building the task. The
        identity, unless the task renamed or regrouped its arguments."""
        return dict(init_args)

    def shared_setting(self, name: str) -> Any:
        """A shared argument of :meth:`__init__` (``lr``, ``mean``, ...): its value, or its default where the task
        passed :data:`UNUSED` for it."""
        return self.hparams.get(name, SHARED_DEFAULTS[name])

    # ---- what the task offers ------------------------------------------------------------------------------
    @classmethod
    def capabilities_for(cls, init_args: Mapping[str, Any]) -> TaskCapabilities:
        """What a task of this class built from ``init_args`` offers (also read for checkpoints whose manifest
        predates stored capabilities)."""
        return cls.CAPABILITIES

    @property
    def capabilities(self) -> TaskCapabilities:
        """What this task offers; stored in its adapter checkpoints' manifests."""
        return self.capabilities_for(self.hparams)

    def class_logits(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Per-pixel class logits ``(B, K, H, W)`` of ``capabilities.num_inputs`` raw-valued images ``(B, C, H,
        W)``: what ``vadapt infer`` and the app blend over tiles. The task's forward, unless it returns another
        form (prompt-free SAM returns mask logits and IoU predictions)."""
        return self(*inputs)

    # ---- models ------------------------------------------------------------------------------------------
    def configure_backbone(self) -> None:
        hp, setting = self.hparams, self.shared_setting
        self.backbone = create_backbone(
            hp["backbone"], weights=self.backbone_weights(), bands=hp.get("bands", RGB),  # point clouds: no bands
            extra_band_init=setting("extra_band_init"), **self.backbone_options(),
        )
        self.adapter_config: AdapterConfig | None = as_adapter_config(hp.get("adapter"))
        apply_adapter(self.backbone, self.adapter_config)
        if not setting("freeze_backbone"):  # full fine-tuning / training from scratch (baselines)
            self.backbone.requires_grad_(True)
            # freezing put batch norms in eval mode, and Lightning keeps module modes as they are: re-apply
            self.backbone.train(self.training)
        self.backbone.grad_checkpointing = bool(setting("grad_checkpointing"))
        mean, std = self.normalisation(setting("mean"), setting("std"))
        self.register_buffer("input_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)


    def backbone_weights(self) -> str | None:
        """What ``create_backbone`` loads: ``None``, ``"pretrained"`` or a path (the ``weights`` init arg)."""
        return self.hparams.get("weights")

    def backbone_options(self) -> dict[str, Any]:
        """Family options passed to ``create_backbone`` (``img_size`` when set)."""
        return {"img_size": self.hparams["img_size"]} if self.hparams.get("img_size") else {}

    def normalisation(
        self, mean: Sequence[float] | None, std: Sequence[float] | None
    ) -> tuple[list[float], list[float]]:
        """Per-band statistics; for RGB bands left unset, the backbone's pretraining statistics. A backbone
        without bands (point clouds, scaled into the unit sphere by their datamodule) has none."""
        bands = self.backbone.bands
        if not bands:
            return [], []
        if mean is None and std is None:
            rgb = dict(zip(("red", "green", "blue"), zip(self.backbone.rgb_mean, self.backbone.rgb_std)))
            if any(b not in rgb for b in bands):  # computed from the training data when fitting starts
                self._stats_from_data = True
                return [0.0] * len(bands), [1.0] * len(bands)
            return [rgb[b][0] for b in bands], [rgb[b][1] for b in bands]
        if mean is None or std is None or len(mean) != len(bands) or len(std) != len(bands):
            raise ValueError(f"mean and std need one value per band {list(bands)}; got mean={mean}, std={std}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be > 0, got {std}")
        return list(mean), list(std)

    def configure_head(self) -> None:
        raise NotImplementedError

    def configure_losses(self) -> None:
        pass

    def configure_metrics(self) -> None:
        pass

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` values as fed (file values after :meth:`use_preprocessing`) -> model inputs."""
        if not self.input_mean.numel():  # no band statistics (point clouds)
            return x
        per_image = self.shared_setting("normalization") == "per_image"
        # padding and nodata pixels are 0 in every band (datamodules, edge tiles): not part of an image's statistics
        valid = (x != 0).any(1, keepdim=True).to(x.dtype) if per_image else None
        if self._scales_values:
            x = x * self.value_scale + self.value_offset
        if valid is not None:
            count = valid.sum((-2, -1), keepdim=True).clamp_min(1.0)
            mean = (x * valid).sum((-2, -1), keepdim=True) / count
            std = (((x - mean) * valid).square().sum((-2, -1), keepdim=True) / count).sqrt()
            return (x - mean) / std.clamp_min(1e-6 * std.abs().max().clamp_min(1.0))
        return (x - self.input_mean) / self.input_std

    def use_preprocessing(self, record: Preprocessing | None, raw_inputs: bool = True) -> None:
        """Attach the record of how training read its data; with ``raw_inputs`` the task also takes file values
        as they are (``x * scale + offset`` first), as ``vadapt infer`` and the app feed it."""
        self.preprocessing = record
        scale, offset = (record.scale, record.offset) if raw_inputs and record is not None else (1.0, 0.0)
        self.set_value_transform(scale, offset)

    def set_value_transform(self, scale: float = 1.0, offset: float = 0.0) -> None:
        """Make the task apply ``x * scale + offset`` to its inputs before normalising (``1, 0``: off)."""
        self.value_scale.fill_(float(scale))
        self.value_offset.fill_(float(offset))
        self._scales_values = float(scale) != 1.0 or float(offset) != 0.0

    def raw_fill_values(self) -> list[float]:
        """Per-band file values that normalise to the band mean (0): what tiling writes into nodata pixels."""
        mean = self.input_mean.flatten()
        return ((mean - self.value_offset) / self.value_scale).tolist()

    # ---- fitting starts: what the datamodule tells ----------------------------------------------------------
    def on_fit_start(self) -> None:
        """Record how the datamodule reads the data (:class:`~vadapt.preprocessing.Preprocessing`) and, where
        ``mean`` / ``std`` were left unset for non-RGB bands, compute them from its training data."""
        data = self.trainer.datamodule if self._trainer is not None else None
        describe = getattr(data, "preprocessing", None)
        self.preprocessing = describe() if callable(describe) else None
        if getattr(self, "_stats_from_data", False):
            self._statistics_from(data)

    def _statistics_from(self, data: Any) -> None:
        from vadapt.data.stats import compute_band_stats

        if data is None or not hasattr(data, "iter_stat_pixels"):
            raise ValueError(f"mean/std are required for bands {list(self.backbone.bands)} (only RGB has "
                             "pretraining statistics) and this run has no datamodule to compute them from: set "
                             "model.init_args.mean / std (vadapt stats --config CONFIG prints them)")
        stats = compute_band_stats(data)
        if list(stats.bands) != list(self.backbone.bands):
            raise ValueError(f"the data's bands {list(stats.bands)} differ from the model's "
                             f"{list(self.backbone.bands)}")
        self.input_mean.copy_(torch.tensor(stats.mean).view(1, -1, 1, 1))
        self.input_std.copy_(torch.tensor(stats.std).clamp_min(1e-6).view(1, -1, 1, 1))
        # into the hyperparameters: checkpoints store them, so the task rebuilds with them
        self.hparams["mean"] = [round(v, 6) for v in stats.mean]
        self.hparams["std"] = [round(max(v, 1e-6), 6) for v in stats.std]
        self._stats_from_data = False
        print(f"band statistics of the training data ({stats.pixels:,} valid pixels): mean "
              f"{self.hparams['mean']}, std {self.hparams['std']}")

    def train(self, mode: bool = True) -> BaseTask:
        super().train(mode)
        self.backbone.train(mode)  # keeps frozen batch norms in eval mode
        return self

    # ---- optimisation ----------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        setting = self.shared_setting
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError("nothing to train: the backbone is frozen and the task has no trainable parameters")
        optimizer = torch.optim.AdamW(params, lr=setting("lr"), weight_decay=setting("weight_decay"))
        total = max(int(self.trainer.estimated_stepping_batches), 1) if self._trainer is not None else 1
        warmup = min(int(setting("warmup_steps")), total - 1)
        power = float(setting("poly_power"))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(1.0 - (step - warmup) / max(total - warmup, 1), 0.0) ** power

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- steps: subclasses implement _shared_step(batch, stage), _log_scores(stage), preview_picture(rows) ----
    def _shared_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        raise NotImplementedError

    def _log_scores(self, stage: str) -> None:
        raise NotImplementedError

    def preview_picture(self, rows: list[tuple]):
        """A PIL image of the validation rows collected in ``self._preview`` (one per sample)."""
        raise NotImplementedError

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._log_scores("train")

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")
        self._save_preview()

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def _save_preview(self) -> None:
        """Write ``preview_picture`` of this epoch's rows to ``<log_dir>/predictions/epoch_NNN.png``."""
        rows, self._preview = getattr(self, "_preview", []), []
        trainer = self._trainer
        if trainer is None or trainer.sanity_checking:
            return
        # trainer.log_dir is a collective (broadcast) under DDP: every rank must ask, then only rank 0 writes
        folder = Path(trainer.log_dir or trainer.default_root_dir) / "predictions"
        if not rows or not trainer.is_global_zero:
            return
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"epoch_{self.current_epoch:03d}.png"
        tmp = folder / f".{path.name}.tmp.png"
        self.preview_picture(rows).save(tmp)
        tmp.replace(path)

    # ---- checkpoints -------------------------------------------------------------------------------------
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything that training changes: in the ``pretrained_modules`` (rebuilt from upstream weights when
        loading) their trainable parameters and the buffers of modules that own one (e.g. batch-norm statistics
        of an unfrozen backbone); all state outside them."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        for part in self.pretrained_modules:
            for name, module in getattr(self, part).named_modules():
                if any(p.requires_grad for p in module.parameters(recurse=False)):
                    prefix = f"{part}.{name}." if name else f"{part}."
                    trainable.update(prefix + b for b, _ in module.named_buffers(recurse=False))
        pretrained = tuple(f"{part}." for part in self.pretrained_modules)
        return {
            k: v.detach().cpu().contiguous()
            for k, v in self.state_dict().items()
            if k in trainable or not k.startswith(pretrained)
        }

    def training_state_dict(self) -> dict[str, torch.Tensor]:
        """What Lightning checkpoints keep to resume training: :meth:`adapter_state_dict`, unless a task trains
        parts that do not predict (the depth task's pose net)."""
        return self.adapter_state_dict()

    def plain_hparams(self) -> dict[str, Any]:
        """Init args as JSON-safe values (without LightningCLI's private ``_class_path``-style keys)."""
        return to_plain({k: v for k, v in self.hparams.items() if not k.startswith("_")})

    def parameter_counts(self) -> dict[str, int | float]:
        return count_parameters(self, self.backbone)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        task = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint["state_dict"] = self.training_state_dict()
        # JSON-safe (loadable with weights_only=True); `_class_path` is what LightningCLI's --ckpt_path reads
        checkpoint["hyper_parameters"] = {**self.plain_hparams(), "_class_path": task}
        checkpoint["vadapt_task"] = task
        checkpoint["vadapt_preprocessing"] = self.preprocessing.to_dict() if self.preprocessing else None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.preprocessing = Preprocessing.from_dict(checkpoint.get("vadapt_preprocessing"))

    def configure_callbacks(self) -> list[L.Callback]:
        return [DrawCurves(), ExportAdapterOnFitEnd()]  # curves first: the summary names curves.png


#: the shared arguments of ``BaseTask.__init__`` and their defaults
SHARED_DEFAULTS: dict[str, Any] = {
    name: p.default for name, p in inspect.signature(BaseTask.__init__).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
}


class ExportAdapterOnFitEnd(L.Callback):
    """Writes ``adapter.safetensors`` into the run's log directory when ``fit`` finishes."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from pathlib import Path

        from vadapt.checkpoint import save_adapter

        if trainer.sanity_checking or getattr(trainer, "fast_dev_run", False):
            return
        # trainer.log_dir is a collective (broadcast) under DDP: every rank must ask, then only rank 0 writes
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        if not trainer.is_global_zero:
            return
        path = save_adapter(pl_module, folder / "adapter.safetensors")
        print(f"adapter checkpoint: {path} ({path.stat().st_size / 1e6:.2f} MB)")
        for line in fit_summary(trainer, pl_module, path):
            print(line)


#: metrics shown in the summary at the end of fitting, in this order, where the task logs them
SUMMARY_METRICS = ("miou", "mdice", "iou", "f1", "precision", "recall", "oa", "macc", "loss")
CURVES = "curves.png"  # beside metrics.csv
CURVE_METRICS = 3  # charts of scores in curves.png, besides the loss


class DrawCurves(L.Callback):
    """Redraws ``curves.png`` beside the run's ``metrics.csv`` (a ``CSVLogger``'s) at the end of every validation
    while fitting and when fitting ends (when the last training epoch's values are in)."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self.draw(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.draw(trainer)

    @staticmethod
    def draw(trainer: L.Trainer) -> Path | None:
        """Redraw the picture (on the main process; nothing without a ``CSVLogger``); its path, or None."""
        from lightning.pytorch.loggers import CSVLogger

        csv_loggers = [logger for logger in trainer.loggers if isinstance(logger, CSVLogger)]
        if not csv_loggers or not trainer.is_global_zero:  # fast_dev_run: Lightning's dummy logger only
            return None
        csv_loggers[0].save()  # writes the values logged since its last flush
        folder = Path(csv_loggers[0].log_dir)
        return write_curves(folder / "metrics.csv", folder / CURVES)


def write_curves(metrics: Path, picture: Path) -> Path | None:
    """Draw the per-epoch loss and main scores of ``metrics`` (a ``CSVLogger`` file) into ``picture``, replaced
    whole (never seen half-written); None, and nothing written, while ``metrics`` holds no epoch-level values."""
    from vadapt.visualize import curves_picture, read_epoch_metrics

    if not metrics.is_file():
        return None
    panels = curve_panels(read_epoch_metrics(metrics))
    if not panels:
        return None
    tmp = picture.with_name(f".{picture.name}.tmp.png")
    run = "/".join(metrics.parent.parts[-3:])  # e.g. quickstart/lightning_logs/version_0
    curves_picture(panels, title=f"metrics per epoch: {run}").save(tmp)
    return tmp.replace(picture)


def curve_panels(series: Mapping[str, Sequence[tuple[float, float]]], most: int = CURVE_METRICS) -> list[tuple]:
    """The charts of ``curves.png``: the loss, then up to ``most`` scores (those of :data:`SUMMARY_METRICS` first,
    in that order, then the others as logged), each with its ``train`` and ``val`` lines where logged."""
    names = list(dict.fromkeys(key.split("/", 1)[1] for key in series if key.startswith(("train/", "val/"))))
    scores = [n for n in SUMMARY_METRICS if n in names and n != "loss"]
    scores += [n for n in names if n not in scores and n != "loss"]
    panels = []
    for name in ["loss", *scores[:most]]:
        lines = {stage: series[f"{stage}/{name}"] for stage in ("train", "val") if f"{stage}/{name}" in series}
        if lines:
            panels.append((name, lines))
    return panels


def fit_summary(trainer: L.Trainer, task: BaseTask, adapter: Path) -> list[str]:
    """The lines printed when fitting ends: the last validation metrics, where the metrics and pictures are, and
    the command that predicts with the new adapter (chosen by what the task can do, not by its class)."""
    values = {k.split("/", 1)[1]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    shown = [f"{name} {values[name]:.3f}" for name in SUMMARY_METRICS if name in values][:5]
    lines = [f"last validation: {', '.join(shown)}"] if shown else []
    folder = adapter.parent  # the log directory (not asked again: trainer.log_dir is a collective under DDP)
    logged = [str(p) for p in (folder / "metrics.csv", folder / CURVES, folder / "predictions") if p.exists()]
    if logged:
        lines.append(f"metrics and pictures: {', '.join(logged)}")
    caps = task.capabilities
    if caps.output == "class_map" and caps.tiles and caps.prompts != "required":
        inputs = "--input-a BEFORE/ --input-b AFTER/" if caps.num_inputs == 2 else "--input IMAGES/"
        lines.append(f"predict: vadapt infer --checkpoint {adapter} {inputs} --output MASKS/")
    elif caps.input == "point_cloud":
        lines.append(f"predict: vadapt predict-points --checkpoint {adapter} --input CLOUDS/ --output OUT/")
    elif caps.output == "generated":
        lines.append(f'generate: vadapt generate --checkpoint {adapter} --prompt "..." --output OUT/')
    return lines
