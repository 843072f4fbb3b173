"""View synthesis for self-supervised monocular depth (Zhou et al., 2017, arXiv:1704.07813; Monodepth2: Godard et
al., 2019, arXiv:1806.01260), as EndoDAC (Cui et al., 2024, arXiv:2405.08672) trains with it.

Conventions (OpenCV / Monodepth2): pixel ``(u, v)`` is column ``u``, row ``v``, its centre at integer coordinates;
``K`` ``(B, 3, 3)`` maps camera points ``(X, Y, Z)`` (x right, y down, z forward) to ``(u, v) = (fx X / Z + cx,
fy Y / Z + cy)``; a pose ``T`` ``(B, 4, 4)`` maps points of the target camera into the source camera.
``grid_sample`` is used with ``align_corners=True`` so that pixel centre ``u`` is grid value ``2 u / (W - 1) - 1``.

* :func:`disparity_to_depth`: the network's sigmoid output -> depth in ``[min_depth, max_depth]``.
* :func:`pose_matrix`: axis-angle + translation ``(B, 3)`` each -> ``(B, 4, 4)``.
* :func:`warp_source`: a source frame resampled into the target view through the target's depth.
* :func:`photometric_error`: ``0.85 (1 - SSIM) / 2 + 0.15 L1`` per pixel with the 3x3 SSIM of Monodepth2.
* :func:`edge_aware_smoothness`: mean-normalised disparity gradients weighted by ``exp(-|image gradient|)``.

Written here rather than taken from kornia (not a dependency): its SSIM uses an 11x11 Gaussian window where the
paper's losses use Monodepth2's 3x3 box window with reflection padding, and the rest is a few lines of torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def disparity_to_depth(disp: torch.Tensor, min_depth: float = 0.1, max_depth: float = 150.0) -> torch.Tensor:
    """Sigmoid output ``disp`` in ``[0, 1]`` (any shape) -> depth ``1 / (1/max + (1/min - 1/max) disp)`` in
    ``[min_depth, max_depth]`` (Monodepth2's ``disp_to_depth``; EndoDAC keeps its 0.1 / 150 defaults)."""
    min_disp, max_disp = 1.0 / max_depth, 1.0 / min_depth
    return 1.0 / (min_disp + (max_disp - min_disp) * disp)


def skew(v: torch.Tensor) -> torch.Tensor:
    """``(B, 3)`` -> the cross-product matrices ``(B, 3, 3)`` (``skew(v) @ w == v x w``)."""
    zero = torch.zeros_like(v[:, 0])
    x, y, z = v.unbind(1)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], 1).view(-1, 3, 3)


def pose_matrix(axis_angle: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """``(B, 3)`` rotation vectors and ``(B, 3)`` translations -> ``(B, 4, 4)`` poses ``[R | R t]``.

    ``R = exp(skew(axis_angle))`` (Rodrigues' formula, through ``torch.linalg.matrix_exp``: exact and smooth at 0).
    The translation is applied before the rotation, as Monodepth2's ``transformation_from_parameters`` (which
    EndoDAC calls without inversion: its pose net sees ``[source, target]`` and predicts target -> source).
    """
    rotation = torch.linalg.matrix_exp(skew(axis_angle))
    pose = torch.zeros(axis_angle.shape[0], 4, 4, dtype=axis_angle.dtype, device=axis_angle.device)
    pose[:, :3, :3] = rotation
    pose[:, :3, 3] = (rotation @ translation.unsqueeze(-1)).squeeze(-1)
    pose[:, 3, 3] = 1.0
    return pose


def pixel_grid(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """Homogeneous pixel centres ``(3, H * W)`` (rows ``u``, ``v``, 1), row-major over the image."""
    v, u = torch.meshgrid(torch.arange(height, dtype=like.dtype, device=like.device),
                          torch.arange(width, dtype=like.dtype, device=like.device), indexing="ij")
    return torch.stack([u.flatten(), v.flatten(), torch.ones_like(u).flatten()])


def backproject(depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Depth ``(B, 1, H, W)`` and intrinsics ``(B, 3, 3)`` -> camera points ``(B, 3, H * W)``."""
    b, _, h, w = depth.shape
    rays = torch.linalg.inv(K) @ pixel_grid(h, w, depth)  # (B, 3, HW)
    return rays * depth.reshape(b, 1, h * w)


def project(points: torch.Tensor, K: torch.Tensor, pose: torch.Tensor, height: int, width: int,
            eps: float = 1e-7) -> tuple[torch.Tensor, torch.Tensor]:
    """Target-camera points ``(B, 3, H * W)`` -> (``grid_sample`` coordinates ``(B, H, W, 2)`` in the source image,
    their depth in the source camera ``(B, 1, H, W)``), with ``pose`` ``(B, 4, 4)`` target -> source."""
    b = points.shape[0]
    moved = pose[:, :3, :3] @ points + pose[:, :3, 3:]
    pixels = K @ moved
    z = pixels[:, 2:3]
    uv = pixels[:, :2] / (z + eps)
    scale = torch.tensor([width - 1, height - 1], dtype=uv.dtype, device=uv.device).view(1, 2, 1)
    grid = (uv / scale * 2 - 1).view(b, 2, height, width).permute(0, 2, 3, 1)
    return grid, z.view(b, 1, height, width)


def warp_source(source: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
    """The source frame ``(B, C, H, W)`` seen from the target camera: sampled (bilinear, border padding) where the
    target's pixels, lifted with their ``depth`` ``(B, 1, H, W)`` and moved by ``pose`` (target -> source), land."""
    h, w = depth.shape[-2:]
    grid, _ = project(backproject(depth, K), K, pose, h, w)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=True)


def ssim_dissimilarity(x: torch.Tensor, y: torch.Tensor, c1: float = 0.01 ** 2, c2: float = 0.03 ** 2) -> torch.Tensor:
    """``(1 - SSIM(x, y)) / 2`` clamped to ``[0, 1]``, per pixel and channel ``(B, C, H, W)``: Monodepth2's SSIM with
    3x3 box statistics over reflection-padded images."""
    x, y = F.pad(x, (1, 1, 1, 1), mode="reflect"), F.pad(y, (1, 1, 1, 1), mode="reflect")
    mu_x, mu_y = F.avg_pool2d(x, 3, 1), F.avg_pool2d(y, 3, 1)
    sigma_x = F.avg_pool2d(x * x, 3, 1) - mu_x ** 2
    sigma_y = F.avg_pool2d(y * y, 3, 1) - mu_y ** 2
    sigma_xy = F.avg_pool2d(x * y, 3, 1) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)
    denominator = (mu_x ** 2 + mu_y ** 2 + c1) * (sigma_x + sigma_y + c2)
    return ((1 - numerator / denominator) / 2).clamp(0, 1)


def photometric_error(prediction: torch.Tensor, target: torch.Tensor, ssim_weight: float = 0.85) -> torch.Tensor:
    """``ssim_weight (1 - SSIM) / 2 + (1 - ssim_weight) |prediction - target|``, averaged over channels:
    ``(B, C, H, W)`` pair -> ``(B, 1, H, W)`` (Monodepth2's reprojection loss, EndoDAC's
    ``compute_reprojection_loss``)."""
    l1 = (prediction - target).abs().mean(1, keepdim=True)
    if ssim_weight == 0:
        return l1
    ssim = ssim_dissimilarity(prediction, target).mean(1, keepdim=True)
    return ssim_weight * ssim + (1 - ssim_weight) * l1


def edge_aware_smoothness(disp: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Mean of ``|d_x d*| exp(-|d_x I|) + |d_y d*| exp(-|d_y I|)`` with ``d* = disp / mean(disp)`` per image;
    ``disp`` ``(B, 1, H, W)``, ``image`` ``(B, C, H, W)`` at the same size -> a scalar (Monodepth2, EndoDAC)."""
    disp = disp / (disp.mean((2, 3), keepdim=True) + 1e-7)
    grad_disp_x = (disp[..., :, :-1] - disp[..., :, 1:]).abs()
    grad_disp_y = (disp[..., :-1, :] - disp[..., 1:, :]).abs()
    grad_img_x = (image[..., :, :-1] - image[..., :, 1:]).abs().mean(1, keepdim=True)
    grad_img_y = (image[..., :-1, :] - image[..., 1:, :]).abs().mean(1, keepdim=True)
    return (grad_disp_x * torch.exp(-grad_img_x)).mean() + (grad_disp_y * torch.exp(-grad_img_y)).mean()
