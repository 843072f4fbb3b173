"""Prompts from masks: points, boxes, correction clicks and the sampler's mix (vadapt.data.prompts)."""

from __future__ import annotations

import pytest
import torch

from vadapt.data.prompts import (
    PromptSampler,
    boxes_to_corner_points,
    correction_points,
    mask_boxes,
    sample_points,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def blobs() -> torch.Tensor:
    """(4, 32, 40) masks: a rectangle, a disc, a single pixel, an L shape."""
    masks = torch.zeros(4, 32, 40, dtype=torch.bool)
    masks[0, 5:12, 8:30] = True
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(40), indexing="ij")
    masks[1] = (yy - 16) ** 2 + (xx - 20) ** 2 <= 36
    masks[2, 31, 0] = True
    masks[3, 2:20, 3:6] = True
    masks[3, 17:20, 3:25] = True
    return masks


def at(masks: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """masks (B, H, W) read at coords (B, P, 2) (x, y) -> (B, P)."""
    x, y = coords[..., 0].long(), coords[..., 1].long()
    return masks[torch.arange(len(masks))[:, None], y, x]


def test_points_inside_and_outside() -> None:
    masks = blobs()
    coords, labels = sample_points(masks, 3, 5, gen())
    assert coords.shape == (4, 8, 2) and coords.dtype == torch.float32
    assert labels.shape == (4, 8) and labels.dtype == torch.long
    assert (labels[:, :3] == 1).all() and (labels[:, 3:] == 0).all()
    assert at(masks, coords)[:, :3].all() and not at(masks, coords)[:, 3:].any()
    assert (coords == coords.round()).all()  # pixel indices: SAM's prompt encoder adds the 0.5 itself
    # distinct while there are enough pixels; repeated for the one-pixel mask
    assert len({tuple(p) for p in coords[0, :3].tolist()}) == 3
    assert coords[2, :3].tolist() == [[0.0, 31.0]] * 3


def test_negative_band_and_fallback() -> None:
    masks = blobs()
    coords, labels = sample_points(masks, 1, 20, gen(), negative_band=2)
    neg = coords[:, 1:]
    assert (labels[:, 1:] == 0).all() and not at(masks, neg).any()
    near = torch.nn.functional.max_pool2d(masks[:, None].float(), 5, 1, 2)[:, 0] > 0
    assert at(near, neg).all()
    wide, _ = sample_points(masks, 0, 50, gen(), negative_band=100)  # a band wider than the image: any background
    assert not at(masks, wide).any() and (wide[..., 1] >= 25).any()
    # the object fills the image but one far corner: the ring is empty, so negatives come from all background
    far = torch.ones(1, 20, 20, dtype=torch.bool)
    far[0, 19, 19] = False
    coords, labels = sample_points(far, 0, 3, gen(), negative_band=1)
    assert (labels == 0).all() and (coords == torch.tensor([19.0, 19.0])).all()


def test_ignore_excluded() -> None:
    masks = blobs()
    ignore = torch.zeros_like(masks)
    ignore[:, :, :20] = True
    coords, labels = sample_points(masks, 4, 4, gen(), ignore=ignore)
    valid = labels >= 0
    assert (coords[..., 0][valid] >= 20).all()
    assert (labels[2, :4] == -1).all() and (labels[2, 4:] == 0).all()  # its only pixel is ignored
    assert (labels[0] >= 0).all()


def test_padding_empty_and_full() -> None:
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[1] = True
    coords, labels = sample_points(masks, 2, 3, gen())
    assert labels[0].tolist() == [-1, -1, 0, 0, 0]  # empty: no positives, negatives still drawn
    assert labels[1].tolist() == [1, 1, -1, -1, -1]  # full: no negatives
    assert (coords[0, :2] == 0).all() and (coords[1, 2:] == 0).all()
    coords, labels = sample_points(masks, 0, 0, gen())
    assert coords.shape == (2, 0, 2) and labels.shape == (2, 0)


def test_reproducible() -> None:
    masks = blobs()
    a = sample_points(masks, 3, 3, gen(7), negative_band=3)
    b = sample_points(masks, 3, 3, gen(7), negative_band=3)
    c = sample_points(masks, 3, 3, gen(8), negative_band=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    sampler = PromptSampler(num_positive=2, num_negative=1)
    s1, s2 = sampler(masks, gen(3)), sampler(masks, gen(3))
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert torch.equal(mask_boxes(masks, 0.1, gen(1)), mask_boxes(masks, 0.1, gen(1)))


def test_tight_box_and_empty() -> None:
    masks = torch.cat([blobs(), torch.zeros(1, 32, 40, dtype=torch.bool)])
    boxes = mask_boxes(masks)
    assert boxes.shape == (5, 4) and boxes.dtype == torch.float32
    assert boxes[:4].tolist() == [[8, 5, 29, 11], [14, 10, 26, 22], [0, 31, 0, 31], [3, 2, 24, 19]]
    assert boxes[4].isnan().all()
    assert mask_boxes(masks, 0.1, gen())[4].isnan().all()


@pytest.mark.parametrize("outward", [False, True])
def test_jittered_box_within_bound(outward: bool) -> None:
    masks = torch.zeros(64, 300, 300, dtype=torch.bool)
    masks[:32, 100:140, 120:220] = True  # 100 wide, 40 high: reach 10 / 4 px
    masks[32:, 30:270, 30:270] = True  # 240 x 240: 24 px, capped at 20
    tight = mask_boxes(masks)
    boxes = mask_boxes(masks, 0.1, gen(), outward=outward)
    moved = (boxes - tight).abs()
    reach = torch.tensor([[10.0, 4.0, 10.0, 4.0]] * 32 + [[20.0] * 4] * 32)
    assert (moved <= reach + 1e-4).all()
    assert moved[:32, 0].max() > 5 and moved[32:].max() > 15  # the noise is used, up to the cap
    if outward:
        assert (boxes[:, :2] <= tight[:, :2]).all() and (boxes[:, 2:] >= tight[:, 2:]).all()
    else:
        assert ((boxes - tight) < 0).any() and ((boxes - tight) > 0).any()
    uncapped = mask_boxes(masks[32:], 0.1, gen(), max_jitter=None, outward=outward)
    assert (uncapped - tight[32:]).abs().max() > 20


def test_box_clipped_to_image() -> None:
    masks = torch.zeros(16, 20, 30, dtype=torch.bool)
    masks[:, 0:20, 0:30] = True  # touches every border
    boxes = mask_boxes(masks, 0.5, gen(), max_jitter=None)
    assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= 29).all() and (boxes[:, [1, 3]] <= 19).all()
    assert (boxes[:, :2] <= boxes[:, 2:]).all()
    one = torch.zeros(50, 5, 5, dtype=torch.bool)
    one[:, 2, 2] = True
    boxes = mask_boxes(one, 2.0, gen(), max_jitter=None)  # big noise on a 1-px box: still ordered
    assert (boxes[:, :2] <= boxes[:, 2:]).all() and (boxes >= 0).all() and (boxes <= 4).all()


def test_correction_points_center() -> None:
    target = torch.zeros(3, 30, 30, dtype=torch.bool)
    predicted = torch.zeros_like(target)
    target[0, 5:20, 5:20] = True  # missed entirely: FN square, centre (12, 12)
    predicted[1, 2:25, 2:25] = True  # FP square 2..24, thicker than the FN sliver
    target[1, 28, 0:30] = True
    target[2, 4:9, 4:9] = True  # perfect prediction
    predicted[2] = target[2]
    coords, labels = correction_points(predicted, target, gen())
    assert coords.shape == (3, 1, 2) and labels.shape == (3, 1) and labels.dtype == torch.long
    assert labels[:, 0].tolist() == [1, 0, -1]
    assert coords[0, 0].tolist() == [12.0, 12.0]
    assert coords[1, 0].tolist() == [13.0, 13.0]
    assert coords[2, 0].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("mode", ["center", "uniform"])
def test_correction_points_in_error_region(mode: str) -> None:
    g = torch.Generator().manual_seed(5)
    target = torch.rand(32, 24, 24, generator=g) > 0.5
    predicted = torch.rand(32, 24, 24, generator=g) > 0.5
    predicted[0] = target[0]
    coords, labels = correction_points(predicted, target, gen(), mode=mode)
    fn, fp = target & ~predicted, predicted & ~target
    assert labels[0, 0] == -1
    rest = labels[1:, 0]
    assert (rest >= 0).all() and (rest == 1).any() and (rest == 0).any()
    assert torch.equal(at(fn, coords)[1:, 0], rest == 1) and torch.equal(at(fp, coords)[1:, 0], rest == 0)


def test_sampler_mix_and_shapes() -> None:
    masks = blobs().repeat(500, 1, 1)  # 2000 samples
    sampler = PromptSampler(num_positive=2, num_negative=1, box_probability=0.3, negative_band=4)
    out = sampler(masks, gen(11))
    assert set(out) == {"point_coords", "point_labels", "boxes", "has_box"}
    assert out["point_coords"].shape == (2000, 3, 2) and out["point_labels"].shape == (2000, 3)
    assert out["boxes"].shape == (2000, 4) and out["has_box"].dtype == torch.bool
    has_box = out["has_box"]
    # 2000 Bernoulli(0.3) draws: sd ~0.01, so 0.05 is a 5-sigma tolerance
    assert abs(has_box.float().mean().item() - 0.3) < 0.05
    assert (out["point_labels"][has_box] == -1).all() and (out["point_coords"][has_box] == 0).all()
    assert (out["point_labels"][~has_box] >= 0).all() and (out["boxes"][~has_box] == 0).all()
    tight = mask_boxes(masks)
    assert ((out["boxes"][has_box] - tight[has_box]).abs() <= 0.1 * 23 + 1e-4).all()
    with_points = PromptSampler(box_probability=1.0, points_with_box=True)(masks[:4], gen())
    assert with_points["has_box"].all() and (with_points["point_labels"] == 1).all()


def test_sampler_empty_mask_and_validation() -> None:
    masks = torch.zeros(3, 10, 10, dtype=torch.bool)
    out = PromptSampler(box_probability=1.0)(masks, gen())
    assert not out["has_box"].any() and not out["boxes"].isnan().any()
    assert (out["point_labels"] == -1).all()
    with pytest.raises(ValueError, match="box_probability"):
        PromptSampler(box_probability=1.5)
    with pytest.raises(ValueError, match="box_probability=1"):
        PromptSampler(num_positive=0, num_negative=0)
    with pytest.raises(ValueError, match="negative_band"):
        sample_points(masks, 1, 1, negative_band=0)
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        sample_points(masks[0], 1, 1)


def test_corner_points() -> None:
    boxes = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    coords, labels = boxes_to_corner_points(boxes, torch.tensor([True, False]))
    assert coords.tolist() == [[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]]
    assert labels.tolist() == [[2, 3], [-1, -1]]


def test_non_bool_masks() -> None:
    masks = blobs().to(torch.uint8)
    coords, labels = sample_points(masks, 1, 1, gen())
    assert (labels >= 0).all() and at(masks.bool(), coords)[:, 0].all()
