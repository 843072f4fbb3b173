"""Contracts every layer above builds on: what a frozen backbone offers to adapters and tasks
(:class:`Backbone`, :class:`BlockStack`), and what a task offers to the faces (:class:`TaskCapabilities`).

A :class:`Backbone` maps ``(B, len(bands), H, W)`` to a list of feature maps ``(B, C_i, ceil(H/s_i),
ceil(W/s_i))`` with ``C_i = out_channels[i]`` and ``s_i = strides[i]``. Inputs of any size are padded
(bottom/right, zeros) to ``pad_multiple`` and the outputs cropped back, so odd and non-square sizes work.
Each family (``vadapt.backbones``) wraps its upstream module as ``self.model`` (the object whose ``state_dict``
matches the upstream checkpoint after the family's ``checkpoint_filter``) and exposes per-layer ``blocks`` for
adapters. :class:`BlockStack` is the part adapters rely on (``blocks`` and their layout, the block runner,
freezing); point-cloud and composite backbones share it without being image backbones.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vadapt.bands import RGB, BandInit, adapt_input_weight, check_bands
from vadapt.weights import load_strict, read_state_dict


class BlockStack(nn.Module):
    """A frozen network whose ``blocks`` adapters attach to: the block runner (no autograd before the first
    trainable block, optional gradient checkpointing) and freezing that keeps frozen batch norms in eval mode.

    Subclasses: :class:`Backbone` (images), ``vadapt.backbones.point_mae.PointBackbone`` (point clouds) and
    ``vadapt.adapters.any2point.Any2PointBackbone`` (a ViT run on point clouds).
    """

    #: input layout of ``blocks``: ``"tokens"`` (B, N, C), ``"grid"`` (B, H, W, C) or ``"conv"`` (B, C, H, W)
    block_layout: str = "tokens"
    #: default module names for LoRA and for bottleneck adapters (peft-style suffixes)
    lora_targets: tuple[str, ...] = ("qkv",)
    adapter_targets: tuple[str, ...] = ("mlp",)
    #: ``"tokens"`` layout: leading non-patch tokens (class, registers) in every block's sequence
    num_prefix_tokens: int = 0
    grad_checkpointing: bool = False

    @property
    def blocks(self) -> nn.ModuleList:
        """The per-layer modules, in order, that adapters may wrap or insert after."""
        raise NotImplementedError

    def run_blocks(
        self,
        x: torch.Tensor,
        out_indices: Sequence[int],
        call: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """Run ``self.blocks`` in order and return the outputs of ``out_indices``.

        Blocks before the first one holding a trainable parameter run without autograd (nothing upstream
        needs gradients), and with ``grad_checkpointing`` the later ones are recomputed in backward.
        """
        call = call or (lambda block, h: block(h))
        first = self.first_trainable_block()
        grad = torch.is_grad_enabled()
        outs = []
        for i, block in enumerate(self.blocks):
            if i < first:
                with torch.no_grad():
                    x = call(block, x)
            elif grad and self.grad_checkpointing and self.training:
                x = checkpoint(call, block, x, use_reentrant=False)
            else:
                x = call(block, x)
            if i in out_indices:
                outs.append(x)
        return outs

    def first_trainable_block(self) -> int:
        """Index of the first block with a trainable parameter; 0 if anything before the blocks trains."""
        blocks = self.blocks
        in_blocks = {id(p) for p in blocks.parameters()}
        if any(p.requires_grad and id(p) not in in_blocks for p in self.parameters()):
            return 0
        for i, block in enumerate(blocks):
            if any(p.requires_grad for p in block.parameters()):
                return i
        return len(blocks)

    def freeze(self) -> None:
        """Make every parameter frozen (``requires_grad=False``) and put frozen batch norms in eval mode."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> BlockStack:
        """Batch-norm layers whose parameters are frozen stay in eval mode, so their statistics never move."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
                m.eval()
        return self


class Backbone(BlockStack):
    """Base class of frozen feature extractors (see module docstring)."""

    #: attribute path (inside ``self.model``) of the first convolution, adapted for multispectral input
    stem_conv: str = ""
    #: bands the pretrained first layer was trained on
    pretrained_bands: tuple[str, ...] = RGB
    #: per-channel RGB normalisation the pretrained weights expect, on inputs scaled to [0, 1]
    rgb_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    rgb_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    def __init__(self) -> None:
        super().__init__()
        self.name = ""
        self.bands: tuple[str, ...] = RGB
        self.out_channels: list[int] = []
        self.strides: list[int] = []
        self.patch_size = 1
        self.pad_multiple = 1
        self.grad_checkpointing = False
        #: ``"tokens"`` layout: (h, w) patch grid of the current forward, so adapters can fold tokens to maps
        self.token_grid: tuple[int, int] | None = None

    # ---- what each family implements -------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x`` is padded to ``pad_multiple``; return one map per entry of ``strides``."""
        raise NotImplementedError

    def checkpoint_filter(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Turn an upstream checkpoint into ``self.model``'s keys (unwrap, strip prefixes, resample)."""
        return state_dict

    # ---- shared behaviour ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, len(bands), H, W)`` -> one map ``(B, C_i, ceil(H / s_i), ceil(W / s_i))`` per stride ``s_i``;
        ``ValueError`` naming the bands when the input's shape does not fit them."""
        if x.ndim != 4 or x.shape[1] != len(self.bands):
            raise ValueError(
                f"{self.name or type(self).__name__} expects (B, {len(self.bands)}, H, W) input for bands "
                f"{list(self.bands)}, got shape {tuple(x.shape)}"
            )
        height, width = x.shape[-2:]
        pad_h = -height % self.pad_multiple
        pad_w = -width % self.pad_multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        feats = self.forward_features(x)
        return [f[..., : math.ceil(height / s), : math.ceil(width / s)] for f, s in zip(feats, self.strides)]

    def load_pretrained(self, path: str) -> None:
        """Load an upstream checkpoint file into ``self.model`` through :meth:`checkpoint_filter`, strictly (every
        missing or unexpected key is an error that lists them)."""
        state_dict = self.checkpoint_filter(read_state_dict(path))
        load_strict(self.model, state_dict, source=str(path))

    def set_bands(self, bands: Sequence[str], init: BandInit = "copy") -> None:
        """Rebuild the first layer for ``bands`` (see :mod:`vadapt.bands`)."""
        bands = check_bands(bands)
        if bands == self.bands:
            return
        parent, attr = _parent_and_attr(self.model, self.stem_conv)
        conv = getattr(parent, attr)
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"{self.stem_conv} of {self.name} is a {type(conv).__name__}, not a Conv2d")
        new = copy.deepcopy(conv)  # keeps the class (e.g. timm's Conv2dSame pads in its forward)
        new.weight = nn.Parameter(adapt_input_weight(conv.weight.detach(), self.bands, bands, init))
        new.in_channels = len(bands)
        setattr(parent, attr, new)
        self.bands = bands

    def describe(self) -> dict[str, Any]:
        """Metadata stored in adapter checkpoints and shown by ``vadapt list``."""
        return {
            "name": self.name,
            "bands": list(self.bands),
            "out_channels": list(self.out_channels),
            "strides": list(self.strides),
            "patch_size": self.patch_size,
            "num_blocks": len(self.blocks),
            "rgb_mean": list(self.rgb_mean),
            "rgb_std": list(self.rgb_std),
        }


def _parent_and_attr(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    *parents, attr = path.split(".")
    module = root
    for name in parents:
        module = getattr(module, name)
    return module, attr


# ---- what a task offers ------------------------------------------------------------------------------------

TaskInput = Literal["image", "image_pair", "point_cloud", "text"]
TaskOutput = Literal["class_map", "class_label", "point_labels", "generated", "depth_map", "none"]
PromptUse = Literal["none", "optional", "required"]


@dataclass(frozen=True)
class TaskCapabilities:
    """What a task can do, declared by the task and read by the faces and services (the app's tabs, ``vadapt
    infer``, ``vadapt predict-points``, ``vadapt generate``) instead of its class name.

    Attributes:
        input: what one prediction takes: an image ``(B, C, H, W)``, a pair of co-registered images (two such
            tensors), a point cloud ``(B, N, 3)``, or a text prompt (generation).
        output: per-pixel class logits ``(B, K, H, W)`` (``class_map``; called as ``task.class_logits(*inputs)``),
            one label per input (``class_label``), one label per point (``point_labels``), new images or frames
            (``generated``), per-pixel depth ``(B, 1, H, W)`` up to scale (``depth_map``; called as
            ``task.predict_depth(image)``), or nothing a user runs (``none``: pretraining).
        tiles: whether ``class_map`` predictions can be made tile by tile on images of any size.
        prompts: whether a prediction takes point / box prompts: never, optionally, or always.
    """

    input: TaskInput
    output: TaskOutput
    tiles: bool = False
    prompts: PromptUse = "none"

    @property
    def num_inputs(self) -> int:
        """Image tensors per prediction (2 for ``image_pair``)."""
        return 2 if self.input == "image_pair" else 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form stored in adapter-checkpoint manifests."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TaskCapabilities:
        """Read a manifest's ``capabilities``; unknown or missing fields are an error that names them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown task capabilities {unknown}; known: {sorted(known)}")
        return cls(**values)
