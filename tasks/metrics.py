"""Segmentation metrics with mmsegmentation's definitions, accumulated by torchmetrics.

Per-class true/false positives and false negatives come from torchmetrics' ``MulticlassStatScores``
(``ignore_index`` pixels dropped); from them, exactly as mmseg's ``IoUMetric``: IoU = TP / (TP + FP + FN),
Dice = F1 = 2 TP / (2 TP + FP + FN), Acc = TP / (TP + FN), aAcc = sum TP / sum (TP + FN); a class that
never occurs in truth or prediction has NaN IoU/Dice and is left out of the means (nan-mean).
"""

from __future__ import annotations

import torch


def segmentation_scores(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-class ``iou``, ``dice``, ``acc`` and the means ``miou``, ``mdice``, ``macc``, ``aacc`` (fractions)."""
    tp, fp, fn = (t.double() for t in (tp, fp, fn))
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=tp.device)

    def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return torch.where(den > 0, num / den.clamp(min=1), nan)

    iou = ratio(tp, tp + fp + fn)
    dice = ratio(2 * tp, 2 * tp + fp + fn)
    acc = ratio(tp, tp + fn)
    return {
        "iou": iou, "dice": dice, "acc": acc,
        "miou": iou.nanmean(), "mdice": dice.nanmean(), "macc": acc.nanmean(),
        "aacc": tp.sum() / (tp + fn).sum().clamp(min=1),
    }


def stat_scores(num_classes: int, ignore_index: int | None):
    from torchmetrics.classification import MulticlassStatScores

    return MulticlassStatScores(num_classes=num_classes, average=None, ignore_index=ignore_index,
                                multidim_average="global")
