"""Semantic segmentation: frozen backbone + adapter + decode head, cross-entropy (+ optional soft Dice),
mmseg-style metrics.

Each validation epoch also saves a picture of a few validation images (image | truth | prediction, titled, with a
class legend) to ``<log_dir>/predictions/epoch_NNN.png``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vadapt.adapters import AdapterConfig
from vadapt.bands import RGB
from vadapt.contracts import TaskCapabilities

from .base import BaseTask
from .heads import FPNHead, LinearHead, UPerNetHead
from .metrics import segmentation_scores, stat_scores


class SemanticSegmentationTask(BaseTask):
    """Per-pixel classification of ``(B, len(bands), H, W)`` images into ``num_classes`` classes.

    Batches are dicts with ``image`` (float, raw band values) and ``mask`` (long class ids, ``ignore_index``
    where unknown). Inputs are normalised inside the model with ``mean`` / ``std``, so training, ``vadapt
    predict`` and the app all preprocess identically.
    """

    CAPABILITIES = TaskCapabilities("image", "class_map", tiles=True)

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        weights: str | None = None,
        bands: tuple[str, ...] = RGB,
        num_classes: int = 2,
        class_names: list[str] | None = None,
        adapter: AdapterConfig | None = None,
        head: Literal["uper", "fpn", "linear"] = "uper",
        head_channels: int = 256,
        ignore_index: int | None = 255,
        class_weights: list[float] | None = None,
        dice_weight: float = 0.0,
        img_size: int | None = None,
        preview_images: int = 4,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            backbone: registry name (``vadapt list backbones``).
            weights: ``None`` (random), ``"pretrained"`` or a path to the upstream checkpoint file.
            bands: input band names, matched by name to the pretrained first layer.
            num_classes: number of classes; ``class_names`` optionally names them.
            adapter: e.g. ``{class_path: vadapt.adapters.LoraConfig, init_args: {r: 8}}``; ``None`` = linear probe
                of the frozen features (only the head trains).
            head: ``"uper"`` (UPerNet; ViT maps go through a ViTDet pyramid first), ``"fpn"`` (light
                multi-scale fusion) or ``"linear"`` (linear probe); ``head_channels`` is its width.
            ignore_index: mask value excluded from loss and metrics (255, as in mmsegmentation; None = none).
            class_weights: per-class cross-entropy weights (e.g. to counter a rare class); ``None``: equal.
            dice_weight: loss = cross-entropy + ``dice_weight`` x soft Dice loss (:func:`soft_dice_loss`: one minus
                the mean soft Dice of the foreground classes ``1..num_classes-1``, from the softmax, pooled over the
                batch's non-ignored pixels). Dice does not care how rare a class is, so it keeps thin or small
                structures (roads on a map, 2 % of the pixels) from collapsing to background; 0: cross-entropy only.
            img_size: explicit position-embedding size for ViT backbones (default: the pretraining size).
            preview_images: validation images drawn in the per-epoch picture (0 = none).
            kwargs: the arguments every task shares (:class:`BaseTask`): ``lr``, ``weight_decay``,
                ``warmup_steps``, ``poly_power`` (AdamW with linear warm-up then poly decay), ``mean``, ``std``,
                ``extra_band_init``, ``freeze_backbone``, ``grad_checkpointing``.
        """
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes={num_classes}")
        if dice_weight < 0:
            raise ValueError(f"dice_weight must be >= 0, got {dice_weight}")
        super().__init__(**kwargs)

    def configure_head(self) -> None:
        hp = self.hparams
        channels = self.backbone.out_channels
        if hp["head"] == "linear":
            self.head: nn.Module = LinearHead(channels, hp["num_classes"])
        elif hp["head"] == "fpn":
            self.head = FPNHead(channels, hp["num_classes"], hp["head_channels"])
        elif hp["head"] == "uper":
            self.head = UPerNetHead(channels, self.backbone.strides, hp["num_classes"], hp["head_channels"])
        else:
            raise ValueError(f"head must be uper, fpn or linear; got {hp['head']!r}")

    def configure_losses(self) -> None:
        ignore = self.hparams["ignore_index"]
        weights = self.hparams.get("class_weights")
        if weights is not None and (len(weights) != self.hparams["num_classes"] or min(weights) < 0):
            raise ValueError(f"class_weights needs one value >= 0 per class ({self.hparams['num_classes']}), "
                             f"got {weights}")
        weight = None if weights is None else torch.tensor(weights, dtype=torch.float)
        self.criterion = nn.CrossEntropyLoss(weight=weight, ignore_index=-100 if ignore is None else ignore)

    def configure_metrics(self) -> None:
        num_classes, ignore = self.hparams["num_classes"], self.hparams["ignore_index"]
        # "fit", not "train": nn.Module.train is a method, so it cannot be a ModuleDict key
        self.stats = nn.ModuleDict({stage: stat_scores(num_classes, ignore) for stage in ("fit", "val", "test")})
        self._preview: list[tuple] = []

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, len(bands), H, W)`` raw values -> logits ``(B, num_classes, H, W)``."""
        logits = self.head(self.backbone(self.normalise(image)))
        return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.criterion(logits, batch["mask"])
        dice_weight = float(self.hparams.get("dice_weight", 0.0))  # .get: checkpoints from before the option
        if dice_weight > 0:
            loss = loss + dice_weight * soft_dice_loss(logits, batch["mask"], self.hparams["ignore_index"])
        prediction = logits.argmax(1)
        self.stats["fit" if stage == "train" else stage].update(prediction, batch["mask"])
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=stage == "train", on_epoch=True,
                 batch_size=len(logits))
        if stage == "val" and len(self._preview) < self.hparams["preview_images"]:
            take = self.hparams["preview_images"] - len(self._preview)
            for img, truth, pred in zip(batch["image"][:take], batch["mask"][:take], prediction[:take]):
                self._preview.append((img.float().cpu().numpy(), truth.cpu().numpy(), pred.cpu().numpy()))
        return loss

    def _log_scores(self, stage: str) -> None:
        metric = self.stats["fit" if stage == "train" else stage]
        tp, fp, _, fn, _ = metric.compute().unbind(-1)
        metric.reset()
        scores = segmentation_scores(tp, fp, fn)
        values = {f"{stage}/{k}": float(scores[k]) for k in ("mdice", "macc", "aacc")}
        names = self.hparams["class_names"] or [str(i) for i in range(self.hparams["num_classes"])]
        values.update({f"{stage}/iou_{name}": float(v) for name, v in zip(names, scores["iou"])})
        self.log_dict(values)  # already global: torchmetrics syncs the counts across processes
        self.log(f"{stage}/miou", float(scores["miou"]), prog_bar=stage != "train")

    def preview_picture(self, rows: list[tuple]):
        """image | truth | prediction per row, titled, with a legend of the classes."""
        from vadapt.visualize import prediction_panel

        names = self.hparams["class_names"] or [str(i) for i in range(self.hparams["num_classes"])]
        return prediction_panel(rows, self.backbone.bands, self.hparams["ignore_index"], readable=True,
                                class_names=names)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self(batch["image"]).argmax(1)


def soft_dice_loss(logits: torch.Tensor, mask: torch.Tensor, ignore_index: int | None = None,
                   smooth: float = 1.0) -> torch.Tensor:
    """``1 - mean_c Dice_c`` over the foreground classes ``c = 1..K-1`` of ``logits`` ``(B, K, H, W)``.

    ``Dice_c = (2 sum(p_c y_c) + smooth) / (sum(p_c) + sum(y_c) + smooth)`` with ``p`` the softmax and ``y`` the
    one-hot ``mask`` ``(B, H, W)``, sums pooled over the batch's pixels whose mask is not ``ignore_index``. A
    class absent from the batch has Dice near 1 only if it is not predicted either. Differentiable in ``logits``.
    """
    num_classes = logits.shape[1]
    if num_classes < 2:
        raise ValueError(f"soft Dice needs at least 2 classes (background + foreground), got {num_classes}")
    valid = torch.ones_like(mask, dtype=torch.bool) if ignore_index is None else mask != ignore_index
    probs = logits.float().softmax(1)[:, 1:] * valid.unsqueeze(1)  # (B, K-1, H, W), 0 where ignored
    target = F.one_hot(torch.where(valid, mask, 0), num_classes)[..., 1:].permute(0, 3, 1, 2)
    target = target.to(probs.dtype) * valid.unsqueeze(1)
    dims = (0, 2, 3)
    dice = (2 * (probs * target).sum(dims) + smooth) / (probs.sum(dims) + target.sum(dims) + smooth)
    return 1 - dice.mean()
