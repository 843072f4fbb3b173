"""Semantic segmentation: frozen backbone + adapter + light head, cross-entropy, mIoU."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vadapt.adapters import AdapterConfig
from vadapt.bands import RGB, BandInit

from .base import BaseTask
from .heads import FPNHead, LinearHead


class SemanticSegmentationTask(BaseTask):
    """Per-pixel classification of ``(B, len(bands), H, W)`` images into ``num_classes`` classes.

    Batches are dicts with ``image`` (float, raw band values) and ``mask`` (long class ids, ``ignore_index``
    where unknown). Inputs are normalised inside the model with ``mean`` / ``std``, so training, ``vadapt
    predict`` and the app all preprocess identically.
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        weights: str | None = None,
        bands: tuple[str, ...] = RGB,
        num_classes: int = 2,
        class_names: list[str] | None = None,
        adapter: AdapterConfig | None = None,
        head: Literal["fpn", "linear"] = "fpn",
        head_channels: int = 64,
        ignore_index: int | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        warmup_steps: int = 0,
        poly_power: float = 1.0,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        img_size: int | None = None,
        extra_band_init: BandInit = "copy",
        grad_checkpointing: bool = False,
    ) -> None:
        """
        Args:
            backbone: registry name (``vadapt list backbones``).
            weights: ``None`` (random), ``"pretrained"`` or a path to the upstream checkpoint file.
            bands: input band names, matched by name to the pretrained first layer.
            num_classes: number of classes; ``class_names`` optionally names them.
            adapter: e.g. ``{class_path: vadapt.adapters.LoraConfig, init_args: {r: 8}}``; ``None`` = linear probe
                of the frozen features (only the head trains).
            head: ``"fpn"`` (multi-scale fusion) or ``"linear"`` (linear probe).
            ignore_index: mask value excluded from loss and metrics.
            lr, weight_decay, warmup_steps, poly_power: AdamW with linear warm-up then poly decay.
            mean, std: per-band input statistics (raw units); default: pretraining RGB statistics.
            img_size: explicit position-embedding size for ViT backbones (default: the pretraining size).
            extra_band_init: first-layer init of bands the pretrained model lacks.
            grad_checkpointing: recompute adapted blocks in backward to save memory.
        """
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes={num_classes}")
        super().__init__()

    def configure_head(self) -> None:
        hp = self.hparams
        channels = self.backbone.out_channels
        if hp["head"] == "linear":
            self.head: nn.Module = LinearHead(channels, hp["num_classes"])
        else:
            self.head = FPNHead(channels, hp["num_classes"], hp["head_channels"])

    def configure_losses(self) -> None:
        ignore = self.hparams["ignore_index"]
        self.criterion = nn.CrossEntropyLoss(ignore_index=-100 if ignore is None else ignore)

    def configure_metrics(self) -> None:
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

        kwargs = {"num_classes": self.hparams["num_classes"], "ignore_index": self.hparams["ignore_index"]}
        metrics = MetricCollection(
            {
                "miou": MulticlassJaccardIndex(average="macro", **kwargs),
                "acc": MulticlassAccuracy(average="micro", **kwargs),
            }
        )
        self.metrics = nn.ModuleDict(
            {f"{stage}_metrics": metrics.clone(prefix=f"{stage}/") for stage in ("train", "val", "test")}
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, len(bands), H, W)`` raw values -> logits ``(B, num_classes, H, W)``."""
        logits = self.head(self.backbone(self.normalise(image)))
        return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.criterion(logits, batch["mask"])
        metrics = self.metrics[f"{stage}_metrics"]
        metrics.update(logits.argmax(1), batch["mask"])
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=on_step, on_epoch=True, batch_size=len(logits))
        self.log_dict(metrics, prog_bar=stage != "train", on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self(batch["image"]).argmax(1)
