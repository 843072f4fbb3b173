"""Monocular depth errors with per-image median scaling (Eigen et al., 2014; the evaluation of Monodepth2 and
EndoDAC, ``evaluate_depth.py`` / ``compute_errors``).

A self-supervised monocular network predicts depth only up to scale. For each image, pixels whose truth lies in
``(min_depth, max_depth)`` are kept, the prediction is multiplied by ``median(truth) / median(prediction)``, clamped
to ``[min_depth, max_depth]``, and the seven errors are computed; a split's score is the mean over its images.

``DepthErrors`` accumulates per-image errors (sums and counts, so it syncs across processes as a torchmetrics
``Metric``) and returns the means. Names as in the papers' tables: ``abs_rel``, ``sq_rel``, ``rmse``,
``rmse_log``, ``a1`` (delta < 1.25), ``a2`` (< 1.25^2), ``a3`` (< 1.25^3).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

ERROR_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")


def image_depth_errors(prediction: torch.Tensor, truth: torch.Tensor, min_depth: float = 1e-3,
                       max_depth: float = 150.0, median_scaling: bool = True) -> torch.Tensor | None:
    """The seven errors ``(7,)`` (float64) of one image's ``prediction`` against ``truth`` (same shape ``(H, W)``),
    or ``None`` when no pixel has truth in ``(min_depth, max_depth)``."""
    valid = (truth > min_depth) & (truth < max_depth) & torch.isfinite(truth)
    if not bool(valid.any()):
        return None
    gt = truth[valid].double()
    pred = prediction[valid].double()
    if median_scaling:
        # the mean of the two middle values for even counts, as np.median (torch.median takes the lower one)
        pred = pred * (torch.quantile(gt, 0.5) / torch.quantile(pred, 0.5).clamp_min(1e-12))
    pred = pred.clamp(min_depth, max_depth)
    ratio = torch.maximum(gt / pred, pred / gt)
    return torch.stack([
        ((gt - pred).abs() / gt).mean(),
        ((gt - pred) ** 2 / gt).mean(),
        ((gt - pred) ** 2).mean().sqrt(),
        ((gt.log() - pred.log()) ** 2).mean().sqrt(),
        (ratio < 1.25).double().mean(),
        (ratio < 1.25 ** 2).double().mean(),
        (ratio < 1.25 ** 3).double().mean(),
    ])


class DepthErrors(Metric):
    """Mean per-image depth errors (see module docstring) over the images that have truth.

    ``update(prediction, truth)`` takes ``(B, 1, H, W)`` or ``(B, H, W)`` depth; ``truth`` 0 (or outside the range)
    means no truth at that pixel. ``compute()`` -> ``{name: mean}`` plus ``images`` (how many had truth); NaN
    means when none had.
    """

    full_state_update = False

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 150.0, median_scaling: bool = True) -> None:
        super().__init__()
        self.min_depth, self.max_depth, self.median_scaling = min_depth, max_depth, median_scaling
        self.add_state("sums", torch.zeros(len(ERROR_NAMES), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("images", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, prediction: torch.Tensor, truth: torch.Tensor) -> None:
        prediction, truth = prediction.reshape(-1, *truth.shape[-2:]), truth.reshape(-1, *truth.shape[-2:])
        for pred, gt in zip(prediction.detach(), truth.detach()):
            errors = image_depth_errors(pred, gt, self.min_depth, self.max_depth, self.median_scaling)
            if errors is not None:
                self.sums += errors.to(self.sums.device)
                self.images += 1

    def compute(self) -> dict[str, torch.Tensor]:
        means = self.sums / self.images if self.images > 0 else torch.full_like(self.sums, float("nan"))
        return {**dict(zip(ERROR_NAMES, means)), "images": self.images}
