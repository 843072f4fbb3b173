"""Point-cloud classification: a frozen Point-MAE-style backbone, an optional adapter, the official head.

The model follows the official Point-MAE fine-tuning (``PointTransformer``, Pang et al., ECCV 2022): the
backbone turns a cloud ``(B, N, 3)`` into tokens ``(B, 1 + G, C)``, ``backbone.pool`` reduces them to one
vector (``[cls, max over patches]`` = ``2C``; an adapter may widen it, e.g. IDPT's ``[cls, prompt, max]`` =
``3C``), and the head is the official ``cls_head_finetune`` (Linear, BN, ReLU, Dropout, twice, then Linear).
The head's input width is read **after** the adapter is injected (``backbone.pooled_dim`` when the backbone
or its adapter sets it, else one dummy forward), so adapters that change the pooled width need no task change.

Loss: cross-entropy (Point-MAE's ``finetune_*`` configs use no label smoothing; ``label_smoothing`` is an
option). Metrics: overall accuracy ``oa`` (micro) and mean class accuracy ``macc`` (macro), per stage.
With ``vote > 0`` the test step averages the logits of ``vote`` randomly augmented passes (Point-MAE's
``test_vote``: per-axis scale in [2/3, 3/2] and shift in [-0.2, 0.2], here also a random point order, which
moves the farthest-point-sampling start).

Point clouds are centred and scaled into the unit sphere by the datamodule (``vadapt.data.points``), so the
task applies no image normalisation: its ``input_mean`` / ``input_std`` are empty and ``normalise`` is the
identity. Each validation epoch also saves a picture of a few clouds (front view, captioned truth -> prediction) to
``<log_dir>/predictions/epoch_NNN.png``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from vadapt.adapters import AdapterConfig
from vadapt.contracts import TaskCapabilities

from .base import UNUSED, BaseTask

#: Point-MAE's ``PointcloudScaleAndTranslate`` ranges, used by the test-time vote
VOTE_SCALE: tuple[float, float] = (2 / 3, 3 / 2)
VOTE_TRANSLATE: float = 0.2


def classification_head(in_dim: int, num_classes: int, hidden: int = 256, dropout: float = 0.5) -> nn.Sequential:
    """The official ``cls_head_finetune``: ``in_dim`` -> Linear ``hidden``, BN, ReLU, Dropout -> Linear ``hidden``,
    BN, ReLU, Dropout -> Linear ``num_classes``; truncated-normal (std 0.02) weights and zero biases, as the
    official ``_init_weights``."""
    head = nn.Sequential(
        nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )
    for m in head.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return head


def scale_and_translate(points: torch.Tensor, scale: tuple[float, float] = VOTE_SCALE,
                        translate: float = VOTE_TRANSLATE, shuffle: bool = True) -> torch.Tensor:
    """A random per-cloud, per-axis scale and shift of ``points`` ``(B, N, 3)`` (and a random point order)."""
    bsz, n, _ = points.shape
    lo, hi = scale
    factor = lo + (hi - lo) * torch.rand(bsz, 1, 3, device=points.device, dtype=points.dtype)
    shift = (torch.rand(bsz, 1, 3, device=points.device, dtype=points.dtype) * 2 - 1) * translate
    out = points * factor + shift
    if shuffle:
        order = torch.rand(bsz, n, device=points.device).argsort(dim=1)
        out = torch.gather(out, 1, order.unsqueeze(-1).expand(-1, -1, 3))
    return out


class PointClassificationTask(BaseTask):
    """Object classification of point clouds ``(B, N, 3)`` into ``num_classes`` classes.

    Batches are dicts with ``points`` (float ``(B, N, 3)``, unit-sphere normalised by the datamodule) and
    ``label`` (long ``(B,)``), as the datamodules of :mod:`vadapt.data.points` yield them.
    """

    CAPABILITIES = TaskCapabilities("point_cloud", "class_label")

    def __init__(
        self,
        backbone: str = "point_mae",
        weights: str | None = None,
        num_group: int | None = None,
        num_classes: int = 40,
        class_names: list[str] | None = None,
        adapter: AdapterConfig | None = None,
        head_hidden: int = 256,
        head_dropout: float = 0.5,
        label_smoothing: float = 0.0,
        vote: int = 0,
        preview_clouds: int = 4,
        lr: float = 5e-4,
        weight_decay: float = 0.05,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            backbone: registry name of a point backbone (``point_mae``; ``point_mae_test`` is a tiny one).
            weights: ``None`` (random), ``"pretrained"`` (the official Point-MAE ShapeNet pretrain file) or a
                path to an upstream checkpoint file.
            num_group: patch centres ``G`` (default the backbone's: 64, Point-MAE's for 1024 points; 128 for
                2048-point clouds such as ScanObjectNN).
            num_classes: number of classes; ``class_names`` optionally names them (the datamodule's
                ``class_names``: sorted class folder names).
            adapter: e.g. ``{class_path: vadapt.adapters.LoraConfig, init_args: {r: 8}}``; ``None`` = only the
                head trains (linear-probe style, with Point-MAE's MLP head).
            head_hidden, head_dropout: width and dropout of the two hidden layers of the head (256, 0.5).
            label_smoothing: of the cross-entropy (0: Point-MAE's fine-tuning configs use none).
            vote: test-time voting: ``0`` tests one plain pass; ``n > 0`` averages the logits of ``n`` randomly
                scaled, shifted and reordered passes (Point-MAE's ``test_vote`` uses 10). Test only.
            preview_clouds: validation clouds drawn in the per-epoch picture (0 = none).
            lr, weight_decay: :class:`BaseTask`'s (AdamW) with Point-MAE's fine-tuning defaults (5e-4, 0.05).
            kwargs: the other arguments every task shares (:class:`BaseTask`): ``warmup_steps``, ``poly_power``
                (linear warm-up then poly decay), ``freeze_backbone`` (``False``: full fine-tuning, as the official
                Point-MAE fine-tuning, or training from scratch with ``weights: null``), ``grad_checkpointing``.
                Point clouds have no bands: no ``mean``, ``std``, ``extra_band_init``.
        """
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes={num_classes}")
        if vote < 0:
            raise ValueError(f"vote must be >= 0 (0 = no test-time voting), got {vote}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        super().__init__(lr=lr, weight_decay=weight_decay, mean=UNUSED, std=UNUSED, extra_band_init=UNUSED, **kwargs)

    # ---- models ------------------------------------------------------------------------------------------
    def backbone_options(self) -> dict[str, Any]:
        return {"num_group": self.hparams["num_group"]} if self.hparams.get("num_group") else {}

    def pooled_width(self) -> int:
        """Width of ``backbone.pool(tokens)``: each prefix token and the max over patches,
        ``(num_prefix_tokens + 1) * C`` (``[cls, max]`` = 2C; IDPT's prompt token makes it 3C)."""
        return (self.backbone.num_prefix_tokens + 1) * self.backbone.embed_dim

    def configure_head(self) -> None:
        hp = self.hparams
        self.head = classification_head(self.pooled_width(), hp["num_classes"], hp["head_hidden"], hp["head_dropout"])

    def configure_losses(self) -> None:
        self.criterion = nn.CrossEntropyLoss(label_smoothing=float(self.hparams["label_smoothing"]))

    def configure_metrics(self) -> None:
        k = self.hparams["num_classes"]
        # "fit", not "train": nn.Module.train is a method, so it cannot be a ModuleDict key
        self.accuracy = nn.ModuleDict({
            stage: nn.ModuleDict({
                "oa": MulticlassAccuracy(k, average="micro"),
                "macc": MulticlassAccuracy(k, average="macro"),
            })
            for stage in ("fit", "val", "test")
        })
        self._preview: list[tuple] = []

    # ---- forward -------------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        """Point-PEFT: fill an empty point-prior bank with the frozen encoder's features of the training set
        (official: built once before fine-tuning), so ``vadapt fit`` trains with the prior as the paper does."""
        super().on_fit_start()
        shared = getattr(self.backbone, "point_peft", None)
        if shared is None or not getattr(shared, "use_prior", False) or shared.bank_size > 0 or self._trainer is None:
            return
        from torch.utils.data import DataLoader

        from vadapt.adapters.point_peft import point_prior_features

        data = self.trainer.datamodule
        if data is None:
            return
        # every training cloud once, without augmentation (a shuffled loader may drop the last partial batch)
        make = getattr(data, "make_dataset", None)
        dataset = make("train", None) if make is not None else data.train_dataloader().dataset
        features, labels = [], []
        for batch in DataLoader(dataset, batch_size=32, shuffle=False):
            features.append(point_prior_features(self.backbone, batch["points"].to(self.device)))
            labels.append(batch["label"].to(self.device))
        shared.build_prior_bank(torch.cat(features), torch.cat(labels))

    def pool(self, points: torch.Tensor) -> torch.Tensor:
        """Cloud ``(B, N, 3)`` -> pooled features ``(B, D)`` (``backbone.pool`` of its tokens)."""
        return self.backbone.pool(self.backbone.forward_features(self.normalise(points)))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Cloud ``(B, N, 3)`` -> logits ``(B, num_classes)``."""
        return self.head(self.pool(points))

    def vote_logits(self, points: torch.Tensor, passes: int | None = None) -> torch.Tensor:
        """Mean logits of ``passes`` (default ``vote``) randomly scaled, shifted and reordered copies of
        ``points``; a plain forward when ``passes`` is 0."""
        passes = self.hparams["vote"] if passes is None else passes
        if passes <= 0:
            return self(points)
        return torch.stack([self(scale_and_translate(points)) for _ in range(passes)]).mean(0)

    # ---- steps -------------------------------------------------------------------------------------------
    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        points, label = batch["points"], batch["label"]
        logits = self.vote_logits(points) if stage == "test" else self(points)
        loss = self.criterion(logits, label)
        prediction = logits.argmax(1)
        for metric in self.accuracy["fit" if stage == "train" else stage].values():
            metric.update(prediction, label)
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=stage == "train", on_epoch=True,
                 batch_size=len(logits))
        if stage == "val" and len(self._preview) < self.hparams["preview_clouds"]:
            take = self.hparams["preview_clouds"] - len(self._preview)
            for cloud, truth, pred in zip(points[:take], label[:take], prediction[:take]):
                self._preview.append((cloud.float().cpu().numpy(), int(truth), int(pred)))
        return loss

    def _log_scores(self, stage: str) -> None:
        metrics = self.accuracy["fit" if stage == "train" else stage]
        if not metrics["oa"].update_called:  # e.g. a stage with no batches
            return
        values = {name: float(metric.compute()) for name, metric in metrics.items()}
        for metric in metrics.values():
            metric.reset()
        self.log(f"{stage}/macc", values["macc"])  # already global: torchmetrics syncs across processes
        self.log(f"{stage}/oa", values["oa"], prog_bar=stage != "train")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Class ids ``(B,)`` (with test-time voting when ``vote > 0``)."""
        return self.vote_logits(batch["points"]).argmax(1)

    # ---- picture -----------------------------------------------------------------------------------------
    def preview_picture(self, rows: list[tuple]):
        """Front views (x right, y up, shaded by depth z) of the rows' clouds, captioned ``truth -> prediction``
        (green when right, red when wrong) under a title that says so; one tile per cloud."""
        from PIL import Image, ImageDraw

        from vadapt.visualize import TEXT_COLOUR, text_font

        font, title = text_font(), "truth -> prediction (green: right, red: wrong)"
        size, caption, top = 200, 24, 30
        names = self.hparams["class_names"] or [str(i) for i in range(self.hparams["num_classes"])]
        cols = min(len(rows), 4)
        lines = math.ceil(len(rows) / cols)
        width = max(cols * size, int(font.getlength(title)) + 12)
        picture = Image.new("RGB", (width, top + lines * (size + caption)), "white")
        draw = ImageDraw.Draw(picture)
        draw.text((6, 6), title, fill=TEXT_COLOUR, font=font)
        for i, (cloud, truth, pred) in enumerate(rows):
            x0, y0 = (i % cols) * size, top + (i // cols) * (size + caption)
            xyz = np.asarray(cloud, dtype=np.float32)
            radius = float(np.abs(xyz).max()) or 1.0
            px = ((xyz[:, 0] / radius + 1) / 2 * (size - 9) + 4).astype(int)
            py = ((1 - (xyz[:, 1] / radius + 1) / 2) * (size - 9) + 4).astype(int)
            depth = (xyz[:, 2] / radius + 1) / 2  # 0 (far) .. 1 (near)
            for j in np.argsort(xyz[:, 2]):  # far points first
                shade = int(200 - 170 * depth[j])
                draw.point((x0 + int(px[j]), y0 + int(py[j])), fill=(shade, shade, 255))
            colour = (0, 140, 0) if truth == pred else (200, 0, 0)
            text = f"{names[truth] if truth < len(names) else truth} -> {names[pred] if pred < len(names) else pred}"
            draw.text((x0 + 4, y0 + size + 2), text, fill=colour, font=font)
        return picture
