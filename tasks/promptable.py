"""Promptable segmentation with SAM and SAM 2: a frozen, adapted image encoder, SAM's prompt encoder and mask decoder.

The image encoder is a registered SAM backbone (``sam_vit_b``, ...) or SAM 2 backbone (``sam2.1_hiera_b+``, ...)
with any vadapt adapter; the prompt encoder and mask decoder come from the same official checkpoint file
(``backbones.sam.build_sam_prompt_decoder``, ``backbones.sam2.build_sam2_prompt_decoder``). Each part is switched
separately: ``decoder.prompt_encoder`` frozen or trained, ``decoder.mask_decoder`` frozen, norms only, trained or
LoRA-adapted. The task's settings of prompting, decoder and loss are grouped in the :class:`PromptingConfig`,
:class:`DecoderConfig` and :class:`LossConfig` init args (:mod:`tasks.promptable_config`).

Prompts follow SAM's conventions (see :mod:`vadapt.data.prompts`): points ``(x, y)`` in input pixels with labels
1 (foreground), 0 (background), -1 (padding); boxes ``(x0, y0, x1, y1)``; a box row of NaN means "no box" for that
sample. ``prompting.mode`` chooses where prompts come from:

* ``"sampled"`` (default): training draws them from the ground-truth mask with
  :class:`~vadapt.data.prompts.PromptSampler` (points inside / outside, jittered boxes), as SAM-style fine-tuning
  does; at inference the user gives them, and ``forward`` without any prompt raises a ``ValueError``.
* ``"automatic"``: MapSAM's prompt-free mode (Xia et al., arXiv:2411.06971; official code ``Xue-Xia/MapSAM``,
  ``segment_anything/modeling/sam.py`` ``forward_train``). A :class:`~tasks.sam_decoding.CoarseMaskGenerator`
  (four SPGen heads on SAM ViT: the final embedding and the frozen neck applied to the outputs of blocks 0, 4
  and 8, i.e. every 4th block but the last; their logits averaged) gives a coarse mask ``(B, 1, g, g)``; from it

  - point prompts: the ``prompting.auto_points`` highest-scoring pixels of the coarse mask bilinearly upsampled to the
    input as positives and the ``auto_points`` lowest as negatives (:func:`select_point_prompts`), through
    SAM's prompt encoder (which appends its padding point);
  - the "positional-semantic" prompt: the mean of the detached image embedding over the cells whose coarse
    probability is > 0.5 (:func:`masked_mean_embedding`), added to every decoder query before each two-way
    layer and to the final attention's queries, with masked token-to-image attention
    (:func:`~tasks.sam_decoding.decode_masks`; ``prompting.masked_attention``).

  The loss adds ``coarse_weight * (focal_weight * focal + dice_weight * dice)`` (``loss``) of the coarse logits
  (bilinearly upsampled) against the mask, as MapSAM.
* ``"learned"``: SALT's prompt-free mode (Elsayed et al., arXiv:2503.16055; official code
  ``BioMedIA-MBZUAI/SALT``, ``model.py``): ``prompting.learned_tokens`` trainable sparse prompt tokens with SAM's
  "no mask" dense prompt. SALT feeds a frozen CLIP text embedding of the class name through a trainable
  ``Linear -> ReLU -> BatchNorm1d``; for one class that input is a constant, so the result is one learned
  vector, which we train directly (no CLIP model needed).

``forward(image)`` without prompts segments automatically in the two prompt-free modes; prompts given
explicitly are still decoded as usual.

Deviations from the official MapSAM code: its decoder is rebuilt with ONE fresh mask token; we keep SAM's
pretrained tokens and train token 0 (SAM's single-mask output). Points and losses use the unpadded input, not
the padded square. See :mod:`tasks.sam_decoding` for the masked attention. On SAM 2 (which MapSAM did not
use), the coarse heads read the FPN levels at strides 4 and 8 (average-pooled to the embedding grid) and the
stride-16 embedding: three heads (Hiera has no single-scale block outputs to tap).

Sizes: inputs are normalised and padded (bottom/right) to the ``img_size`` square (1024 for the official
weights), the embedding is ``(B, C, img_size/16, img_size/16)``, the decoder's low-resolution masks are
upsampled to ``img_size`` and cropped back to the input size. Larger inputs are refused.

The image embedding is computed once per image and reused for many prompts: ``decode`` takes
:class:`ImageFeatures`, and ``predict_with_prompts`` keeps the last few images' features in an
:class:`EmbeddingCache`.

Loss (``loss``): ``focal_weight * focal + dice_weight * dice`` on sigmoid logits, ignore pixels left out. The defaults
0.2 / 0.8 are MapSAM's (official code); SAM itself trained with focal:dice = 20:1 (paper, Sec. 3 / App. A).
"""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vadapt.adapters import AdapterConfig
from vadapt.bands import RGB
from vadapt.contracts import TaskCapabilities

from .base import UNUSED, BaseTask
from .promptable_config import (
    FLAT_ARGS,
    DecoderConfig,
    LossConfig,
    PromptingConfig,
    as_config,
    group_flat_init_args,
    prompting_mode,
)
from .sam_decoding import CoarseMaskGenerator, decode_masks

#: the defaults of the grouped init args (frozen dataclasses: one instance is shared safely)
DEFAULT_PROMPTING, DEFAULT_DECODER, DEFAULT_LOSS = PromptingConfig(), DecoderConfig(), LossConfig()


@dataclass
class ImageFeatures:
    """What the decoder needs of one image batch, computed once per image.

    Attributes:
        embedding: ``(B, C, g, g)`` the image embedding (SAM 2: with ``no_mem_embed`` added).
        high_res: SAM 2's decoder inputs ``[(B, C/8, 4g, 4g), (B, C/4, 2g, 2g)]``; ``None`` for SAM.
        levels: automatic prompting's coarse-mask inputs, each ``(B, C, g, g)`` (empty otherwise).
    """

    embedding: Tensor
    high_res: list[Tensor] | None = None
    levels: tuple[Tensor, ...] = ()

    def select(self, index: slice | int) -> ImageFeatures:
        """The features of a part of the batch (an int keeps the batch dimension)."""
        index = slice(index, index + 1) if isinstance(index, int) else index
        return ImageFeatures(self.embedding[index], None if self.high_res is None else
                             [h[index] for h in self.high_res], tuple(x[index] for x in self.levels))

    def expand(self, count: int) -> ImageFeatures:
        """One image's features repeated for ``count`` prompt sets (no copy)."""
        def rep(t: Tensor) -> Tensor:
            return t.expand(count, *t.shape[1:])

        return ImageFeatures(rep(self.embedding), None if self.high_res is None else
                             [rep(h) for h in self.high_res], tuple(rep(x) for x in self.levels))


class EmbeddingCache:
    """A small LRU of image features keyed by an image id (default: a hash of the image's values)."""

    def __init__(self, maxsize: int = 4) -> None:
        if maxsize < 1:
            raise ValueError(f"EmbeddingCache maxsize must be >= 1, got {maxsize!r}")
        self.maxsize = maxsize
        self._items: OrderedDict[str, Any] = OrderedDict()

    @staticmethod
    def key(image: Tensor) -> str:
        data = image.detach().contiguous().cpu()
        digest = hashlib.sha1(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        digest.update(f"{tuple(data.shape)}{data.dtype}".encode())
        return digest.hexdigest()

    def get(self, key: str) -> Any:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: Any) -> None:
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
    """MapSAM's automatic points: the ``k`` highest pixels of the upsampled coarse mask as positives, the ``k``
    lowest as negatives (official ``point_selection`` on ``coarse_mask_up16``).

    Args:
        coarse_logits: ``(B, 1, h, w)`` coarse mask logits on the embedding grid.
        k: points per sign.
        input_size: the padded (square) SAM input's side in pixels; the logits are bilinearly upsampled to it.
        size: the unpadded input ``(H, W)``: only pixels inside it are picked (default: the whole square).

    Returns:
        coords ``(B, 2k, 2)`` float ``(x, y)`` pixels (positives first, best first; then negatives, lowest
        first) and labels ``(B, 2k)`` (``k`` ones then ``k`` zeros).
    """
    if coarse_logits.ndim != 4 or coarse_logits.shape[1] != 1:
        raise ValueError(f"coarse_logits must be (B, 1, h, w), got {tuple(coarse_logits.shape)}")
    height, width = size or (input_size, input_size)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= height * width:
        raise ValueError(f"auto_points must be an int in [1, {height * width}] (input pixels), got {k!r}")
    up = F.interpolate(coarse_logits.detach().float(), size=(input_size, input_size), mode="bilinear",
                       align_corners=False)
    scores = up[:, 0, :height, :width].flatten(1)  # (B, H*W)
    index = torch.cat([scores.topk(k, dim=1).indices, scores.topk(k, dim=1, largest=False).indices], dim=1)
    coords = torch.stack([index % width, index // width], dim=-1).float()
    labels = torch.cat([torch.ones(len(scores), k), torch.zeros(len(scores), k)], dim=1)
    return coords, labels.to(coarse_logits.device, torch.long)


def masked_mean_embedding(embedding: Tensor, coarse_logits: Tensor) -> Tensor:
    """MapSAM's positional-semantic prompt: the mean of ``embedding`` ``(B, C, h, w)`` over the cells where
    ``sigmoid(coarse_logits) > 0.5`` (``(B, 1, h, w)``), both detached -> ``(B, C)``; a zero vector (nothing
    added, as MapSAM skips it) if none."""
    if coarse_logits.shape[-2:] != embedding.shape[-2:] or coarse_logits.shape[:2] != (len(embedding), 1):
        raise ValueError(f"coarse_logits {tuple(coarse_logits.shape)} must be (B, 1, h, w) of the embedding "
                         f"{tuple(embedding.shape)}")
    mask = (coarse_logits.detach() > 0).to(embedding.dtype)  # sigmoid > 0.5
    total = (embedding.detach() * mask).sum(dim=(-2, -1))
    return total / mask.sum(dim=(-2, -1)).clamp(min=1)


def mapsam_coarse_blocks(depth: int) -> list[int]:
    """The SAM ViT blocks whose outputs MapSAM's extra coarse heads read: every 4th block but the last
    (official ``ImageEncoderViT.forward``: ``i % 4 == 0``); ViT-B (12 blocks): 0, 4, 8."""
    return [i for i in range(depth - 1) if i % 4 == 0]


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
        raise ValueError("SAM needs a prompt: give point_coords/point_labels and/or boxes (prompt-free "
                         "segmentation needs a task trained with prompting.mode 'automatic' or 'learned')")


class PromptableSegmentationTask(BaseTask):
    """SAM / SAM 2 fine-tuning with prompts drawn from masks, or prompt-free; see module docstring.

    Batches are dicts with ``image`` (float, raw band values) and ``mask`` (long class ids, ``ignore_index``
    where unknown). The object to segment is ``mask == foreground_class`` (default: every class > 0).
    """

    pretrained_modules = ("backbone", "prompt_encoder", "mask_decoder")

    @classmethod
    def capabilities_for(cls, init_args: Mapping[str, Any]) -> TaskCapabilities:
        """Prompted per image (``prompting.mode`` ``"sampled"``), or prompt-free (automatic / learned) so that it
        also segments whole images tile by tile (``vadapt infer``, the app's Segment tab). ``init_args`` grouped
        or flat (``prompting: automatic``, checkpoints of earlier versions)."""
        if prompting_mode(init_args) == "sampled":
            return TaskCapabilities("image", "class_map", prompts="required")
        return TaskCapabilities("image", "class_map", tiles=True, prompts="optional")

    @classmethod
    def upgrade_init_args(cls, init_args: Mapping[str, Any]) -> dict[str, Any]:
        """The flat settings of earlier versions (``prompting: automatic``, ``auto_points``, ``mask_decoder``,
        ``focal_weight``, ...) moved into ``prompting``, ``decoder`` and ``loss``."""
        return group_flat_init_args(init_args)

    def __init__(
        self,
        backbone: str = "sam_vit_b",
        weights: str | None = None,
        bands: tuple[str, ...] = RGB,
        adapter: AdapterConfig | None = None,
        prompting: PromptingConfig = DEFAULT_PROMPTING,
        decoder: DecoderConfig = DEFAULT_DECODER,
        loss: LossConfig = DEFAULT_LOSS,
        foreground_class: int | None = None,
        ignore_index: int | None = 255,
        img_size: int | None = None,
        preview_images: int = 4,
        cache_size: int = 4,
        lr: float = 1e-4,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            backbone: a SAM backbone (``sam_vit_b``, ``sam_vit_l``, ``sam_vit_h``; ``sam_test`` in tests) or a
                SAM 2 one (``sam2.1_hiera_b+``, ...; ``sam2_test``).
            weights: ``None`` (random), ``"pretrained"`` or a path to the official full SAM / SAM 2 checkpoint
                (image encoder, prompt encoder and mask decoder are all read from it).
            bands: input band names, matched by name to the pretrained first layer.
            adapter: the image encoder's adapter (e.g. ``vadapt.adapters.QVDoraConfig`` as MapSAM,
                ``vadapt.adapters.SaltConfig`` as SALT); ``None`` keeps the encoder as it is.
            prompting: where prompts come from: ``mode`` ``"sampled"``, ``"automatic"`` (MapSAM) or ``"learned"``
                (SALT), and each mode's options (:class:`PromptingConfig`; module docstring).
            decoder: what of the prompt encoder and mask decoder trains, multimask output (:class:`DecoderConfig`).
            loss: focal, dice and coarse-mask loss weights (:class:`LossConfig`).
            foreground_class: the class id that is the object; ``None``: every class > 0 (binary masks).
            ignore_index: mask value left out of loss, metrics and prompts.
            img_size: the square input size (default 1024, the official models'); inputs are padded to it.
            preview_images: validation images drawn in the per-epoch picture (0 = none).
            cache_size: images whose features ``predict_with_prompts`` keeps.
            lr: :class:`BaseTask`'s (AdamW's peak learning rate) with a default of 1e-4.
            kwargs: the other arguments every task shares (:class:`BaseTask`): ``weight_decay``, ``warmup_steps``,
                ``poly_power`` (linear warm-up then poly decay), ``mean``, ``std`` (default: the backbone's RGB
                statistics), ``extra_band_init``, ``grad_checkpointing``. The image encoder stays frozen (it
                trains through ``adapter``): no ``freeze_backbone``.
        """
        prompting, decoder, loss = self._grouped(prompting, decoder, loss, kwargs)
        super().__init__(lr=lr, freeze_backbone=UNUSED, **kwargs)

    @staticmethod
    def _grouped(prompting: Any, decoder: Any, loss: Any,
                 kwargs: dict[str, Any]) -> tuple[PromptingConfig, DecoderConfig, LossConfig]:
        """The three groups as configs, from any form :func:`~tasks.promptable_config.as_config` takes (the dicts
        that hyperparameters store, too). Deprecated: the flat settings of earlier versions
        (``prompting="automatic"``, ``mask_decoder="frozen"``, ...) still work from Python, taken out of
        ``kwargs`` into their groups, with a warning; YAML configs take the groups only."""
        flat = {name: kwargs.pop(name) for names in FLAT_ARGS.values() for name in names if name in kwargs}
        if flat or isinstance(prompting, str):
            old = ", ".join([*(["prompting"] if isinstance(prompting, str) else []), *flat])
            warnings.warn(f"PromptableSegmentationTask's flat settings ({old}) are deprecated: give "
                          "prompting=PromptingConfig(mode=...), decoder=DecoderConfig(...), loss=LossConfig(...)",
                          DeprecationWarning, stacklevel=3)
            grouped = group_flat_init_args({"prompting": prompting, "decoder": decoder, "loss": loss, **flat})
            prompting, decoder, loss = grouped["prompting"], grouped["decoder"], grouped["loss"]
        return as_config(PromptingConfig, prompting), as_config(DecoderConfig, decoder), as_config(LossConfig, loss)

    @cached_property
    def prompting_config(self) -> PromptingConfig:
        """The ``prompting`` init arg."""
        return as_config(PromptingConfig, self.hparams["prompting"])

    @cached_property
    def decoder_config(self) -> DecoderConfig:
        """The ``decoder`` init arg."""
        return as_config(DecoderConfig, self.hparams["decoder"])

    @cached_property
    def loss_config(self) -> LossConfig:
        """The ``loss`` init arg."""
        return as_config(LossConfig, self.hparams["loss"])

    # ---- models ------------------------------------------------------------------------------------------
    @property
    def family(self) -> str:
        from vadapt.backbones import BACKBONES

        return BACKBONES.get(self.hparams["backbone"]).family

    def backbone_options(self) -> dict[str, Any]:
        hp = self.hparams
        if self.family == "sam2":
            return {}  # Hiera adapts to any input size; img_size sizes the prompt encoder only
        options = super().backbone_options()
        prompting = self.prompting_config
        if prompting.mode == "automatic":
            from vadapt.backbones import BACKBONES

            depth = BACKBONES.get(hp["backbone"]).kwargs.get("depth", 12)
            blocks = prompting.coarse_blocks if prompting.coarse_blocks is not None else mapsam_coarse_blocks(depth)
            if any(not -depth <= b < depth - 1 for b in blocks):
                raise ValueError(f"prompting.coarse_blocks {blocks} must be blocks before the last of {depth}")
            options["out_indices"] = blocks
        return options

    def configure_head(self) -> None:
        from vadapt.backbones.sam import SamBackbone, build_sam_prompt_decoder
        from vadapt.backbones.sam2 import Sam2HieraBackbone

        hp, prompting = self.hparams, self.prompting_config
        if isinstance(self.backbone, SamBackbone):
            self._img_size = self.backbone.img_size
            self.register_buffer("no_mem_embed", None)  # SAM 2 only
            self.prompt_encoder, self.mask_decoder = build_sam_prompt_decoder(self.backbone, hp["weights"])
        elif isinstance(self.backbone, Sam2HieraBackbone):
            self._img_size = hp["img_size"] or 1024
            if self._img_size % self.backbone.pad_multiple:
                raise ValueError(f"img_size {self._img_size} must be a multiple of {self.backbone.pad_multiple} "
                                 f"for {hp['backbone']}")
            if prompting.coarse_blocks is not None:
                warnings.warn("prompting.coarse_blocks is ignored by SAM 2 backbones (the coarse heads read the FPN "
                              "levels)", stacklevel=2)
            from vadapt.backbones.sam2 import build_sam2_prompt_decoder

            parts = build_sam2_prompt_decoder(self.backbone, hp["weights"], img_size=self._img_size)
            self.prompt_encoder, self.mask_decoder = parts.prompt_encoder, parts.mask_decoder
            no_mem = parts.no_mem_embed.detach().clone()
            self.register_buffer("no_mem_embed", no_mem if parts.add_no_mem_embed else torch.zeros_like(no_mem))
        else:
            raise ValueError(f"PromptableSegmentationTask needs a SAM or SAM 2 backbone (sam_vit_b, sam2.1_hiera_b+, "
                             f"..., sam_test, sam2_test), got {hp['backbone']!r}")
        self._configure_trainable(self.decoder_config)
        self.sampler = prompting.sampler()
        self.cache = EmbeddingCache(hp["cache_size"])
        channels = self.backbone.out_channels[-1]
        self.coarse_head = None
        self.prompt_tokens = None
        if prompting.mode == "automatic":
            levels = len(self.backbone.out_channels)  # SAM: tapped blocks + final; SAM 2: FPN levels
            self.coarse_head = CoarseMaskGenerator(channels, levels)
        elif prompting.mode == "learned":
            self.prompt_tokens = nn.Parameter(torch.randn(1, prompting.learned_tokens, channels) * 0.02)

    def _configure_trainable(self, decoder: DecoderConfig) -> None:
        self.prompt_encoder.requires_grad_(decoder.prompt_encoder == "train")
        match decoder.mask_decoder:
            case "frozen" | "train":
                self.mask_decoder.requires_grad_(decoder.mask_decoder == "train")
            case "norms":
                for name, p in self.mask_decoder.named_parameters():
                    p.requires_grad_("norm" in name)
            case "lora":
                import peft

                self.mask_decoder.requires_grad_(False)
                r = decoder.decoder_lora_r
                config = peft.LoraConfig(r=r, lora_alpha=r, target_modules=["q_proj", "v_proj"], bias="none")
                peft.inject_adapter_in_model(config, self.mask_decoder, adapter_name="default")
                for name, p in self.mask_decoder.named_parameters():
                    p.requires_grad_("lora_" in name)

    @property
    def automatic(self) -> bool:
        """Prompt-free segmentation (``prompting.mode`` ``"automatic"`` or ``"learned"``)."""
        return self.prompting_config.mode != "sampled"

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
        return self._img_size

    def image_features(self, images: Tensor) -> ImageFeatures:
        """``(B, len(bands), H, W)`` raw values, ``H, W <= img_size`` -> :class:`ImageFeatures` on the
        ``g = img_size / 16`` grid (the input is normalised, then padded bottom/right with zeros as SAM does)."""
        height, width = images.shape[-2:]
        if height > self.img_size or width > self.img_size:
            raise ValueError(f"input {height}x{width} is larger than the encoder's {self.img_size}x{self.img_size}: "
                             "resize it (SAM's ResizeLongestSide) or set img_size")
        x = F.pad(self.normalise(images), (0, self.img_size - width, 0, self.img_size - height))
        maps = self.backbone(x)
        automatic = self.prompting_config.mode == "automatic"
        if self.no_mem_embed is None:  # SAM: [tapped block outputs..., neck(final)]
            embedding = maps[-1]
            neck = self.backbone.model.neck
            levels = (*(neck(m) for m in maps[:-1]), embedding) if automatic else ()
            return ImageFeatures(embedding, None, levels)
        # SAM 2 image path (SAM2Base.forward_image / _prepare_backbone_features, no memory)
        embedding = maps[-1] + self.no_mem_embed.view(1, -1, 1, 1)
        high_res = None
        if self.mask_decoder.use_high_res_features:
            high_res = [self.mask_decoder.conv_s0(maps[0]), self.mask_decoder.conv_s1(maps[1])]
        levels = ()
        if automatic:
            grid = embedding.shape[-2:]
            levels = (*(F.adaptive_avg_pool2d(m, grid) for m in maps[:-1]), embedding)
        return ImageFeatures(embedding, high_res, levels)

    def image_embeddings(self, images: Tensor) -> Tensor:
        """``(B, len(bands), H, W)`` raw values -> the image embedding ``(B, C, g, g)``."""
        return self.image_features(images).embedding

    def _encode_prompts(self, points: tuple[Tensor, Tensor] | None, box: Tensor | None) -> tuple[Tensor, Tensor]:
        """One sample's prompts -> sparse ``(1, P, C)`` and dense ``(1, C, g, g)`` embeddings.

        SAM 2's image predictor gives a box as two corner points (labels 2, 3) in front of the clicks."""
        if self.no_mem_embed is not None and box is not None:
            corners = box.view(1, 2, 2)
            corner_labels = torch.tensor([[2, 3]], device=box.device)
            if points is not None:
                corners = torch.cat([corners, points[0]], 1)
                corner_labels = torch.cat([corner_labels, points[1]], 1)
            points, box = (corners, corner_labels), None
        return self.prompt_encoder(points=points, boxes=box, masks=None)

    def decode(self, features: ImageFeatures | Tensor, point_coords: Tensor | None = None,
               point_labels: Tensor | None = None, boxes: Tensor | None = None, size: tuple[int, int] | None = None,
               coarse_logits: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Masks for one prompt set per image.

        Args:
            features: :class:`ImageFeatures` (or a SAM embedding ``(B, C, g, g)``) from :meth:`image_features`.
            point_coords, point_labels: ``(B, P, 2)`` float ``(x, y)`` pixels and ``(B, P)`` labels (1, 0, -1).
            boxes: ``(B, 4)`` ``(x0, y0, x1, y1)`` pixels; a NaN row means no box for that sample.
            size: the input ``(H, W)`` to crop to (default ``img_size``).
            coarse_logits: ``(B, 1, g, g)`` automatic prompting's coarse mask: adds MapSAM's masked-mean
                embedding to the decoder's queries and (``prompting.masked_attention``) masks its cross-attention.

        Returns:
            mask logits ``(B, M, H, W)`` and predicted IoUs ``(B, M)``, ``M`` 3 with ``decoder.multimask_output``
            else 1.
        """
        if isinstance(features, Tensor):
            features = ImageFeatures(features)
        batch = len(features.embedding)
        learned = self.prompt_tokens is not None and point_coords is None and boxes is None
        if not learned:
            _check_prompts(batch, point_coords, point_labels, boxes)
        size = size or (self.img_size, self.img_size)
        masked_attention = self.prompting_config.masked_attention
        pick = slice(1, None) if self.decoder_config.multimask_output else slice(0, 1)
        dense_pe = self.prompt_encoder.get_dense_pe()
        masks, ious = [], []
        for i in range(batch):  # prompts differ in length per sample (box or not): one sample per call
            box = None if boxes is None or boxes[i].isnan().any() else boxes[i : i + 1]
            points = None
            if point_coords is not None and (point_labels[i] != -1).any():
                points = (point_coords[i : i + 1], point_labels[i : i + 1])
            if box is None and points is None and not learned:
                raise ValueError(f"sample {i} has no prompt (all points are padding and no box)")
            sparse, dense = self._encode_prompts(points, box)
            if learned:
                sparse = torch.cat([sparse, self.prompt_tokens.to(sparse.dtype)], dim=1)
            one = features.select(i)
            target = coarse = None
            if coarse_logits is not None:
                target = masked_mean_embedding(one.embedding, coarse_logits[i : i + 1])
                coarse = coarse_logits[i : i + 1] if masked_attention else None
            low, iou = decode_masks(self.mask_decoder, one.embedding, dense_pe, sparse, dense, one.high_res,
                                    target, coarse)
            masks.append(low[:, pick])
            ious.append(iou[:, pick])
        logits = F.interpolate(torch.cat(masks), size=(self.img_size, self.img_size), mode="bilinear",
                               align_corners=False)
        return logits[..., : size[0], : size[1]], torch.cat(ious)

    def forward(self, image: Tensor, point_coords: Tensor | None = None, point_labels: Tensor | None = None,
                boxes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(B, len(bands), H, W)`` raw values and prompts (see :meth:`decode`) -> (logits, iou predictions).

        Prompt-free tasks (``prompting.mode`` automatic or learned) segment without prompts
        (:meth:`segment_automatic`)."""
        if self.automatic and point_coords is None and point_labels is None and boxes is None:
            logits, ious, *_ = self.segment_automatic(image)
            return logits, ious
        _check_prompts(len(image), point_coords, point_labels, boxes)
        return self.decode(self.image_features(image), point_coords, point_labels, boxes, image.shape[-2:])

    def class_logits(self, image: Tensor) -> Tensor:
        """Prompt-free prediction as two-class logits ``(B, 2, H, W)`` (background 0, object ``l``: a softmax
        gives ``sigmoid(l)``), the form ``vadapt infer`` blends; prompt-free tasks only."""
        if not self.automatic:
            raise ValueError("class_logits needs prompting.mode 'automatic' or 'learned' (this task is prompted per "
                             "image)")
        logits = self(image)[0][:, :1]  # the first mask when multimask_output is on
        return torch.cat([torch.zeros_like(logits), logits], 1)

    def coarse_logits(self, features: ImageFeatures) -> Tensor:
        """Automatic prompting's coarse mask logits ``(B, 1, g, g)``."""
        if self.coarse_head is None:
            raise ValueError("coarse masks need prompting.mode 'automatic'")
        return self.coarse_head(list(features.levels))

    def segment_automatic(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor]:
        """Prompt-free segmentation of ``(B, len(bands), H, W)`` raw values (MapSAM or SALT).

        Returns:
            mask logits ``(B, M, H, W)``, predicted IoUs ``(B, M)``, MapSAM's coarse logits ``(B, 1, g, g)``
            (``None`` for learned prompts), and the automatic point prompts: coords ``(B, 2 * auto_points, 2)``
            and labels ``(B, 2 * auto_points)`` (empty, ``P = 0``, for learned prompts).
        """
        size = tuple(image.shape[-2:])
        features = self.image_features(image)
        if self.prompt_tokens is not None:
            logits, ious = self.decode(features, size=size)
            empty = image.new_zeros(len(image), 0, 2)
            return logits, ious, None, empty, empty[..., 0].long()
        coarse = self.coarse_logits(features)
        coords, labels = select_point_prompts(coarse, self.prompting_config.auto_points, self.img_size, size)
        logits, ious = self.decode(features, coords, labels, None, size, coarse_logits=coarse)
        return logits, ious, coarse, coords, labels

    @torch.no_grad()
    def predict_with_prompts(self, image: Tensor, points: Tensor | None = None, labels: Tensor | None = None,
                             boxes: Tensor | None = None, image_id: str | None = None) -> tuple[Tensor, Tensor]:
        """Interactive use: ``N`` prompt sets on one image, its features cached between calls.

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
        features = self.cache.get(key)
        if features is None:
            features = self.image_features(image[None].to(self.input_mean.device))
            self.cache.put(key, features)
        device = features.embedding.device
        points, labels, boxes = (t.to(device) if t is not None else None for t in (points, labels, boxes))
        if points is None and boxes is None and not self.automatic:
            _check_prompts(count, points, labels, boxes)
        return self.decode(features.expand(count), points, labels, boxes, image.shape[-2:])

    # ---- training ----------------------------------------------------------------------------------------
    def targets(self, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Class masks ``(B, H, W)`` -> binary object masks (bool) and ignore masks (bool)."""
        hp = self.hparams
        ignore = mask == hp["ignore_index"] if hp["ignore_index"] is not None else torch.zeros_like(mask, dtype=bool)
        fg = mask > 0 if hp["foreground_class"] is None else mask == hp["foreground_class"]
        return fg & ~ignore, ignore

    def losses(self, logits: Tensor, target: Tensor, ignore: Tensor) -> Tensor:
        """Per-sample, per-mask ``focal_weight * focal + dice_weight * dice`` (``loss``): ``(B, M)``."""
        from torchvision.ops import sigmoid_focal_loss

        keep = (~ignore)[:, None].float()
        target = target[:, None].float().expand_as(logits)
        pixels = keep.sum(dim=(-2, -1)).clamp(min=1)
        focal = (sigmoid_focal_loss(logits, target, reduction="none") * keep).sum(dim=(-2, -1)) / pixels
        prob = logits.sigmoid() * keep
        inter = (prob * target).sum(dim=(-2, -1))
        dice = 1 - (2 * inter + 1) / (prob.sum(dim=(-2, -1)) + (target * keep).sum(dim=(-2, -1)) + 1)
        weights = self.loss_config
        return weights.focal_weight * focal + weights.dice_weight * dice

    def _shared_step(self, batch: dict[str, Any], stage: str) -> Tensor | None:
        target, ignore = self.targets(batch["mask"])
        if self.automatic:
            image = batch["image"]
            logits, _, coarse, coords, labels = self.segment_automatic(image)
            boxes = torch.full((len(image), 4), float("nan"), device=image.device)
            per_mask = self.losses(logits, target, ignore)
            best = per_mask.argmin(dim=1)
            loss = per_mask.gather(1, best[:, None]).mean()
            if coarse is not None:  # MapSAM: the same loss on the coarse mask
                coarse_up = F.interpolate(coarse, size=(self.img_size, self.img_size), mode="bilinear",
                                          align_corners=False)[..., : image.shape[-2], : image.shape[-1]]
                loss = loss + self.loss_config.coarse_weight * self.losses(coarse_up, target, ignore).mean()
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
