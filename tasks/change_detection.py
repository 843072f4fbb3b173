"""Bi-temporal change detection with a frozen, adapted Siamese encoder: PeftCD.

PeftCD (Dong, Hu, Wang, Chen, Meng: "PeftCD: Leveraging Vision Foundation Models with Parameter-Efficient
Fine-Tuning for Remote Sensing Change Detection", IEEE JSTARS 2026, arXiv:2509.09572; official code
https://github.com/dyzy41/PeftCD). One frozen vision foundation model with LoRA or a bottleneck adapter
encodes both dates (shared weights); feature levels are exchanged between the two branches; one light
decoder turns each branch into change logits; both are trained with cross-entropy and averaged at inference,
with sliding-window inference (tile 256, stride 128, mean of overlaps) on images larger than a tile.

Each validation epoch saves a picture of a few validation pairs (before | after | truth | prediction, titled, with
a legend) to ``<log_dir>/predictions/epoch_NNN.png``. :class:`ChangeMaskWriter` writes ``vadapt predict`` results
as PNGs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import nn

from vadapt.adapters import AdapterConfig
from vadapt.bands import RGB
from vadapt.contracts import TaskCapabilities
from vadapt.tiling import sliding_window

from .base import BaseTask
from .change_heads import DepthFusionChangeDecoder, PyramidChangeDecoder, exchange_levels
from .metrics import stat_scores

CHANGED = 1  # class index of "changed"


class ChangeDetectionTask(BaseTask):
    """PeftCD: two-class change map from two co-registered images ``(B, len(bands), H, W)``.

    Batches are dicts with ``image_a``, ``image_b`` (float, raw band values, normalised inside the model with
    ``mean`` / ``std``) and ``mask`` (long; 0 unchanged, 1 changed, ``ignore_index`` unknown).

    Architecture (official code: ``SAM2CD.py``, ``DINO3CD.py``, ``utils/exchange.py``, ``ModelFactory.py``):

    * Siamese encoder: the one ``self.backbone`` (frozen, with ``adapter``) runs on both dates in one batch,
      so the weights are shared by construction;
    * layer exchange: the maps of ``exchange_levels`` (default every other level from the first, as the
      official ``LAYER`` mode: levels 0 and 2) swap branches; no difference / concatenation fusion;
    * decoder (shared by both branches, :mod:`vadapt.tasks.change_heads`): ``pyramid`` (official SAM2CD: FPN +
      top-down residual blocks) for multi-stride backbones, ``depth_fusion`` (official DINO3CD: per-pixel
      level weighting + depthwise ASPP + upsampling head) for single-stride ViTs; ``auto`` picks as the paper;
    * loss: the mean of the cross-entropies of the two branch logits (official ``loss_weights: [1, 1]`` / 2);
      prediction: their mean.

    Class balance and the decision rule are config choices (not in the paper; defaults keep its behaviour):
    ``class_weights`` weighs the cross-entropy per class, and ``change_threshold`` moves the decision: a pixel
    is "changed" where p(changed) > ``change_threshold``. The threshold acts in :meth:`class_logits` (what
    ``vadapt infer`` and the app call), :meth:`predict_step` and the logged metrics, by subtracting
    ``log(t / (1 - t))`` from the changed logit (:meth:`decision_logits`); :meth:`forward` and the loss stay raw.

    Deviations from the paper / official code:

    * DINOv3 ViT-L/16 -> DINOv2 ViT-L/14 (``vit_large_patch14_dinov2``): no DINOv3 in timm here. Same layers
      (5, 11, 17, 23, final norm applied).
    * SAM 2: the backbone's features are SAM 2's own (frozen, pretrained) FPN-neck maps (256 channels, strides
      4, 8, 16) instead of the four raw Hiera stage outputs (144-1152 channels, strides 4-32); the decoder's own
      FPN then maps 256 -> ``decoder_channels`` over three levels (exchange at levels 0, 2 as officially).
    * Bottleneck adapter: vadapt's ``BottleneckConfig`` (AdaptFormer-style, zero-initialised, beside the MLP)
      stands in for the official pre-block adapter ``x + GELU(W2 GELU(W1 x))``; with ``adapter_dim: 32`` the
      parameter count is identical.
    * Decoder heads run at stride ~4 and the logits are resized bilinearly (official: last conv at stride 2 /
      full resolution), see the decoder classes; the official DINO decoder's unused image branch is left out.
    * Schedule: AdamW with linear warm-up then poly decay (power 3 as officially) to 0, without the official
      floor of ``min_lr = lr / 10``; cross-entropy honours ``ignore_index`` (the official labels have none).

    Trainable parameters, ours vs the official modules (the paper prints no count; docs/change_detection.md):
    SAM 2 Hiera-L + LoRA r=8: 7,760,514 (LoRA 867,456 = official; decoder 6,893,058) vs 10,152,322;
    ViT-L + LoRA r=8: 2,721,030 (LoRA 786,432 = official; decoder 1,934,598) vs 2,862,470.
    """

    CAPABILITIES = TaskCapabilities("image_pair", "class_map", tiles=True)  # class_logits(image_a, image_b)

    def __init__(
        self,
        backbone: str = "sam2_hiera_l",
        weights: str | None = None,
        bands: tuple[str, ...] = RGB,
        num_classes: Literal[2] = 2,
        class_names: tuple[str, str] = ("unchanged", "changed"),
        adapter: AdapterConfig | None = None,
        decoder: Literal["auto", "pyramid", "depth_fusion"] = "auto",
        decoder_channels: int = 256,
        exchange_levels: list[int] | None = None,
        ignore_index: int | None = 255,
        class_weights: list[float] | None = None,
        change_threshold: float = 0.5,
        img_size: int | None = None,
        tile_size: int = 256,
        tile_stride: int = 128,
        preview_images: int = 4,
        lr: float = 3e-4,
        weight_decay: float = 1e-4,
        poly_power: float = 3.0,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            backbone: registry name (``vadapt list backbones``); the paper uses SAM 2 Hiera-L and a ViT-L.
            weights: ``None`` (random), ``"pretrained"`` or a path to the upstream checkpoint file.
            bands: band names of both dates, matched by name to the pretrained first layer.
            num_classes: always 2 (unchanged, changed); ``class_names`` names them.
            adapter: PEFT inside the shared encoder, e.g. ``{class_path: vadapt.adapters.LoraConfig,
                init_args: {r: 8, lora_alpha: 32, lora_dropout: 0.1}}`` (paper) or ``BottleneckConfig``;
                ``None`` = frozen encoder (the paper's "Frozen Encoder" ablation).
            decoder: ``auto`` (``depth_fusion`` for single-stride backbones, else ``pyramid``), or either one.
            decoder_channels: decoder width (paper: 256).
            exchange_levels: feature levels swapped between the dates; default every other level from 0.
            ignore_index: label value excluded from loss and metrics (None = none).
            class_weights: cross-entropy weights ``[unchanged, changed]``, e.g. ``[1.0, 3.0]`` where change is
                rare in the training pairs and the model learns to miss it; ``None``: equal (the paper).
            change_threshold: a pixel is predicted "changed" where p(changed) > ``change_threshold`` (0.5: plain
                argmax, the paper). Lower it (e.g. 0.2) to trade precision for recall, typically on images
                unlike the training pairs (another city, sensor or season). It shifts the changed logit by
                ``-log(t / (1 - t))`` in :meth:`class_logits`, :meth:`predict_step` and the logged
                metrics (not in the training loss), so it is stored with the adapter checkpoint and ``vadapt
                infer`` / the app honour it: the probabilities ``vadapt infer --probabilities`` writes are then
                relative to the threshold (0.5 in them means p(changed) = ``change_threshold``).
            img_size: explicit position-embedding size for ViT backbones (default: the pretraining size).
            tile_size, tile_stride: sliding-window inference for validation, test and predict on pairs larger
                than ``tile_size`` (paper: 256, 128; overlaps averaged).
            preview_images: validation pairs drawn in the per-epoch picture (0 = none).
            lr, weight_decay, poly_power: :class:`BaseTask`'s (AdamW, linear warm-up, poly decay) with the paper's
                defaults: 3e-4, 1e-4, 3 (the paper also warms up for 3000 steps: ``warmup_steps``).
            kwargs: the other arguments every task shares (:class:`BaseTask`): ``warmup_steps``, ``mean``,
                ``std``, ``extra_band_init``, ``freeze_backbone`` (``False``: the full fine-tuning baseline),
                ``grad_checkpointing``.
        """
        if num_classes != 2:
            raise ValueError(f"change detection has 2 classes (unchanged, changed); got num_classes={num_classes}")
        if len(class_names) != 2:
            raise ValueError(f"class_names needs 2 names (unchanged, changed), got {list(class_names)}")
        if tile_stride < 1 or tile_stride > tile_size:
            raise ValueError(f"tile_stride must be in 1..tile_size ({tile_size}), got {tile_stride}")
        if not 0.0 < change_threshold < 1.0:
            raise ValueError(f"change_threshold must be a probability in (0, 1), got {change_threshold}")
        if class_weights is not None and (len(class_weights) != 2 or min(class_weights) < 0
                                          or max(class_weights) <= 0):
            raise ValueError(f"class_weights needs 2 values >= 0, not both 0 ([unchanged, changed]), got "
                             f"{list(class_weights)}")
        super().__init__(lr=lr, weight_decay=weight_decay, poly_power=poly_power, **kwargs)

    def configure_head(self) -> None:
        hp = self.hparams
        channels, strides = self.backbone.out_channels, self.backbone.strides
        levels = range(0, len(channels), 2) if hp["exchange_levels"] is None else hp["exchange_levels"]
        bad = [i for i in levels if not 0 <= i < len(channels)]
        if bad:
            raise ValueError(f"exchange_levels {bad} out of range: {hp['backbone']} gives {len(channels)} levels "
                             f"(0..{len(channels) - 1})")
        self.exchange = tuple(sorted(set(levels)))
        kind = hp["decoder"]
        if kind == "auto":
            kind = "depth_fusion" if len(set(strides)) == 1 else "pyramid"
        if kind == "pyramid":
            self.decoder: nn.Module = PyramidChangeDecoder(channels, 2, hp["decoder_channels"])
        elif kind == "depth_fusion":
            self.decoder = DepthFusionChangeDecoder(channels, 2, hp["decoder_channels"])
        else:
            raise ValueError(f"decoder must be auto, pyramid or depth_fusion; got {kind!r}")

    def configure_losses(self) -> None:
        ignore = self.hparams["ignore_index"]
        weights = self.hparams.get("class_weights")  # .get: checkpoints written before the option existed
        weight = None if weights is None else torch.tensor(weights, dtype=torch.float)
        self.criterion = nn.CrossEntropyLoss(weight=weight, ignore_index=-100 if ignore is None else ignore)

    def configure_metrics(self) -> None:
        # "fit", not "train": nn.Module.train is a method, so it cannot be a ModuleDict key
        self.stats = nn.ModuleDict({s: stat_scores(2, self.hparams["ignore_index"]) for s in ("fit", "val", "test")})
        self._preview: list[tuple] = []

    # ---- model -------------------------------------------------------------------------------------------
    def branch_logits(self, image_a: torch.Tensor, image_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw ``(B, C, H, W)`` pair -> the two branches' logits, each ``(B, 2, H, W)``."""
        if image_a.shape != image_b.shape:
            raise ValueError(f"the two dates must have the same shape, got {tuple(image_a.shape)} and "
                             f"{tuple(image_b.shape)}")
        n = image_a.shape[0]
        feats = self.backbone(self.normalise(torch.cat([image_a, image_b])))  # one encoder, both dates
        feats_a, feats_b = exchange_levels([f[:n] for f in feats], [f[n:] for f in feats], self.exchange)
        logits = self.decoder([torch.cat([a, b]) for a, b in zip(feats_a, feats_b)])
        logits = F.interpolate(logits, size=image_a.shape[-2:], mode="bilinear", align_corners=False)
        return logits[:n], logits[n:]

    def forward(self, image_a: torch.Tensor, image_b: torch.Tensor) -> torch.Tensor:
        """Raw ``(B, len(bands), H, W)`` dates -> change logits ``(B, 2, H, W)`` (mean of the two branches)."""
        logits_a, logits_b = self.branch_logits(image_a, image_b)
        return (logits_a + logits_b) / 2

    def set_change_threshold(self, threshold: float) -> None:
        """Move the decision of a trained task (no retraining): "changed" where p(changed) > ``threshold`` from
        now on, in every prediction path; stored in adapter checkpoints saved afterwards
        (``vadapt.checkpoint.save_adapter``). ``vadapt test --ckpt_path`` cannot do it from the command line:
        LightningCLI takes the model's arguments from the checkpoint there, over ``--model.init_args``."""
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"change_threshold must be a probability in (0, 1), got {threshold}")
        self.hparams["change_threshold"] = float(threshold)

    def decision_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` ``(B, 2, ...)`` with the changed logit lowered by ``log(t / (1 - t))``, ``t`` =
        ``change_threshold``: their argmax (softmax > 0.5) is "p(changed) > t". Unchanged at t = 0.5."""
        threshold = float(self.hparams.get("change_threshold", 0.5))
        if threshold == 0.5:
            return logits
        shift = torch.zeros(logits.shape[1], dtype=logits.dtype, device=logits.device)
        shift[CHANGED] = math.log(threshold / (1.0 - threshold))
        return logits - shift.view(1, -1, *([1] * (logits.ndim - 2)))

    def class_logits(self, image_a: torch.Tensor, image_b: torch.Tensor) -> torch.Tensor:
        """What ``vadapt infer`` and the app blend over tiles: :meth:`forward`'s logits shifted by
        ``change_threshold`` (:meth:`decision_logits`), so argmax is the configured decision."""
        return self.decision_logits(self(image_a, image_b))

    def tiled_logits(self, image_a: torch.Tensor, image_b: torch.Tensor) -> torch.Tensor:
        """``forward`` by sliding window (``tile_size`` / ``tile_stride``, overlaps averaged); a pair no larger
        than one tile gets exactly ``forward``'s result."""
        bands = image_a.shape[1]
        return sliding_window(lambda x: self(x[:, :bands], x[:, bands:]), torch.cat([image_a, image_b], 1),
                              self.hparams["tile_size"], self.hparams["tile_stride"], blend="mean")

    # ---- steps -------------------------------------------------------------------------------------------
    def _shared_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        image_a, image_b, mask = batch["image_a"], batch["image_b"], batch["mask"]
        if stage == "train":
            logits_a, logits_b = self.branch_logits(image_a, image_b)
            loss = (self.criterion(logits_a, mask) + self.criterion(logits_b, mask)) / 2
            logits = (logits_a + logits_b) / 2
        else:
            logits = self.tiled_logits(image_a, image_b)
            loss = self.criterion(logits, mask)
        prediction = self.decision_logits(logits).argmax(1)
        self.stats["fit" if stage == "train" else stage].update(prediction, mask)
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=stage == "train", on_epoch=True,
                 batch_size=len(logits))
        if stage == "val" and len(self._preview) < self.hparams["preview_images"]:
            take = self.hparams["preview_images"] - len(self._preview)
            for a, b, truth, pred in zip(image_a[:take], image_b[:take], mask[:take], prediction[:take]):
                self._preview.append((a.float().cpu().numpy(), b.float().cpu().numpy(), truth.cpu().numpy(),
                                      pred.cpu().numpy()))
        return loss

    def _log_scores(self, stage: str) -> None:
        metric = self.stats["fit" if stage == "train" else stage]
        tp, fp, _, fn, _ = (t.double() for t in metric.compute().unbind(-1))  # each (2,): per class
        metric.reset()

        def ratio(num: torch.Tensor, den: torch.Tensor) -> float:  # 0 when undefined, as torchmetrics
            return float(num / den) if den > 0 else 0.0

        c = CHANGED
        scores = {
            "precision": ratio(tp[c], tp[c] + fp[c]),
            "recall": ratio(tp[c], tp[c] + fn[c]),
            "f1": ratio(2 * tp[c], 2 * tp[c] + fp[c] + fn[c]),
            "iou": ratio(tp[c], tp[c] + fp[c] + fn[c]),
            "oa": ratio(tp.sum(), (tp + fn).sum()),
        }
        self.log_dict({f"{stage}/{k}": v for k, v in scores.items() if k not in ("f1", "iou")})
        self.log(f"{stage}/f1", scores["f1"], prog_bar=stage != "train")
        self.log(f"{stage}/iou", scores["iou"], prog_bar=stage != "train")

    def preview_picture(self, rows: list[tuple]):
        """before | after | truth | prediction per pair, titled, with a legend of the change colours."""
        from vadapt.visualize import change_panel

        return change_panel(rows, self.backbone.bands, self.hparams["ignore_index"], readable=True,
                            class_names=self.hparams["class_names"])

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Change map ``(B, H, W)`` long (1 = changed where p(changed) > ``change_threshold``), by sliding
        window."""
        return self.decision_logits(self.tiled_logits(batch["image_a"], batch["image_b"])).argmax(1)


class ChangeMaskWriter(BasePredictionWriter):
    """Writes each predicted change map of ``vadapt predict`` as an 8-bit PNG named like its pair (``.png``
    suffix): 0 unchanged, ``value`` changed. Use it from the YAML::

        trainer:
          callbacks:
            - class_path: vadapt.tasks.change_detection.ChangeMaskWriter
              init_args: {output_dir: runs/levir/masks}
    """

    def __init__(self, output_dir: str, value: int = 255) -> None:
        super().__init__(write_interval="batch")
        if not 1 <= value <= 255:
            raise ValueError(f"value must be in 1..255, got {value}")
        self.output_dir, self.value = Path(output_dir), value

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: torch.Tensor,
                           batch_indices: Any, batch: dict[str, Any], batch_idx: int, dataloader_idx: int) -> None:
        from PIL import Image

        for change, name, (height, width) in zip(prediction, batch["name"], batch["size"].tolist()):
            path = (self.output_dir / name).with_suffix(".png")
            path.parent.mkdir(parents=True, exist_ok=True)
            mask = (change[:height, :width] == CHANGED).to(torch.uint8).cpu().numpy() * self.value
            Image.fromarray(mask).save(path)
