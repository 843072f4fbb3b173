"""Part segmentation of point clouds (ShapeNetPart style): a frozen Point-MAE backbone, an adapter, the official head.

The model follows the official Point-MAE part-segmentation model (``segmentation/models/pt.py``, Pang et al.,
ECCV 2022, Sec. 4.3), re-written here:

1. The backbone groups the cloud ``(B, N, 3)`` into ``G`` centres ``(B, G, 3)`` and tokens, and runs its blocks
   (each called on ``x + pos``); the outputs of ``feature_blocks`` (official: blocks 3, 7, 11 of 12) pass the
   backbone's final LayerNorm and their ``G`` patch tokens are concatenated: ``(B, G, F)``, ``F = 3C`` (1152).
2. Global features: max and mean over the ``G`` tokens ``(B, 2F)``, and with ``num_categories > 0`` the
   object category's one-hot ``(B, K)`` through ``label_conv`` (1x1 conv ``K -> 64`` without bias, BN,
   LeakyReLU 0.2); both are repeated for every point: ``(B, 2F + 64, N)`` (2368).
3. Feature propagation (PointNet++ ``PointNetFeaturePropagation``): each of the ``N`` points takes the
   inverse-squared-distance weighted mean of the features of its 3 nearest centres ``(B, F, N)``; its own
   ``xyz`` is prepended (``F + 3`` = 1155) and a point-wise MLP (1x1 conv, BN, ReLU) ``-> 4C -> 1024`` follows.
4. Point-wise head: ``cat[propagated, global]`` ``(B, 1024 + 2F + 64, N)`` (3392) -> conv 512, BN, ReLU,
   Dropout 0.5 -> conv 256, BN, ReLU -> conv ``num_parts`` (50): logits ``(B, num_parts, N)``.

Loss: cross-entropy over all points and all ``num_parts`` logits (the official ``log_softmax`` + NLL).
Metrics (:class:`PartIoU`, the ShapeNetPart protocol of PointNet++ / Point-MAE): a shape's IoU is the mean
part-IoU over its category's parts (a part absent from both prediction and truth counts 1); ``instance_miou``
is the mean over shapes, ``class_miou`` the mean over categories of their shapes' mean. Predictions are the
argmax over the shape's category's parts only (``category_parts``), as the official evaluation.

``category_parts`` (category index -> its global part ids) can be given, or is read from the datamodule's
``category_parts`` when fitting starts (``ShapeNetPartDataModule``, ``PointFolderDataModule(parts=True)``).

Differences from the official model: our backbone keeps its class token (and an adapter's prefix tokens) in
the sequence, as the classification task does, so adapters see the layout they were built for; only the
``G`` patch tokens reach the head. The official segmentation encoder has no class token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric

from vadapt.adapters import AdapterConfig
from vadapt.contracts import TaskCapabilities

from .base import UNUSED, BaseTask

CategoryParts = Mapping[int, Sequence[int]] | Sequence[Sequence[int]]


def default_feature_blocks(depth: int, count: int = 3) -> list[int]:
    """The official rule for which blocks feed the head: ``count`` evenly spaced blocks, the last included
    (depth 12 -> ``[3, 7, 11]``); fewer blocks use them all (depth 2 -> ``[0, 1]``)."""
    count = max(min(count, depth), 1)
    step = depth // count
    return sorted(depth - 1 - i * step for i in range(count))


def category_parts_list(value: CategoryParts | None) -> list[list[int]] | None:
    """``category_parts`` as a list indexed by category (``{0: [0, 1], 2: [5]}`` -> ``[[0, 1], [], [5]]``).

    Dicts may have string keys (JSON manifests turn int keys into strings)."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        table = {int(k): [int(p) for p in v] for k, v in value.items()}
        if any(k < 0 for k in table):
            raise ValueError(f"category_parts has a negative category index: {sorted(table)}")
        return [table.get(i, []) for i in range(max(table, default=-1) + 1)]
    return [[int(p) for p in parts] for parts in value]


def part_mask(category_parts: list[list[int]] | None, num_rows: int, num_parts: int) -> torch.Tensor:
    """Bool ``(num_rows, num_parts)``: row ``c`` marks category ``c``'s parts (all False when unknown)."""
    mask = torch.zeros(max(num_rows, 1), num_parts, dtype=torch.bool)
    for c, parts in enumerate(category_parts or []):
        bad = [p for p in parts if not 0 <= p < num_parts]
        if bad:
            raise ValueError(f"category_parts[{c}] has part id {bad[0]} outside 0..{num_parts - 1}")
        mask[c, list(parts)] = True
    return mask


# ---- feature propagation -------------------------------------------------------------------------------------


def interpolate_three_nn(points: torch.Tensor, centres: torch.Tensor, features: torch.Tensor,
                         k: int = 3, eps: float = 1e-8) -> torch.Tensor:
    """Features of ``G`` centres ``(B, G, 3)``, ``(B, G, D)`` carried to ``N`` points ``(B, N, 3)`` -> ``(B, N, D)``.

    PointNet++ / Point-MAE ``PointNetFeaturePropagation``: each point averages its ``k = 3`` nearest centres'
    features with weights ``1 / (d^2 + eps)`` (``d^2`` the squared distance), normalised to sum 1; a single
    centre is copied to every point.
    """
    g = centres.shape[1]
    if g == 1:
        return features.expand(-1, points.shape[1], -1)
    dist = torch.cdist(points.float(), centres.float(), compute_mode="donot_use_mm_for_euclid_dist").square()
    d, idx = dist.topk(min(k, g), dim=-1, largest=False, sorted=True)  # (B, N, k)
    weight = 1.0 / (d + eps)
    weight = (weight / weight.sum(-1, keepdim=True)).to(features.dtype)
    batch = torch.arange(points.shape[0], device=points.device).view(-1, 1, 1)
    return (features[batch, idx] * weight.unsqueeze(-1)).sum(2)


def pointwise_mlp(in_dim: int, dims: Sequence[int]) -> nn.Sequential:
    """1x1 conv, BN, ReLU for each width of ``dims`` on ``(B, in_dim, N)``."""
    layers: list[nn.Module] = []
    for width in dims:
        layers += [nn.Conv1d(in_dim, width, 1), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
        in_dim = width
    return nn.Sequential(*layers)


class FeaturePropagation(nn.Module):
    """Point-MAE's ``propagation_0``: 3-NN interpolation from the centres, ``xyz`` prepended, then a point-wise MLP.

    ``(points (B, N, 3), centres (B, G, 3), features (B, G, D))`` -> ``(B, dims[-1], N)``.
    """

    def __init__(self, feature_dim: int, dims: Sequence[int]) -> None:
        super().__init__()
        self.mlp = pointwise_mlp(feature_dim + 3, dims)
        self.out_dim = int(dims[-1]) if dims else feature_dim + 3

    def forward(self, points: torch.Tensor, centres: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        carried = interpolate_three_nn(points, centres, features)  # (B, N, D)
        return self.mlp(torch.cat([points.to(carried.dtype), carried], dim=-1).transpose(1, 2))


class PartSegmentationHead(nn.Module):
    """The head of Point-MAE's segmentation model (module docs, steps 2-4).

    Args:
        feature_dim: width ``F`` of the concatenated block features (``len(feature_blocks) * C``; 1152).
        num_parts: output parts (50).
        num_categories: width of the category one-hot (16); 0 = no category input.
        label_dim: width of the category embedding (64).
        propagation_dims: point-wise MLP after the interpolation (``(4C, 1024)`` = ``(1536, 1024)``).
        head_dims: hidden widths of the point-wise head (``(512, 256)``), dropout after the first.
        dropout: that dropout (0.5).
    """

    def __init__(self, feature_dim: int, num_parts: int, num_categories: int = 16, label_dim: int = 64,
                 propagation_dims: Sequence[int] = (1536, 1024), head_dims: Sequence[int] = (512, 256),
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.num_categories = num_categories
        self.label_conv: nn.Module | None = None
        if num_categories > 0:
            self.label_conv = nn.Sequential(nn.Conv1d(num_categories, label_dim, 1, bias=False),
                                            nn.BatchNorm1d(label_dim), nn.LeakyReLU(0.2))
        self.propagation = FeaturePropagation(feature_dim, propagation_dims)
        width = self.propagation.out_dim + 2 * feature_dim + (label_dim if num_categories > 0 else 0)
        layers: list[nn.Module] = []
        for i, hidden in enumerate(head_dims):
            layers += [nn.Conv1d(width, hidden, 1), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
            if i == 0 and dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers.append(nn.Conv1d(width, num_parts, 1))
        self.classifier = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor, centres: torch.Tensor, points: torch.Tensor,
                category: torch.Tensor | None = None) -> torch.Tensor:
        """``features`` ``(B, G, F)`` at ``centres`` ``(B, G, 3)``, ``points`` ``(B, N, 3)``, ``category``
        ``(B,)`` -> part logits ``(B, num_parts, N)``."""
        n = points.shape[1]
        glob = [features.amax(dim=1), features.mean(dim=1)]  # (B, F) each
        if self.label_conv is not None:
            if category is None:
                raise ValueError("this head takes the object category (num_categories > 0): pass category (B,)")
            onehot = F.one_hot(category.long(), self.num_categories).to(features.dtype)
            glob.append(self.label_conv(onehot.unsqueeze(-1)).squeeze(-1))  # (B, label_dim)
        glob_n = torch.cat(glob, dim=1).unsqueeze(-1).expand(-1, -1, n)  # (B, 2F [+ 64], N)
        local = self.propagation(points, centres, features)  # (B, 1024, N)
        return self.classifier(torch.cat([local, glob_n.to(local.dtype)], dim=1))


# ---- metric ----------------------------------------------------------------------------------------------------


class PartIoU(Metric):
    """Instance and class mean IoU of part segmentation (the ShapeNetPart protocol of PointNet++ / Point-MAE).

    A shape's IoU is the mean, over the parts of its category (``category_parts``), of
    ``|pred == p and truth == p| / |pred == p or truth == p|``, 1 for a part in neither. Without a category's
    parts (``category_parts`` None or that row empty) the parts present in the prediction or truth are used.
    States: per-category sum of shape IoUs and shape counts (summed across processes).
    ``compute()`` -> ``{"instance_miou": mean over shapes, "class_miou": mean over categories with shapes}``.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_parts: int, num_categories: int = 1,
                 category_parts: CategoryParts | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_parts = num_parts
        parts = category_parts_list(category_parts)
        self.num_categories = max(num_categories, len(parts or []), 1)
        self.register_buffer("mask", part_mask(parts, self.num_categories, num_parts), persistent=False)
        self.add_state("iou_sum", torch.zeros(self.num_categories, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(self.num_categories, dtype=torch.long), dist_reduce_fx="sum")

    def set_category_parts(self, category_parts: CategoryParts | None) -> None:
        parts = category_parts_list(category_parts)
        if len(parts or []) > self.num_categories:
            raise ValueError(f"category_parts has {len(parts or [])} categories; this metric has {self.num_categories}")
        self.mask = part_mask(parts, self.num_categories, self.num_parts).to(self.mask.device)

    def shape_ious(self, pred: torch.Tensor, target: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        """Part ids ``pred``, ``target`` ``(B, N)``, categories ``(B,)`` -> each shape's mean part IoU ``(B,)``."""
        bsz, p = pred.shape[0], self.num_parts
        offset = (torch.arange(bsz, device=pred.device) * p).unsqueeze(1)
        size = bsz * p
        in_pred = torch.bincount((pred + offset).flatten(), minlength=size).view(bsz, p)
        in_true = torch.bincount((target + offset).flatten(), minlength=size).view(bsz, p)
        hit = (target + offset)[pred == target]
        inter = torch.bincount(hit, minlength=size).view(bsz, p)
        union = in_pred + in_true - inter
        iou = torch.where(union > 0, inter.double() / union.clamp(min=1).double(), torch.ones_like(union).double())
        parts = self.mask[category]  # (B, P)
        parts = torch.where(parts.any(1, keepdim=True), parts, union > 0)
        return (iou * parts).sum(1) / parts.sum(1).clamp(min=1)

    def update(self, pred: torch.Tensor, target: torch.Tensor, category: torch.Tensor | None = None) -> None:
        """``pred``, ``target`` ``(B, N)`` global part ids; ``category`` ``(B,)`` (default: all 0)."""
        if pred.shape != target.shape or pred.ndim != 2:
            raise ValueError(f"pred and target must both be (B, N); got {tuple(pred.shape)}, {tuple(target.shape)}")
        if category is None:
            category = torch.zeros(pred.shape[0], dtype=torch.long, device=pred.device)
        category = category.long()
        if category.numel() and (int(category.min()) < 0 or int(category.max()) >= self.num_categories):
            raise ValueError(f"category ids must be in 0..{self.num_categories - 1}, got {category.tolist()}")
        for t in (pred, target):
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_parts):
                raise ValueError(f"part ids must be in 0..{self.num_parts - 1}")
        ious = self.shape_ious(pred.long(), target.long(), category)
        self.iou_sum.index_add_(0, category, ious)
        self.count += torch.bincount(category, minlength=self.num_categories)

    def compute(self) -> dict[str, torch.Tensor]:
        seen = self.count > 0
        instance = self.iou_sum.sum() / self.count.sum().clamp(min=1)
        per_class = self.iou_sum[seen] / self.count[seen]
        return {"instance_miou": instance.float(),
                "class_miou": per_class.mean().float() if seen.any() else instance.float() * 0}

    def per_category(self) -> torch.Tensor:
        """Mean IoU of each category ``(num_categories,)`` (NaN for categories without shapes)."""
        return (self.iou_sum / self.count.double()).float()


# ---- the task --------------------------------------------------------------------------------------------------

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


class PartSegmentationTask(BaseTask):
    """Per-point part labels of clouds ``(B, N, 3)``: logits ``(B, num_parts, N)``.

    Batches are dicts with ``points`` (float ``(B, N, 3)``, unit-sphere normalised by the datamodule),
    ``parts`` (long ``(B, N)`` global part ids) and ``category`` (long ``(B,)``; ``label`` when absent), as
    ``ShapeNetPartDataModule`` and ``PointFolderDataModule(parts=True)`` yield them.
    """

    CAPABILITIES = TaskCapabilities("point_cloud", "point_labels")

    def __init__(
        self,
        backbone: str = "point_mae",
        weights: str | None = None,
        adapter: AdapterConfig | None = None,
        num_parts: int = 50,
        num_categories: int = 16,
        category_parts: dict[int, list[int]] | list[list[int]] | None = None,
        feature_blocks: list[int] | None = None,
        label_dim: int = 64,
        propagation_dims: list[int] | None = None,
        head_dims: list[int] | None = None,
        head_dropout: float = 0.5,
        label_smoothing: float = 0.0,
        preview_clouds: int = 4,
        lr: float = 2e-4,
        weight_decay: float = 0.05,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            backbone: registry name of a point backbone (``point_mae``; ``point_mae_test`` is a tiny one).
            weights: ``None`` (random), ``"pretrained"`` (the official Point-MAE ShapeNet pretrain file) or a
                path to an upstream checkpoint file.
            adapter: e.g. ``{class_path: vadapt.adapters.LoraConfig, init_args: {r: 8}}``; ``None`` = only the
                head trains.
            num_parts: global part ids (ShapeNetPart: 50).
            num_categories: object categories fed to the head as a one-hot (ShapeNetPart: 16); 0 = none.
            category_parts: category index -> its global part ids (``{0: [0, 1, 2, 3], 1: [4, 5], ...}`` or a
                list by category); predictions and the mIoU use only the shape's category's parts. ``None``:
                taken from the datamodule's ``category_parts`` when fitting / testing starts.
            feature_blocks: blocks whose outputs feed the head (official ``[3, 7, 11]``); ``None`` = 3 evenly
                spaced blocks, the last included (all blocks of a backbone with fewer than 3).
            label_dim: width of the category embedding (64).
            propagation_dims: point-wise MLP after the feature propagation (``None`` = official ``[4C, 1024]``).
            head_dims: hidden widths of the point-wise head (``None`` = official ``[512, 256]``).
            head_dropout: dropout after the head's first layer (0.5).
            label_smoothing: of the cross-entropy (0, as the official).
            preview_clouds: validation clouds drawn in the per-epoch picture (0 = none).
            lr, weight_decay: :class:`BaseTask`'s (AdamW) with the official segmentation's values (2e-4, 0.05; it
                decays on a cosine schedule, here the poly one).
            kwargs: the other arguments every task shares (:class:`BaseTask`): ``warmup_steps``, ``poly_power``
                (linear warm-up then poly decay), ``freeze_backbone`` (``False``: full fine-tuning, as the
                official), ``grad_checkpointing``. Point clouds have no bands: no ``mean``, ``std``,
                ``extra_band_init``.
        """
        if num_parts < 1:
            raise ValueError(f"num_parts must be at least 1, got {num_parts}")
        if num_categories < 0:
            raise ValueError(f"num_categories must be >= 0 (0: no category input), got {num_categories}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        parts = category_parts_list(category_parts)
        if parts is not None and num_categories > 0 and len(parts) > num_categories:
            raise ValueError(f"category_parts lists {len(parts)} categories but num_categories={num_categories}")
        part_mask(parts, len(parts or []), num_parts)  # part ids in range, else ValueError
        super().__init__(lr=lr, weight_decay=weight_decay, mean=UNUSED, std=UNUSED, extra_band_init=UNUSED, **kwargs)

    # ---- models ------------------------------------------------------------------------------------------
    @property
    def feature_blocks(self) -> list[int]:
        """Indices of the blocks whose (normed) patch tokens feed the head."""
        depth = len(self.backbone.blocks)
        chosen = self.hparams["feature_blocks"]
        blocks = default_feature_blocks(depth) if chosen is None else sorted({int(i) % depth for i in chosen})
        return blocks

    def configure_head(self) -> None:
        hp = self.hparams
        depth = len(self.backbone.blocks)
        chosen = hp["feature_blocks"]
        if chosen is not None and (not chosen or any(not -depth <= int(i) < depth for i in chosen)):
            raise ValueError(f"feature_blocks={chosen}: {self.backbone.name!r} has blocks 0..{depth - 1}")
        c = self.backbone.embed_dim
        feature_dim = len(self.feature_blocks) * c
        self.head = PartSegmentationHead(
            feature_dim, hp["num_parts"], hp["num_categories"], hp["label_dim"],
            propagation_dims=hp["propagation_dims"] or (4 * c, 1024), head_dims=hp["head_dims"] or (512, 256),
            dropout=hp["head_dropout"],
        )

    def configure_losses(self) -> None:
        self.criterion = nn.CrossEntropyLoss(label_smoothing=float(self.hparams["label_smoothing"]))

    def _mask_rows(self) -> int:
        return max(self.hparams["num_categories"], len(category_parts_list(self.hparams["category_parts"]) or []), 1)

    def configure_metrics(self) -> None:
        hp = self.hparams
        parts = category_parts_list(hp["category_parts"])
        rows = self._mask_rows()
        self.register_buffer("category_mask", part_mask(parts, rows, hp["num_parts"]), persistent=False)
        # "fit", not "train": nn.Module.train is a method, so it cannot be a ModuleDict key
        self.iou = nn.ModuleDict({stage: PartIoU(hp["num_parts"], rows, parts) for stage in ("fit", "val", "test")})
        self._preview: list[tuple] = []

    def set_category_parts(self, category_parts: CategoryParts) -> None:
        """Restrict predictions and the mIoU to each category's parts (kept in the hyper-parameters, so
        checkpoints carry them); the metrics restart."""
        parts = category_parts_list(category_parts) or []
        part_mask(parts, len(parts), self.hparams["num_parts"])  # part ids in range, else ValueError
        num_categories = self.hparams["num_categories"]
        if num_categories > 0 and len(parts) > num_categories:
            raise ValueError(f"category_parts lists {len(parts)} categories but num_categories={num_categories}")
        self.hparams["category_parts"] = parts
        device = self.category_mask.device
        self.configure_metrics()
        self.category_mask = self.category_mask.to(device)
        self.iou.to(device)

    def setup(self, stage: str) -> None:
        """Check the datamodule against the task and take its ``category_parts`` when none were given."""
        data = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if data is None:
            return
        hp = self.hparams
        data_parts = getattr(data, "num_parts", None)
        if isinstance(data_parts, int) and data_parts > hp["num_parts"]:
            raise ValueError(f"the data has {data_parts} part ids but the task num_parts={hp['num_parts']}")
        names = getattr(data, "class_names", None)
        if names is not None and hp["num_categories"] > 0 and len(names) > hp["num_categories"]:
            raise ValueError(f"the data has {len(names)} categories but the task num_categories="
                             f"{hp['num_categories']}")
        table = getattr(data, "category_parts", None)
        if hp["category_parts"] is None and table and any(table):
            self.set_category_parts(table)

    # ---- forward -------------------------------------------------------------------------------------------
    def block_features(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cloud ``(B, N, 3)`` -> patch features ``(B, G, F)`` (the ``feature_blocks`` outputs, each through the
        backbone's final norm, concatenated; ``F = len(feature_blocks) * C``) and centres ``(B, G, 3)``.

        The backbone's ``forward_features`` with several outputs: grouping, tokenizer, class token, every block
        called on ``x + pos`` (adapters wrap the blocks), ``last_centres`` / ``last_pos`` recorded for them.
        """
        bb = self.backbone
        centres, neighbourhoods = bb.group(self.normalise(points))
        tokens = bb.tokenize(neighbourhoods)
        bsz, g = tokens.shape[:2]
        x = torch.cat([bb.cls_token.expand(bsz, -1, -1), tokens], dim=1)
        pos = torch.cat([bb.cls_pos.expand(bsz, -1, -1), bb.pos_embed(centres)], dim=1)
        bb.last_centres, bb.last_pos = centres, pos
        outs = bb.run_blocks(x, self.feature_blocks, lambda block, h: block(h + pos))
        # the patch tokens are the last G of each output (an adapter may insert prefix tokens before them)
        return torch.cat([bb.norm(o)[:, -g:] for o in outs], dim=-1), centres

    def forward(self, points: torch.Tensor, category: torch.Tensor | None = None) -> torch.Tensor:
        """Cloud ``(B, N, 3)`` and object categories ``(B,)`` -> part logits ``(B, num_parts, N)``."""
        features, centres = self.block_features(points)
        return self.head(features, centres, points, category)

    def predict_parts(self, logits: torch.Tensor, category: torch.Tensor | None) -> torch.Tensor:
        """Logits ``(B, P, N)`` -> part ids ``(B, N)``: argmax over the shape's category's parts when known."""
        if category is None:
            return logits.argmax(1)
        allowed = self.category_mask[category.long().clamp(0, len(self.category_mask) - 1)]  # (B, P)
        allowed = allowed | ~allowed.any(1, keepdim=True)  # unknown category: every part
        return logits.masked_fill(~allowed.unsqueeze(-1), float("-inf")).argmax(1)

    @staticmethod
    def batch_category(batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        return batch.get("category", batch.get("label"))

    # ---- steps -------------------------------------------------------------------------------------------
    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        points, parts = batch["points"], batch["parts"]
        category = self.batch_category(batch)
        logits = self(points, category)
        loss = self.criterion(logits, parts)
        prediction = self.predict_parts(logits.detach(), category)
        self.iou["fit" if stage == "train" else stage].update(prediction, parts, category)
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=stage == "train", on_epoch=True,
                 batch_size=len(logits))
        if stage == "val" and len(self._preview) < self.hparams["preview_clouds"]:
            take = self.hparams["preview_clouds"] - len(self._preview)
            for cloud, truth, pred in zip(points[:take], parts[:take], prediction[:take]):
                self._preview.append((cloud.float().cpu().numpy(), truth.cpu().numpy(), pred.cpu().numpy()))
        return loss

    def _log_scores(self, stage: str) -> None:
        metric = self.iou["fit" if stage == "train" else stage]
        if not metric.update_called:  # e.g. a stage with no batches
            return
        values = {k: float(v) for k, v in metric.compute().items()}
        metric.reset()
        self.log(f"{stage}/class_miou", values["class_miou"])  # already global: torchmetrics syncs processes
        self.log(f"{stage}/instance_miou", values["instance_miou"], prog_bar=stage != "train")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Part ids ``(B, N)`` (restricted to each shape's category's parts when known)."""
        category = self.batch_category(batch)
        return self.predict_parts(self(batch["points"], category), category)

    # ---- picture -----------------------------------------------------------------------------------------
    def preview_picture(self, rows: list[tuple]):
        """Front views (x right, y up) of the rows' clouds coloured by part: truth left, prediction right."""
        from PIL import Image, ImageDraw

        size, caption = 128, 14
        lines = len(rows)
        picture = Image.new("RGB", (2 * size, lines * (size + caption)), "white")
        draw = ImageDraw.Draw(picture)
        for i, (cloud, truth, pred) in enumerate(rows):
            xyz = np.asarray(cloud, dtype=np.float32)
            radius = float(np.abs(xyz).max()) or 1.0
            px = ((xyz[:, 0] / radius + 1) / 2 * (size - 9) + 4).astype(int)
            py = ((1 - (xyz[:, 1] / radius + 1) / 2) * (size - 9) + 4).astype(int)
            order = np.argsort(xyz[:, 2])
            y0 = i * (size + caption)
            for col, labels in enumerate((truth, pred)):
                for j in order:
                    colour = PALETTE[int(labels[j]) % len(PALETTE)]
                    draw.point((col * size + int(px[j]), y0 + int(py[j])), fill=colour)
            acc = float(np.mean(np.asarray(truth) == np.asarray(pred)))
            draw.text((4, y0 + size), f"truth | prediction ({100 * acc:.0f}% points)", fill=(0, 0, 0))
        return picture


__all__ = ["FeaturePropagation", "PartIoU", "PartSegmentationHead", "PartSegmentationTask",
           "default_feature_blocks", "interpolate_three_nn"]

