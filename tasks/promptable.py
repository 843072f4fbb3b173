"""Promptable segmentation with SAM (v1): a frozen, adapted image encoder, SAM's prompt encoder and mask decoder.

The image encoder is the registered SAM backbone (``sam_vit_b``, ...) with any vadapt adapter; the prompt encoder
and mask decoder come from the same official checkpoint file (``backbones.sam.build_sam_prompt_decoder``). Each
part is switched separately: ``prompt_encoder`` frozen or trained, ``mask_decoder`` frozen, trained or LoRA-adapted.

Prompts follow SAM's conventions (see :mod:`vadapt.data.prompts`): points ``(x, y)`` in input pixels with labels
1 (foreground), 0 (background), -1 (padding); boxes ``(x0, y0, x1, y1)``; a box row of NaN means "no box" for that
sample. Training draws them from the ground-truth mask with :class:`~vadapt.data.prompts.PromptSampler` (points
inside / outside, jittered boxes), as SAM-style fine-tuning does. With ``prompting="sampled"`` (default) every
sample needs a point or a box, and ``forward`` without any prompt raises a ``ValueError``.

``prompting="automatic"``: MapSAM's prompt-free mode (official code ``segment_anything/modeling/sam.py``
``forward_train``). A trainable coarse-mask head gives logits ``(B, 1, g, g)`` on the embedding grid; from them:

* point prompts: the ``auto_points`` highest-scoring grid cells as positives (label 1) and the ``auto_points``
  lowest as negatives (label 0), at the cell centres in input pixels (:func:`select_point_prompts`), through
  SAM's prompt encoder (which appends its padding point, as in MapSAM);
* the "positional-semantic" prompt: the mean of the detached image embedding over the cells whose coarse
  probability is > 0.5 (zero vector if none; :func:`masked_mean_embedding`).

The loss adds ``coarse_weight * (focal_weight * focal + dice_weight * dice)`` of the coarse logits (bilinearly
upsampled to the input) against the mask, as MapSAM. ``forward(image)`` without prompts then segments
automatically; prompts given explicitly are still decoded as usual. Deviations from the official code:

* the coarse head is ONE 1x1 conv (``C -> 1``) on the final (neck) image embedding; MapSAM averages the logits of
  four SPGen heads (1x1-conv MLPs ``256-64-16-1`` with LayerNorm/GELU) on the final embedding and on the neck
  applied to blocks 0, 4 and 8;
* points are picked on the embedding grid (cell centres, only cells inside the unpadded input); MapSAM picks
  pixels of the coarse map bilinearly upsampled to the input (its two picks are usually neighbouring pixels);
* the masked-mean embedding is appended as ONE extra sparse prompt token, which needs no change to SAM's
  decoder; MapSAM adds it to every query token before each two-way-transformer layer (and to the final
  token-to-image attention's queries), and skips it when the mask is empty;
* MapSAM's masked cross-attention (token-to-image attention restricted to the coarse / first-layer mask) is NOT
  implemented.

Sizes, as SAM: inputs are normalised and padded (bottom/right) to the encoder's ``img_size`` square (1024 for the
official weights, or the task's ``img_size``), the embedding is ``(B, 256, img_size/16, img_size/16)``, the decoder's
low-resolution masks are upsampled to ``img_size`` and cropped back to the input size. Larger inputs are refused.

The image embedding is computed once per image and reused for many prompts: ``decode`` takes embeddings, and
``predict_with_prompts`` keeps the last few images' embeddings in an :class:`EmbeddingCache`.

Loss: ``focal_weight * focal + dice_weight * dice`` on sigmoid logits, ignore pixels left out. The defaults
0.2 / 0.8 are MapSAM's (official code); SAM itself trained with focal:dice = 20:1 (paper, Sec. 3 / App. A).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vadapt.adapters import AdapterConfig
from vadapt.bands import RGB, BandInit
from vadapt.data.prompts import PromptSampler

from .base import BaseTask


class EmbeddingCache:
    """A small LRU of image embeddings keyed by an image id (default: a hash of the image's values)."""

    def __init__(self, maxsize: int = 4) -> None:
        if maxsize < 1:
            raise ValueError(f"EmbeddingCache maxsize must be >= 1, got {maxsize!r}")
        self.maxsize = maxsize
        self._items: OrderedDict[str, Tensor] = OrderedDict()

    @staticmethod
    def key(image: Tensor) -> str:
        data = image.detach().contiguous().cpu()
        digest = hashlib.sha1(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        digest.update(f"{tuple(data.shape)}{data.dtype}".encode())
        return digest.hexdigest()

    def get(self, key: str) -> Tensor | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: Tensor) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.maxsize:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def select_point_prompts(coarse_logits: Tensor, k: int, input_size: int,
                         size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """MapSAM's automatic points: the ``k`` top-scoring grid cells as positives, the ``k`` lowest as negatives.

    Args:
        coarse_logits: ``(B, 1, h, w)`` coarse mask logits on the embedding grid.
        k: points per sign.
        input_size: the padded (square) SAM input's side in pixels; a cell is ``input_size / w`` pixels wide.
        size: the unpadded input ``(H, W)``: cells whose centre lies outside it are never picked (default: all).

    Returns:
        coords ``(B, 2k, 2)`` float ``(x, y)`` pixel centres of the cells (positives first, best first; then
        negatives, lowest first) and labels ``(B, 2k)`` (``k`` ones then ``k`` zeros).
    """
    if coarse_logits.ndim != 4 or coarse_logits.shape[1] != 1:
        raise ValueError(f"coarse_logits must be (B, 1, h, w), got {tuple(coarse_logits.shape)}")
    batch, _, h, w = coarse_logits.shape
    cell_y, cell_x = input_size / h, input_size / w
    ys = (torch.arange(h, device=coarse_logits.device, dtype=torch.float32) + 0.5) * cell_y
    xs = (torch.arange(w, device=coarse_logits.device, dtype=torch.float32) + 0.5) * cell_x
    valid = torch.ones(h, w, dtype=torch.bool, device=coarse_logits.device)
    if size is not None:
        valid = (ys[:, None] < size[0]) & (xs[None, :] < size[1])
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= int(valid.sum()):
        raise ValueError(f"auto_points must be an int in [1, {int(valid.sum())}] (grid cells inside the input), "
                         f"got {k!r}")
    scores = coarse_logits.detach().float().flatten(1)  # (B, h*w)
    flat_valid = valid.flatten()[None]
    top = scores.masked_fill(~flat_valid, float("-inf")).topk(k, dim=1).indices
    low = scores.masked_fill(~flat_valid, float("inf")).topk(k, dim=1, largest=False).indices
    index = torch.cat([top, low], dim=1)
    coords = torch.stack([xs[index % w], ys[index // w]], dim=-1)
    labels = torch.cat([torch.ones(batch, k), torch.zeros(batch, k)], dim=1).to(coarse_logits.device, torch.long)
    return coords, labels


def masked_mean_embedding(embedding: Tensor, coarse_logits: Tensor) -> Tensor:
    """MapSAM's positional-semantic prompt: the mean of ``embedding`` ``(B, C, h, w)`` over the cells where
    ``sigmoid(coarse_logits) > 0.5`` (``(B, 1, h, w)``), both detached -> ``(B, C)``; a zero vector if none."""
    if coarse_logits.shape[-2:] != embedding.shape[-2:] or coarse_logits.shape[:2] != (len(embedding), 1):
        raise ValueError(f"coarse_logits {tuple(coarse_logits.shape)} must be (B, 1, h, w) of the embedding "
                         f"{tuple(embedding.shape)}")
    mask = (coarse_logits.detach() > 0).to(embedding.dtype)  # sigmoid > 0.5
    total = (embedding.detach() * mask).sum(dim=(-2, -1))
    return total / mask.sum(dim=(-2, -1)).clamp(min=1)


def _check_prompts(batch: int, point_coords: Tensor | None, point_labels: Tensor | None,
                   boxes: Tensor | None) -> None:
    """Clear errors for prompt shapes that do not fit ``batch`` samples."""
    if (point_coords is None) != (point_labels is None):
        raise ValueError("point_coords and point_labels go together: give both or neither")
    if point_coords is not None:
        if point_coords.ndim != 3 or point_coords.shape[-1] != 2 or point_coords.shape[0] != batch:
            raise ValueError(f"point_coords must be (B={batch}, P, 2) (x, y) pixels, got {tuple(point_coords.shape)}")
        if tuple(point_labels.shape) != tuple(point_coords.shape[:2]):
            raise ValueError(f"point_labels must be (B, P) = {tuple(point_coords.shape[:2])} (1 foreground, 0 "
                             f"background, -1 padding), got {tuple(point_labels.shape)}")
    if boxes is not None and (boxes.ndim != 2 or tuple(boxes.shape) != (batch, 4)):
        raise ValueError(f"boxes must be (B={batch}, 4) (x0, y0, x1, y1) pixels, got {tuple(boxes.shape)}")
    if point_coords is None and boxes is None:
        raise ValueError("SAM needs a prompt: give point_coords/point_labels and/or boxes (automatic, prompt-free "
                         "segmentation is not supported by PromptableSegmentationTask)")


class PromptableSegmentationTask(BaseTask):
    """SAM fine-tuning with prompts drawn from ground-truth masks; see module docstring.

    Batches are dicts with ``image`` (float, raw band values) and ``mask`` (long class ids, ``ignore_index``
    where unknown). The object to segment is ``mask == foreground_class`` (default: every class > 0).
    """

    @property
    def needs_prompts(self) -> bool:
        """vadapt infer (prompt-free folder jobs) refuses tasks that need prompts with a clear message."""
        return self.hparams.get("prompting", "sampled") != "automatic"

    def __init__(
        self,
        backbone: str = "sam_vit_b",
        weights: str | None = None,
        bands: tuple[str, ...] = RGB,
        adapter: AdapterConfig | None = None,
        prompt_encoder: Literal["frozen", "train"] = "frozen",
        mask_decoder: Literal["frozen", "train", "lora"] = "train",
        decoder_lora_r: int = 4,
        foreground_class: int | None = None,
        num_positive: int = 1,
        num_negative: int = 0,
        box_probability: float = 0.5,
        box_jitter: float = 0.1,
        focal_weight: float = 0.2,
        dice_weight: float = 0.8,
        multimask_output: bool = False,
        ignore_index: int | None = 255,
        lr: float = 1e-4,
        weight_decay: float = 1e-2,
        warmup_steps: int = 0,
        poly_power: float = 1.0,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        img_size: int | None = None,
        extra_band_init: BandInit = "copy",
        grad_checkpointing: bool = False,
        preview_images: int = 4,
        cache_size: int = 4,
        prompting: Literal["sampled", "automatic"] = "sampled",
        auto_points: int = 2,
        coarse_weight: float = 1.0,
    ) -> None:
        """
        Args:
            backbone: a SAM backbone (``sam_vit_b``, ``sam_vit_l``, ``sam_vit_h``; ``sam_test`` in tests).
            weights: ``None`` (random), ``"pretrained"`` or a path to the official full SAM checkpoint
                (image encoder, prompt encoder and mask decoder are all read from it).
            bands: input band names, matched by name to the pretrained first layer.
            adapter: the image encoder's adapter (e.g. ``vadapt.adapters.QVDoraConfig`` as MapSAM); ``None``
                keeps the encoder as it is.
            prompt_encoder: ``"frozen"`` or ``"train"``.
            mask_decoder: ``"frozen"``, ``"train"`` (all of it, as MapSAM / SAMed) or ``"lora"`` (LoRA of rank
                ``decoder_lora_r`` on the q/v projections of its two-way transformer).
            foreground_class: the class id that is the object; ``None``: every class > 0 (binary masks).
            num_positive, num_negative, box_probability, box_jitter: training prompts (``PromptSampler``).
            focal_weight, dice_weight: loss weights (MapSAM 0.2 / 0.8; SAM's paper used 20:1 focal:dice).
            multimask_output: decode SAM's three masks; training back-propagates the best one per sample (SAM).
            ignore_index: mask value left out of loss, metrics and prompts.
            lr, weight_decay, warmup_steps, poly_power: AdamW with linear warm-up then poly decay.
            mean, std: per-band input statistics (raw units); default: SAM's RGB statistics.
            img_size: the encoder's input size (default the pretraining size, 1024); inputs are padded to it.
            extra_band_init: first-layer init of bands the pretrained model lacks.
            grad_checkpointing: recompute adapted blocks in backward to save memory.
            preview_images: validation images drawn in the per-epoch picture (0 = none).
            cache_size: image embeddings kept by ``predict_with_prompts``.
            prompting: ``"sampled"`` (prompts drawn from the masks in training, given by the user otherwise) or
                ``"automatic"`` (MapSAM's prompt-free mode; see module docstring).
            auto_points: automatic prompting's positive and negative points, each (MapSAM 2).
            coarse_weight: automatic prompting's weight of the coarse-mask loss (MapSAM 1).
        """
        if prompting not in ("sampled", "automatic"):
            raise ValueError(f"prompting must be 'sampled' or 'automatic', got {prompting!r}")
        if isinstance(auto_points, bool) or not isinstance(auto_points, int) or auto_points < 1:
            raise ValueError(f"auto_points must be an int >= 1, got {auto_points!r}")
        for name, value in (("focal_weight", focal_weight), ("dice_weight", dice_weight),
                            ("coarse_weight", coarse_weight)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if isinstance(decoder_lora_r, bool) or not isinstance(decoder_lora_r, int) or decoder_lora_r < 1:
            raise ValueError(f"decoder_lora_r must be an int >= 1, got {decoder_lora_r!r}")
        super().__init__()

    # ---- models ------------------------------------------------------------------------------------------
    def configure_head(self) -> None:
        from vadapt.backbones.sam import SamBackbone, build_sam_prompt_decoder

        hp = self.hparams
        if not isinstance(self.backbone, SamBackbone):
            raise ValueError(f"PromptableSegmentationTask needs a SAM backbone (sam_vit_b, sam_vit_l, sam_vit_h, "
                             f"sam_test), got {hp['backbone']!r}")
        self.prompt_encoder, self.mask_decoder = build_sam_prompt_decoder(self.backbone, hp["weights"])
        match hp["prompt_encoder"]:
            case "frozen":
                self.prompt_encoder.requires_grad_(False)
            case "train":
                self.prompt_encoder.requires_grad_(True)
            case other:
                raise ValueError(f"prompt_encoder must be 'frozen' or 'train', got {other!r}")
        match hp["mask_decoder"]:
            case "frozen":
                self.mask_decoder.requires_grad_(False)
            case "train":
                self.mask_decoder.requires_grad_(True)
            case "lora":
                import peft

                self.mask_decoder.requires_grad_(False)
                config = peft.LoraConfig(r=hp["decoder_lora_r"], lora_alpha=hp["decoder_lora_r"],
                                         target_modules=["q_proj", "v_proj"], bias="none")
                peft.inject_adapter_in_model(config, self.mask_decoder, adapter_name="default")
                for name, p in self.mask_decoder.named_parameters():
                    p.requires_grad_("lora_" in name)
            case other:
                raise ValueError(f"mask_decoder must be 'frozen', 'train' or 'lora', got {other!r}")
        self.sampler = PromptSampler(num_positive=hp["num_positive"], num_negative=hp["num_negative"],
                                     box_probability=hp["box_probability"], box_jitter=hp["box_jitter"])
        self.cache = EmbeddingCache(hp["cache_size"])
        # automatic prompting's coarse-mask head (one 1x1 conv; MapSAM: four SPGen MLPs, see module docstring)
        self.coarse_head = nn.Conv2d(self.backbone.out_channels[-1], 1, 1) if self.automatic else None

    @property
    def automatic(self) -> bool:
        return self.hparams.get("prompting", "sampled") == "automatic"

    def configure_metrics(self) -> None:
        from torchmetrics import MetricCollection
        from torchmetrics.classification import BinaryF1Score, BinaryJaccardIndex

        ignore = self.hparams["ignore_index"]

        def scores() -> MetricCollection:
            return MetricCollection({"iou": BinaryJaccardIndex(ignore_index=ignore),
                                     "f1": BinaryF1Score(ignore_index=ignore)})

        # "fit", not "train": nn.Module.train is a method, so it cannot be a ModuleDict key
        self.scores = nn.ModuleDict({stage: scores() for stage in ("fit", "val", "test")})
        self._preview: list[tuple] = []

    def train(self, mode: bool = True) -> PromptableSegmentationTask:
        super().train(mode)
        if hasattr(self, "cache"):
            self.cache.clear()  # weights may change: cached embeddings would go stale
        return self

    # ---- model -------------------------------------------------------------------------------------------
    @property
    def img_size(self) -> int:
        return self.backbone.img_size

    def image_embeddings(self, images: Tensor) -> Tensor:
        """``(B, len(bands), H, W)`` raw values, ``H, W <= img_size`` -> SAM embeddings ``(B, C, g, g)``,
        ``g = img_size / 16`` (the input is normalised, then padded bottom/right with zeros as SAM does)."""
        height, width = images.shape[-2:]
        if height > self.img_size or width > self.img_size:
            raise ValueError(f"input {height}x{width} is larger than the encoder's {self.img_size}x{self.img_size}: "
                             "resize it (SAM's ResizeLongestSide) or set img_size")
        x = F.pad(self.normalise(images), (0, self.img_size - width, 0, self.img_size - height))
        return self.backbone(x)[-1]

    def decode(self, embeddings: Tensor, point_coords: Tensor | None = None, point_labels: Tensor | None = None,
               boxes: Tensor | None = None, size: tuple[int, int] | None = None,
               extra_tokens: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Masks for one prompt set per embedding.

        Args:
            embeddings: ``(B, C, g, g)`` from :meth:`image_embeddings`.
            point_coords, point_labels: ``(B, P, 2)`` float ``(x, y)`` pixels and ``(B, P)`` labels (1, 0, -1).
            boxes: ``(B, 4)`` ``(x0, y0, x1, y1)`` pixels; a NaN row means no box for that sample.
            size: the input ``(H, W)`` to crop to (default ``img_size``).
            extra_tokens: ``(B, T, C)`` appended to the sparse prompt embeddings (automatic prompting's
                masked-mean embedding).

        Returns:
            mask logits ``(B, M, H, W)`` and predicted IoUs ``(B, M)``, ``M`` 3 with ``multimask_output`` else 1.
        """
        _check_prompts(len(embeddings), point_coords, point_labels, boxes)
        size = size or (self.img_size, self.img_size)
        dense_pe = self.prompt_encoder.get_dense_pe()
        masks, ious = [], []
        for i in range(len(embeddings)):  # SAM's decoder takes one image (with any number of prompts) per call
            box = None if boxes is None or boxes[i].isnan().any() else boxes[i : i + 1]
            points = None
            if point_coords is not None and (point_labels[i] != -1).any():
                points = (point_coords[i : i + 1], point_labels[i : i + 1])
            if box is None and points is None:
                raise ValueError(f"sample {i} has no prompt (all points are padding and no box)")
            sparse, dense = self.prompt_encoder(points=points, boxes=box, masks=None)
            if extra_tokens is not None:
                sparse = torch.cat([sparse, extra_tokens[i : i + 1].to(sparse.dtype)], dim=1)
            low, iou = self.mask_decoder(image_embeddings=embeddings[i : i + 1], image_pe=dense_pe,
                                         sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                         multimask_output=self.hparams["multimask_output"])
            masks.append(low)
            ious.append(iou)
        logits = F.interpolate(torch.cat(masks), size=(self.img_size, self.img_size), mode="bilinear",
                               align_corners=False)
        return logits[..., : size[0], : size[1]], torch.cat(ious)

    def forward(self, image: Tensor, point_coords: Tensor | None = None, point_labels: Tensor | None = None,
                boxes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(B, len(bands), H, W)`` raw values and prompts (see :meth:`decode`) -> (logits, iou predictions).

        With ``prompting="automatic"`` and no prompts, the prompts come from the coarse mask
        (:meth:`segment_automatic`)."""
        if self.automatic and point_coords is None and point_labels is None and boxes is None:
            logits, ious, *_ = self.segment_automatic(image)
            return logits, ious
        _check_prompts(len(image), point_coords, point_labels, boxes)
        return self.decode(self.image_embeddings(image), point_coords, point_labels, boxes, image.shape[-2:])

    def class_logits(self, image: Tensor) -> Tensor:
        """Prompt-free prediction as two-class logits ``(B, 2, H, W)`` (background 0, object ``l``: a softmax
        gives ``sigmoid(l)``), the form ``vadapt infer`` blends; automatic prompting only."""
        if not self.automatic:
            raise ValueError("class_logits needs prompting='automatic' (this task is prompted per image)")
        logits = self(image)[0][:, :1]  # the first mask when multimask_output is on
        return torch.cat([torch.zeros_like(logits), logits], 1)

    def coarse_logits(self, embeddings: Tensor) -> Tensor:
        """Automatic prompting's coarse mask logits ``(B, 1, g, g)`` from embeddings ``(B, C, g, g)``."""
        if self.coarse_head is None:
            raise ValueError("coarse masks need prompting='automatic'")
        return self.coarse_head(embeddings)

    def segment_automatic(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """MapSAM's prompt-free segmentation of ``(B, len(bands), H, W)`` raw values.

        Returns:
            mask logits ``(B, M, H, W)``, predicted IoUs ``(B, M)``, coarse logits ``(B, 1, g, g)``, and the
            automatic point prompts: coords ``(B, 2 * auto_points, 2)`` and labels ``(B, 2 * auto_points)``.
        """
        size = tuple(image.shape[-2:])
        embeddings = self.image_embeddings(image)
        coarse = self.coarse_logits(embeddings)
        coords, labels = select_point_prompts(coarse, self.hparams["auto_points"], self.img_size, size)
        token = masked_mean_embedding(embeddings, coarse)[:, None]  # (B, 1, C)
        logits, ious = self.decode(embeddings, coords, labels, None, size, extra_tokens=token)
        return logits, ious, coarse, coords, labels

    @torch.no_grad()
    def predict_with_prompts(self, image: Tensor, points: Tensor | None = None, labels: Tensor | None = None,
                             boxes: Tensor | None = None, image_id: str | None = None) -> tuple[Tensor, Tensor]:
        """Interactive use: ``N`` prompt sets on one image, its embedding cached between calls.

        Args:
            image: ``(C, H, W)`` or ``(1, C, H, W)`` raw values.
            points, labels: ``(N, P, 2)`` and ``(N, P)``, or ``(P, 2)`` and ``(P,)`` for one prompt set.
            boxes: ``(N, 4)``, or ``(4,)`` for one.
            image_id: cache key (default: a hash of the image's values).

        Returns:
            mask logits ``(N, M, H, W)`` and predicted IoUs ``(N, M)``.
        """
        if image.ndim == 4 and len(image) == 1:
            image = image[0]
        if image.ndim != 3:
            raise ValueError(f"image must be (C, H, W) or (1, C, H, W), got {tuple(image.shape)}")
        if points is not None and points.ndim == 2:
            points = points[None]
        if labels is not None and labels.ndim == 1:
            labels = labels[None]
        if boxes is not None and boxes.ndim == 1:
            boxes = boxes[None]
        count = len(points) if points is not None else len(boxes) if boxes is not None else 1
        key = image_id or self.cache.key(image)
        embedding = self.cache.get(key)
        if embedding is None:
            embedding = self.image_embeddings(image[None].to(self.input_mean.device))
            self.cache.put(key, embedding)
        device = embedding.device
        points, labels, boxes = (t.to(device) if t is not None else None for t in (points, labels, boxes))
        return self.decode(embedding.expand(count, -1, -1, -1), points, labels, boxes, image.shape[-2:])

    # ---- training ----------------------------------------------------------------------------------------
    def targets(self, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Class masks ``(B, H, W)`` -> binary object masks (bool) and ignore masks (bool)."""
        hp = self.hparams
        ignore = mask == hp["ignore_index"] if hp["ignore_index"] is not None else torch.zeros_like(mask, dtype=bool)
        fg = mask > 0 if hp["foreground_class"] is None else mask == hp["foreground_class"]
        return fg & ~ignore, ignore

    def losses(self, logits: Tensor, target: Tensor, ignore: Tensor) -> Tensor:
        """Per-sample, per-mask ``focal_weight * focal + dice_weight * dice``: ``(B, M)``."""
        from torchvision.ops import sigmoid_focal_loss

        keep = (~ignore)[:, None].float()
        target = target[:, None].float().expand_as(logits)
        pixels = keep.sum(dim=(-2, -1)).clamp(min=1)
        focal = (sigmoid_focal_loss(logits, target, reduction="none") * keep).sum(dim=(-2, -1)) / pixels
        prob = logits.sigmoid() * keep
        inter = (prob * target).sum(dim=(-2, -1))
        dice = 1 - (2 * inter + 1) / (prob.sum(dim=(-2, -1)) + (target * keep).sum(dim=(-2, -1)) + 1)
        return self.hparams["focal_weight"] * focal + self.hparams["dice_weight"] * dice

    def _shared_step(self, batch: dict[str, Any], stage: str) -> Tensor | None:
        target, ignore = self.targets(batch["mask"])
        if self.automatic:
            image = batch["image"]
            logits, _, coarse, coords, labels = self.segment_automatic(image)
            boxes = torch.full((len(image), 4), float("nan"), device=image.device)
            per_mask = self.losses(logits, target, ignore)
            best = per_mask.argmin(dim=1)
            coarse_up = F.interpolate(coarse, size=(self.img_size, self.img_size), mode="bilinear",
                                      align_corners=False)[..., : image.shape[-2], : image.shape[-1]]
            loss = (per_mask.gather(1, best[:, None]).mean()
                    + self.hparams["coarse_weight"] * self.losses(coarse_up, target, ignore).mean())
            return self._score_and_log(stage, loss, image, logits, best, target, ignore, coords, labels, boxes)
        generator = None if stage == "train" else torch.Generator().manual_seed(0)  # fixed prompts for eval
        prompts = self.sampler(target, generator=generator, ignore=ignore)
        has_box = prompts["has_box"]
        usable = has_box | (prompts["point_labels"] == 1).any(dim=1)  # an empty mask gives no object prompt
        if not usable.any():
            return None  # nothing to segment in this batch (Lightning skips the step)
        image, target, ignore = batch["image"][usable], target[usable], ignore[usable]
        coords, labels = prompts["point_coords"][usable], prompts["point_labels"][usable]
        boxes = prompts["boxes"].masked_fill(~has_box[:, None], float("nan"))[usable]
        logits, _ = self(image, coords, labels, boxes)
        per_mask = self.losses(logits, target, ignore)
        best = per_mask.argmin(dim=1)  # SAM: with several masks, only the best one is trained
        loss = per_mask.gather(1, best[:, None]).mean()
        return self._score_and_log(stage, loss, image, logits, best, target, ignore, coords, labels, boxes)

    def _score_and_log(self, stage: str, loss: Tensor, image: Tensor, logits: Tensor, best: Tensor, target: Tensor,
                       ignore: Tensor, coords: Tensor, labels: Tensor, boxes: Tensor) -> Tensor:
        chosen = logits[torch.arange(len(logits)), best]
        prediction = (chosen > 0).long()
        truth = target.long().masked_fill(ignore, self.hparams["ignore_index"] or 0)
        self.scores["fit" if stage == "train" else stage].update(prediction, truth)
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=stage == "train", on_epoch=True,
                 batch_size=len(logits))
        if stage == "val" and len(self._preview) < self.hparams["preview_images"]:
            take = self.hparams["preview_images"] - len(self._preview)
            for i in range(min(take, len(image))):
                self._preview.append((image[i].float().cpu().numpy(), truth[i].cpu().numpy(),
                                      prediction[i].cpu().numpy(), coords[i].cpu().numpy(),
                                      labels[i].cpu().numpy(), boxes[i].cpu().numpy()))
        return loss

    def _log_scores(self, stage: str) -> None:
        metric = self.scores["fit" if stage == "train" else stage]
        values = {f"{stage}/{k}": float(v) for k, v in metric.compute().items()}
        metric.reset()
        self.log_dict(values, prog_bar=stage != "train")

    def preview_picture(self, rows: list[tuple]):
        """image | truth | prediction per row, prompt points (green foreground, red background) and boxes drawn."""
        from PIL import ImageDraw

        from vadapt.visualize import prediction_panel

        picture = prediction_panel([r[:3] for r in rows], self.backbone.bands, self.hparams["ignore_index"])
        draw = ImageDraw.Draw(picture)
        gap = 4  # prediction_panel's default
        height = max(r[1].shape[0] for r in rows)
        width = max(r[1].shape[1] for r in rows)
        for r, (_, _, _, coords, labels, box) in enumerate(rows):
            for c in range(3):
                y0, x0 = r * (height + gap), c * (width + gap)
                for (x, y), label in zip(coords, labels):
                    if label in (0, 1):
                        colour = (0, 255, 0) if label == 1 else (255, 0, 0)
                        draw.ellipse([x0 + x - 2, y0 + y - 2, x0 + x + 2, y0 + y + 2], fill=colour,
                                     outline=(0, 0, 0))
                if not any(v != v for v in box):  # NaN: no box
                    draw.rectangle([x0 + box[0], y0 + box[1], x0 + box[2], y0 + box[3]], outline=(255, 255, 0))
        return picture

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        logits, _ = self(batch["image"], batch.get("point_coords"), batch.get("point_labels"), batch.get("boxes"))
        return (logits[:, 0] > 0).long()
