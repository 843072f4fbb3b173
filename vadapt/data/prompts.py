"""Prompts for SAM-style fine-tuning, drawn from ground-truth masks: points, boxes and correction clicks.

Everything is batched over ``B`` binary masks ``(B, H, W)`` (bool, or any dtype where non-zero is the object),
works on the masks' device and draws its randomness from an optional ``torch.Generator`` (a CPU generator works
with CUDA masks: the numbers are drawn on the generator's device and moved).

Coordinate conventions are SAM's (``segment_anything.modeling.PromptEncoder``, SAM 2 the same):

* points are ``(x, y)`` = ``(column, row)`` pixel indices of the input image, as floats. SAM's prompt encoder
  adds 0.5 itself ("shift to center of pixel"), so index ``(c, r)`` addresses the centre of pixel ``(c, r)``;
  do not add 0.5 here. Rescale them with the image (``ResizeLongestSide.apply_coords``) like any SAM prompt.
* point labels: ``1`` foreground, ``0`` background, ``-1`` padding (coords ``(0, 0)``), which SAM embeds as
  "not a point" and ignores. Padding keeps a batch rectangular when a sample has fewer usable pixels.
* boxes are ``(x0, y0, x1, y1)`` with inclusive pixel indices (``x1`` is the object's last column), as SAM's
  ``utils.amg.batched_mask_to_box`` and SAM 2's ``mask_to_box`` compute them. An empty mask has no box: NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

PAD_LABEL = -1
BOX_LABELS = (2, 3)  # SAM / SAM 2 labels of a box's top-left and bottom-right corners


def _as_masks(masks: Tensor, name: str) -> Tensor:
    if not isinstance(masks, Tensor) or masks.ndim != 3:
        shape = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(f"{name} must be a (B, H, W) tensor, got {shape}; squeeze a channel axis with .squeeze(1)")
    return masks if masks.dtype == torch.bool else masks != 0


def _as_ignore(ignore: Tensor | None, masks: Tensor) -> Tensor | None:
    if ignore is None:
        return None
    ignore = _as_masks(ignore, "ignore")
    if ignore.shape != masks.shape:
        raise ValueError(f"ignore has shape {tuple(ignore.shape)} but masks have {tuple(masks.shape)}")
    return ignore.to(masks.device)


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Uniform [0, 1) numbers on ``device``, drawn on the generator's device (so any generator works)."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where).to(device)


def _count(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return int(value)


def _pick(valid: Tensor, k: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """``k`` uniformly random pixels of each ``valid`` map ``(B, H, W)``.

    Distinct pixels while there are at least ``k``; with fewer, the drawn ones repeat (in order); with none, the
    slots are marked not ok. Returns coords ``(B, k, 2)`` float ``(x, y)`` (0 where not ok) and ok ``(B, k)`` bool.
    """
    b, h, w = valid.shape
    device = valid.device
    if k == 0:
        return torch.zeros(b, 0, 2, device=device), torch.zeros(b, 0, dtype=torch.bool, device=device)
    flat = valid.reshape(b, h * w)
    # random keys, invalid pixels last: the top k keys are a uniform random subset of the valid pixels
    keys = _rand((b, h * w), generator, device).masked_fill(~flat, -1.0)
    top = keys.topk(min(k, h * w), dim=1).indices
    count = flat.sum(dim=1)
    slot = torch.arange(k, device=device)[None] % count.clamp(min=1)[:, None]
    idx = top.gather(1, slot)
    ok = (count > 0)[:, None].expand(b, k)
    coords = torch.stack([idx % w, idx // w], dim=-1).float()
    return coords.masked_fill(~ok[..., None], 0.0), ok


def _dilate(masks: Tensor, radius: int) -> Tensor:
    """Pixels within ``radius`` (chessboard distance, like ``radius`` 3x3 dilations) of the mask: (B, H, W).

    Separable window sums from cumulative sums, so the cost does not grow with the radius."""
    out = masks.to(torch.int32)
    for dim in (1, 2):
        size = out.shape[dim]
        pad = [0, 0, 0, 0]
        pad[2 * (2 - dim)] = radius + 1  # F.pad lists the last dim first
        pad[2 * (2 - dim) + 1] = radius
        sums = F.pad(out, pad).cumsum(dim)
        out = sums.narrow(dim, 2 * radius + 1, size) - sums.narrow(dim, 0, size)
    return out > 0


def sample_points(masks: Tensor, num_positive: int, num_negative: int, generator: torch.Generator | None = None,
                  ignore: Tensor | None = None, negative_band: int | None = None) -> tuple[Tensor, Tensor]:
    """Random positive points in each mask and negative points in its background.

    Args:
        masks: ``(B, H, W)`` bool object masks.
        num_positive: points per sample drawn uniformly from the object (distinct pixels while there are enough,
            repeated when the object has fewer pixels).
        num_negative: points per sample drawn uniformly from the background, the same way.
        generator: source of randomness (seeded for reproducible prompts).
        ignore: optional ``(B, H, W)`` bool; these pixels are neither positive nor negative (nodata, unknown).
        negative_band: if set, negatives come only from background pixels within this many pixels of the object
            (chessboard distance, i.e. the object grown by ``negative_band`` 3x3 dilations), so they sit near
            the boundary where they are informative. Where that ring is empty (object touching all borders, all
            ring pixels ignored, empty object) the whole background is used.

    Returns:
        ``coords`` ``(B, P, 2)`` float ``(x, y)`` pixel indices and ``labels`` ``(B, P)`` long, with
        ``P = num_positive + num_negative``: positives first (label 1), then negatives (label 0). Slots that
        cannot be filled are padding (label -1, coords 0): positives of an empty mask, negatives of a full
        mask (an empty mask still gets negatives, a full mask still gets positives).
    """
    masks = _as_masks(masks, "masks")
    num_positive, num_negative = _count(num_positive, "num_positive"), _count(num_negative, "num_negative")
    if negative_band is not None and (isinstance(negative_band, bool) or int(negative_band) != negative_band
                                      or negative_band < 1):
        raise ValueError(f"negative_band must be None or an int >= 1 (pixels), got {negative_band!r}")
    ignore = _as_ignore(ignore, masks)
    usable = ~ignore if ignore is not None else torch.ones_like(masks)
    foreground, background = masks & usable, ~masks & usable
    if negative_band is not None and num_negative > 0:
        ring = background & _dilate(masks, int(negative_band))
        has_ring = ring.flatten(1).any(dim=1)[:, None, None]
        background = torch.where(has_ring, ring, background)
    pos, pos_ok = _pick(foreground, num_positive, generator)
    neg, neg_ok = _pick(background, num_negative, generator)
    coords = torch.cat([pos, neg], dim=1)
    labels = torch.cat([torch.where(pos_ok, 1, PAD_LABEL), torch.where(neg_ok, 0, PAD_LABEL)], dim=1)
    return coords, labels.long()


def mask_boxes(masks: Tensor, jitter: float = 0.0, generator: torch.Generator | None = None,
               max_jitter: float | None = 20.0, outward: bool = False) -> Tensor:
    """The tight box of each mask, optionally jittered.

    Jitter moves each side independently by ``U(-1, 1) * min(jitter * side, max_jitter)`` pixels, where ``side``
    is the box's width (x sides) or height (y sides) in pixels (``x1 - x0 + 1``). This is SAM's training noise
    (the SAM paper: noise of 10% of the box side, at most 20 px; SAM 2 ``sam2_utils.sample_box_points``: uniform,
    ``noise=0.1``, ``noise_bound=20``); use ``jitter=0.1``. With ``outward=True`` sides only move outward
    (``U(0, 1)`` instead), so the box always contains the object, as micro-sam's ``_distort_boxes`` does (its
    default factor 0.025, uncapped: ``max_jitter=None``). Jittered boxes are clipped to the image
    (``0 <= x <= W - 1``, ``0 <= y <= H - 1``) and keep ``x0 <= x1``, ``y0 <= y1``.

    Args:
        masks: ``(B, H, W)`` bool object masks.
        jitter: the largest move of a side as a fraction of the box side (0 = the tight box).
        generator: source of randomness for the jitter.
        max_jitter: cap on a side's move in pixels (``None``: no cap).
        outward: only grow the box.

    Returns:
        ``(B, 4)`` float ``(x0, y0, x1, y1)``, inclusive pixel indices; all NaN for an empty mask (test with
        ``boxes.isnan().any(-1)``; ``PromptSampler`` turns that into ``has_box=False``).
    """
    masks = _as_masks(masks, "masks")
    if not jitter >= 0:
        raise ValueError(f"jitter must be >= 0 (a fraction of the box side), got {jitter!r}")
    if max_jitter is not None and not max_jitter >= 0:
        raise ValueError(f"max_jitter must be None or >= 0 (pixels), got {max_jitter!r}")
    b, h, w = masks.shape
    device = masks.device
    cols, rows = masks.any(dim=1), masks.any(dim=2)  # (B, W), (B, H)
    xs, ys = torch.arange(w, device=device), torch.arange(h, device=device)
    x0 = torch.where(cols, xs, w).amin(dim=1)
    x1 = torch.where(cols, xs, -1).amax(dim=1)
    y0 = torch.where(rows, ys, h).amin(dim=1)
    y1 = torch.where(rows, ys, -1).amax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    if jitter > 0:
        reach_x = jitter * (x1 - x0 + 1).float()
        reach_y = jitter * (y1 - y0 + 1).float()
        if max_jitter is not None:
            reach_x, reach_y = reach_x.clamp(max=max_jitter), reach_y.clamp(max=max_jitter)
        reach = torch.stack([reach_x, reach_y, reach_x, reach_y], dim=1)
        noise = _rand((b, 4), generator, device)
        if outward:
            noise = noise * torch.tensor([-1.0, -1.0, 1.0, 1.0], device=device)
        else:
            noise = 2 * noise - 1
        boxes = boxes + noise * reach
        high = torch.tensor([w - 1, h - 1, w - 1, h - 1], dtype=boxes.dtype, device=device)
        boxes = torch.minimum(boxes.clamp(min=0), high)
        lo, hi = torch.minimum(boxes[:, :2], boxes[:, 2:]), torch.maximum(boxes[:, :2], boxes[:, 2:])
        boxes = torch.cat([lo, hi], dim=1)
    empty = ~cols.any(dim=1)
    return boxes.masked_fill(empty[:, None], float("nan"))


def _inner_distance(errors: Tensor) -> Tensor:
    """Euclidean distance of each error pixel to the nearest correct pixel, the image border counting as correct
    (as RITM / SAM 2 pad by one pixel): ``(B, H, W)`` float, 0 outside the errors."""
    try:
        from scipy.ndimage import distance_transform_edt
    except ImportError as exc:  # scipy comes with albumentations; without it, ask for the uniform mode
        raise ImportError("correction_points(mode='center') needs scipy; install it or use mode='uniform'") from exc
    padded = np.pad(errors.cpu().numpy(), ((0, 0), (1, 1), (1, 1)))
    dist = np.stack([distance_transform_edt(e)[1:-1, 1:-1] for e in padded]) if len(padded) else padded[:, 1:-1, 1:-1]
    return torch.from_numpy(dist.astype(np.float32)).to(errors.device)


def correction_points(predicted: Tensor, target: Tensor, generator: torch.Generator | None = None,
                      mode: Literal["center", "uniform"] = "center",
                      ignore: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One corrective click per sample in the prediction's error region, for iterative (interactive) training.

    A click in the false negatives (``target & ~predicted``) is positive (label 1); one in the false positives
    (``predicted & ~target``) is negative (label 0).

    * ``mode="center"`` (default): the error pixel farthest from any correct pixel (Euclidean distance transform,
      ``scipy.ndimage.distance_transform_edt``, image border counted as correct), i.e. the interior of the
      thickest error region, whichever kind it is; ties are broken uniformly at random with ``generator``. This
      is RITM's click simulation, used by SAM 2 (``sam2_utils.sample_one_point_from_error_center``) and the SAM
      paper's interactive evaluation (a click at the centre of the largest error).
    * ``mode="uniform"``: a uniformly random error pixel (so FN vs FP in proportion to their areas), as SAM 2's
      ``sample_random_points_from_errors`` and micro-sam's ``IterativePromptGenerator`` (which adds one click of
      each kind).

    Args:
        predicted: ``(B, H, W)`` bool predicted masks (threshold the logits first).
        target: ``(B, H, W)`` bool ground-truth masks.
        generator: source of randomness.
        mode: ``"center"`` or ``"uniform"``.
        ignore: optional ``(B, H, W)`` bool pixels whose errors do not count.

    Returns:
        ``coords`` ``(B, 1, 2)`` float ``(x, y)`` pixel indices and ``labels`` ``(B, 1)`` long; a sample without
        errors gets the padding point (label -1, coords 0).
    """
    predicted, target = _as_masks(predicted, "predicted"), _as_masks(target, "target")
    if predicted.shape != target.shape:
        raise ValueError(f"predicted has shape {tuple(predicted.shape)} but target has {tuple(target.shape)}")
    predicted = predicted.to(target.device)
    false_neg, false_pos = target & ~predicted, predicted & ~target
    ignore = _as_ignore(ignore, target)
    if ignore is not None:
        false_neg, false_pos = false_neg & ~ignore, false_pos & ~ignore
    errors = false_neg | false_pos
    match mode:
        case "center":
            dist = _inner_distance(errors)
            best = dist.flatten(1).amax(dim=1)[:, None, None]
            candidates = errors & (dist >= best)
        case "uniform":
            candidates = errors
        case _:
            raise ValueError(f"mode must be 'center' or 'uniform', got {mode!r}")
    coords, ok = _pick(candidates, 1, generator)
    x, y = coords[:, 0, 0].long(), coords[:, 0, 1].long()
    positive = false_neg[torch.arange(len(x), device=x.device), y, x]
    labels = torch.where(ok[:, 0], positive.long(), PAD_LABEL)[:, None]
    return coords, labels


def boxes_to_corner_points(boxes: Tensor, has_box: Tensor) -> tuple[Tensor, Tensor]:
    """Boxes as two corner points, SAM 2's way of mixing box and point prompts in one batch.

    Args:
        boxes: ``(B, 4)`` float ``(x0, y0, x1, y1)``.
        has_box: ``(B,)`` bool; samples without a box get two padding points.

    Returns:
        ``coords`` ``(B, 2, 2)`` float and ``labels`` ``(B, 2)`` long: 2 top-left, 3 bottom-right, -1 padding.
        Concatenate them after the point prompts (SAM 2's prompt encoder embeds labels 2/3 as box corners;
        SAM 1's does not: give it ``boxes`` for the samples with a box instead).
    """
    coords = boxes.reshape(-1, 2, 2).nan_to_num(0.0)
    labels = torch.tensor(BOX_LABELS, device=boxes.device).expand(len(boxes), 2)
    labels = torch.where(has_box[:, None], labels, PAD_LABEL)
    return coords.masked_fill(~has_box[:, None, None], 0.0), labels.long()


@dataclass
class PromptSampler:
    """Training prompts for a batch of ground-truth masks: per sample, points only or a box.

    Policy: each sample independently gets a (jittered) box with probability ``box_probability``, otherwise
    ``num_positive`` positive and ``num_negative`` negative points. micro-sam's ``SamTrainer`` alternates the two
    by iteration (even: 1 positive point, odd: box only), SAM 2 draws per object (``prob_to_use_box_input``);
    drawing per sample gives the same 50/50 mix in expectation at ``box_probability=0.5`` while every batch sees
    both. A box sample's points are padding (box only, as micro-sam) unless ``points_with_box`` is set. An empty
    mask never gets a box (``has_box`` False) and its positive points are padding: such samples carry no object
    prompt and the task should drop them.

    Args:
        num_positive: positive points per point-prompted sample (micro-sam trains with 1).
        num_negative: negative points per point-prompted sample.
        box_probability: chance that a sample is prompted with a box.
        box_jitter: box noise as a fraction of the box side (SAM's 0.1), see ``mask_boxes``.
        box_jitter_max: cap on the box noise in pixels (SAM's 20; ``None``: no cap).
        negative_band: negatives within this many pixels of the object (``None``: anywhere in the background).
        points_with_box: box samples also get their points.
    """

    num_positive: int = 1
    num_negative: int = 0
    box_probability: float = 0.5
    box_jitter: float = 0.1
    box_jitter_max: float | None = 20.0
    negative_band: int | None = None
    points_with_box: bool = False

    def __post_init__(self) -> None:
        _count(self.num_positive, "num_positive")
        _count(self.num_negative, "num_negative")
        if not 0.0 <= self.box_probability <= 1.0:
            raise ValueError(f"box_probability must be in [0, 1], got {self.box_probability!r}")
        if self.num_positive + self.num_negative == 0 and self.box_probability < 1.0:
            raise ValueError("num_positive and num_negative are both 0, so point-prompted samples would get no "
                             f"prompt: add points or set box_probability=1 (got {self.box_probability!r})")
        if not self.box_jitter >= 0:
            raise ValueError(f"box_jitter must be >= 0, got {self.box_jitter!r}")
        if self.box_jitter_max is not None and not self.box_jitter_max >= 0:
            raise ValueError(f"box_jitter_max must be None or >= 0 (pixels), got {self.box_jitter_max!r}")
        if self.negative_band is not None and (int(self.negative_band) != self.negative_band
                                               or self.negative_band < 1):
            raise ValueError(f"negative_band must be None or an int >= 1, got {self.negative_band!r}")

    def __call__(self, masks: Tensor, generator: torch.Generator | None = None,
                 ignore: Tensor | None = None) -> dict[str, Tensor]:
        """Prompts for ``masks`` ``(B, H, W)`` (bool).

        Returns:
            ``{"point_coords": (B, P, 2) float, "point_labels": (B, P) long, "boxes": (B, 4) float,
            "has_box": (B,) bool}`` with ``P = num_positive + num_negative``; conventions as in the module
            docstring. ``boxes`` rows without a box are 0 (never NaN); mask them with ``has_box``.
        """
        masks = _as_masks(masks, "masks")
        coords, labels = sample_points(masks, self.num_positive, self.num_negative, generator, ignore,
                                       self.negative_band)
        boxes = mask_boxes(masks, self.box_jitter, generator, max_jitter=self.box_jitter_max)
        has_box = (_rand((len(masks),), generator, masks.device) < self.box_probability) & ~boxes.isnan().any(-1)
        if not self.points_with_box:
            coords = coords.masked_fill(has_box[:, None, None], 0.0)
            labels = labels.masked_fill(has_box[:, None], PAD_LABEL)
        boxes = boxes.masked_fill(~has_box[:, None], 0.0)
        return {"point_coords": coords, "point_labels": labels, "boxes": boxes, "has_box": has_box}
