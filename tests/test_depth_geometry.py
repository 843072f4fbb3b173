"""View synthesis and depth metrics of the self-supervised depth task (vadapt.geometry.reprojection,
vadapt.tasks.depth_metrics): float64 references on hand examples, and warps of analytic scenes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vadapt.geometry.reprojection import (
    backproject,
    disparity_to_depth,
    edge_aware_smoothness,
    photometric_error,
    pose_matrix,
    project,
    warp_source,
)
from vadapt.tasks.depth_metrics import ERROR_NAMES, DepthErrors, image_depth_errors


def reference_errors(gt: np.ndarray, pred: np.ndarray, lo: float = 1e-3, hi: float = 150.0) -> np.ndarray:
    """Monodepth2's evaluate_depth + compute_errors, written out in numpy float64."""
    mask = (gt > lo) & (gt < hi)
    gt, pred = gt[mask].astype(np.float64), pred[mask].astype(np.float64)
    pred = pred * np.median(gt) / np.median(pred)
    pred = np.clip(pred, lo, hi)
    thresh = np.maximum(gt / pred, pred / gt)
    return np.array([
        np.mean(np.abs(gt - pred) / gt), np.mean((gt - pred) ** 2 / gt), np.sqrt(np.mean((gt - pred) ** 2)),
        np.sqrt(np.mean((np.log(gt) - np.log(pred)) ** 2)),
        (thresh < 1.25).mean(), (thresh < 1.25 ** 2).mean(), (thresh < 1.25 ** 3).mean(),
    ])


def test_errors_on_a_hand_example():
    gt = torch.tensor([[1.0, 2.0], [4.0, 0.0]])  # 0: no truth
    pred = torch.tensor([[2.0, 4.0], [9.0, 5.0]])  # median ratio 2 / 4: scaled to 1, 2, 4.5
    errors = image_depth_errors(pred, gt)
    assert errors[0].item() == pytest.approx((0.5 / 4) / 3)  # abs_rel by hand
    assert errors[2].item() == pytest.approx(math.sqrt(0.25 / 3))  # rmse by hand
    assert errors[4].item() == pytest.approx(1.0)  # 4.5 / 4 < 1.25
    np.testing.assert_allclose(errors.numpy(), reference_errors(gt.numpy(), pred.numpy()), rtol=1e-12)


def test_errors_match_the_float64_reference_on_random_images():
    rng = np.random.default_rng(0)
    metric = DepthErrors()
    expected = []
    for _ in range(3):
        gt = rng.uniform(0.5, 20, (2, 1, 9, 11)).astype(np.float32)
        gt[gt < 2] = 0  # holes without truth
        pred = (gt * rng.uniform(0.7, 1.4, gt.shape) * 3.7 + 0.01).astype(np.float32)  # unknown scale
        metric.update(torch.from_numpy(pred), torch.from_numpy(gt))
        expected += [reference_errors(g[0], p[0]) for g, p in zip(gt, pred)]
    scores = metric.compute()
    assert scores["images"] == 6
    np.testing.assert_allclose([scores[n].item() for n in ERROR_NAMES], np.mean(expected, 0), rtol=1e-6)


def test_image_without_truth_is_not_counted():
    metric = DepthErrors()
    metric.update(torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
    assert metric.compute()["images"] == 0 and math.isnan(metric.compute()["abs_rel"])


def test_disparity_to_depth_spans_the_range():
    d = disparity_to_depth(torch.tensor([0.0, 1.0]), 0.1, 150.0)
    assert d.tolist() == pytest.approx([150.0, 0.1])


def test_pose_matrix_rotates_and_translates_like_rodrigues():
    angle = 0.3
    pose = pose_matrix(torch.tensor([[0.0, 0.0, angle]], dtype=torch.float64),
                       torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64))[0]
    c, s = math.cos(angle), math.sin(angle)
    R = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(pose[:3, :3], R)
    torch.testing.assert_close(pose[:3, 3], R @ torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))


def _K(f: float, h: int, w: int) -> torch.Tensor:
    return torch.tensor([[[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]]], dtype=torch.float64)


def test_backproject_then_project_is_the_identity():
    h, w = 6, 8
    depth = torch.rand(1, 1, h, w, dtype=torch.float64) + 1
    grid, z = project(backproject(depth, _K(5.0, h, w)), _K(5.0, h, w), torch.eye(4, dtype=torch.float64)[None], h, w)
    v, u = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    # exact up to the eps (1e-7) that keeps the division by depth finite
    torch.testing.assert_close(grid[0, ..., 0], (u / (w - 1) * 2 - 1).double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(grid[0, ..., 1], (v / (h - 1) * 2 - 1).double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(z, depth)


def _textured_plane_pair(shift_px: float):
    """A fronto-parallel plane at depth 2 with a smooth texture, seen before and after the camera moves sideways by
    ``shift_px`` pixels' worth: frame 1 is frame 0's texture moved, so the true warp is known exactly."""
    h, w, f, z = 24, 32, 20.0, 2.0
    u = torch.arange(w, dtype=torch.float64)

    def texture(x):  # intensity as a function of the plane's x coordinate (pixels of frame 0)
        return 0.5 + 0.25 * torch.sin(x / 3.0) + 0.1 * torch.cos(x / 1.7)

    frame0 = texture(u).expand(h, w)
    frame1 = texture(u + shift_px).expand(h, w)  # the camera moved +x by shift_px * z / f
    tx = shift_px * z / f
    return (frame0[None, None], frame1[None, None], torch.full((1, 1, h, w), z, dtype=torch.float64),
            _K(f, h, w), pose_matrix(torch.zeros(1, 3, dtype=torch.float64),
                                     torch.tensor([[-tx, 0.0, 0.0]], dtype=torch.float64)))


def test_warp_with_true_depth_reproduces_the_frame_and_wrong_depth_does_not():
    target, source, depth, K, pose = _textured_plane_pair(2.0)  # whole pixels: bilinear sampling is exact
    warped = warp_source(source, depth, K, pose)
    inner = (..., slice(2, -2), slice(2, -6))  # away from the border the source does not cover
    assert (warped - target)[inner].abs().max() < 1e-3
    wrong = warp_source(source, depth * 2, K, pose)
    assert (wrong - target)[inner].abs().mean() > 20 * (warped - target)[inner].abs().mean()


def test_photometric_error_is_zero_for_equal_images_and_grows_with_noise():
    image = torch.rand(2, 3, 16, 16)
    assert photometric_error(image, image).abs().max() < 1e-6
    noisy = (image + 0.1 * torch.randn_like(image)).clamp(0, 1)
    more = (image + 0.3 * torch.randn_like(image)).clamp(0, 1)
    assert 0 < photometric_error(noisy, image).mean() < photometric_error(more, image).mean()


def test_smoothness_ignores_scale_and_respects_image_edges():
    disp = torch.rand(1, 1, 8, 8)
    flat = torch.zeros(1, 3, 8, 8)
    assert edge_aware_smoothness(disp, flat) == pytest.approx(edge_aware_smoothness(disp * 7, flat).item(), rel=1e-5)
    edges = torch.rand(1, 3, 8, 8) * 10
    assert edge_aware_smoothness(disp, edges) < edge_aware_smoothness(disp, flat)
