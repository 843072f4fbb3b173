"""Point-cloud grouping helpers shared by point backbones and point adapters: batched gather, farthest point
sampling and k nearest neighbours, in plain batched torch (the official Point-MAE code uses the CUDA kernels of
``pointnet2_ops`` and ``knn_cuda``)."""

from __future__ import annotations

import torch


def gather_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Batched gather: ``points`` ``(B, N, D)`` at ``idx`` ``(B, *S)`` -> ``(B, *S, D)``."""
    batch = torch.arange(points.shape[0], device=points.device).view(-1, *([1] * (idx.ndim - 1)))
    return points[batch, idx]


@torch.no_grad()
def farthest_point_sample(points: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Indices ``(B, G)`` of ``G = num_samples`` farthest-point samples of ``points`` ``(B, N, 3)``.

    Starts from point 0 and repeatedly takes the point farthest (squared Euclidean distance) from all points
    chosen so far, as ``pointnet2_ops.furthest_point_sample`` used by Point-MAE (Sec. 3.1). Batched; the
    only Python loop is over the ``G`` sampling steps. Unlike that CUDA kernel, points within 0.03 of the
    origin are not skipped (the kernel ignores them as padding).
    """
    pts = points.float()
    bsz, n, _ = pts.shape
    if not 0 < num_samples <= n:
        raise ValueError(f"cannot sample {num_samples} centres from {n} points")
    batch = torch.arange(bsz, device=pts.device)
    last = torch.zeros(bsz, dtype=torch.long, device=pts.device)
    chosen = [last]
    dist = torch.full((bsz, n), float("inf"), device=pts.device)
    for _ in range(num_samples - 1):
        step = (pts - pts[batch, last].unsqueeze(1)).square().sum(-1)  # (B, N)
        dist = torch.minimum(dist, step)
        last = dist.argmax(dim=1)
        chosen.append(last)
    return torch.stack(chosen, dim=1)


@torch.no_grad()
def knn_indices(points: torch.Tensor, queries: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``(B, G, k)`` of the ``k`` points of ``points`` ``(B, N, 3)`` nearest to each query ``(B, G, 3)``.

    Sorted by increasing distance (a query that is a cloud point finds itself first), as ``knn_cuda.KNN``.
    """
    dist = torch.cdist(queries.float(), points.float(), compute_mode="donot_use_mm_for_euclid_dist")
    return dist.topk(k, dim=-1, largest=False, sorted=True).indices
