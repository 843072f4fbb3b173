"""EndoDAC's two parts: the DV-LoRA layer and the Convolutional Neck block.

Paper: Cui et al., 2024, "EndoDAC: Efficient Adapting Foundation Model for Self-Supervised Depth Estimation from Any
Endoscopic Camera", arXiv:2405.08672; official code ``BeileiCui/EndoDAC`` (``models/backbones/mylora/layers.py``:
``DVLinear``; ``models/backbones/layers/utils.py``: ``ResBottleneckBlock``, ``LayerNorm``; ``models/endodac``:
injection and ``mark_only_part_as_trainable``; ``trainer_end_to_end.py``: ``set_train``, the warm-up switch).

**DV-LoRA** (Dynamic Vector-Based LoRA). A frozen Linear ``y = W x + b`` with ``W`` ``(d_out, d_in)`` gets

* ``A`` ``(r, d_in)`` (kaiming-uniform, ``a = sqrt 5``) and ``B`` ``(d_out, r)`` (zeros), as LoRA;
* a per-rank vector ``U`` ``(r,)`` and a per-output vector ``V`` ``(d_out,)``, both uniform in ``[-1, 1]`` (the
  official kaiming-uniform, ``a = sqrt 5``, on ``(r, 1)`` / ``(d_out, 1)`` tensors: fan-in 1, bound 1);
* the update ``Delta W = s * diag(V) B diag(U) A`` (``s = lora_alpha / r``), i.e. for ``x`` ``(..., d_in)``::

      y = W x + b + s * ((x (diag(U) A)^T) (diag(V) B)^T)                       (..., d_out)

  zero at init (``B = 0``), so the layer starts as the frozen one bit for bit, and mergeable into ``W``.

``vectors=False`` drops ``U`` and ``V``: plain LoRA (the paper's ablation). :class:`DVLoraConv2d` applies the same
update to a 1x1, stride-1, ungrouped convolution (a per-pixel Linear on ``(B, C, H, W)``), so the method also runs
on convolutional backbones (EfficientNet-Lite's ``conv_pw`` / ``conv_pwl``); this is our extension.

The "dynamic" schedule: for the first ``warm_up_steps`` steps ``A`` and ``B`` train with ``U``, ``V`` frozen at
their random init; afterwards ``U`` and ``V`` train with ``A``, ``B`` frozen (necks and heads train throughout).
:meth:`DVLoraLinear.set_phase` switches. The factors of the frozen phase are held as persistent *buffers* and those
of the training phase as *parameters*, under the same names (``lora_A``, ``lora_B``, ``lora_U``, ``lora_V``), so the
state-dict keys never change. Why not just toggle ``requires_grad``: vadapt's adapter checkpoints keep the trainable
parameters and the buffers of the modules that own one; a checkpoint written during warm-up would lose the random
``U``, ``V`` and one written later the trained ``A``, ``B``, and neither would restore the model. A switch makes new
``nn.Parameter`` objects for the factors that start training: the caller hands them to its optimizer.

**Why our own layer and not peft** (checked against peft 0.21's tuners): peft's ``lora`` has trainable ``A``, ``B``
but no trainable per-rank or per-output vector (its DoRA magnitude is a per-output norm rescaling, not a factor of
the update). ``vera`` has exactly DV-LoRA's form ``Lambda_b B Lambda_d A`` with trainable vectors ``d`` (per rank)
and ``b`` (per output), but its ``A`` and ``B`` are frozen random matrices shared by all layers, so it cannot express
the warm-up phase (trained, per-layer ``A``, ``B``) nor the vector phase (vectors on top of those trained factors);
``pvera`` and ``tinylora`` are variants of that frozen-random design. ``adalora`` (``P Lambda Q``) trains a per-rank
vector together with its factors, but it has no per-output vector, zero-initialises ``Lambda`` instead of ``B``,
adds an orthogonality penalty and prunes ranks on its own schedule. None switches which factors train at a step.

**Convolutional Neck** (official ``ResBottleneckBlock``, hooked after the chosen blocks): on the block's output
patch tokens folded to ``(B, C, h, w)`` (prefix tokens pass unchanged), ``conv1x1 C -> C/k``, LayerNorm over
channels, GELU, ``conv3x3 C/k -> C/k`` (padding 1), LayerNorm, GELU, ``conv1x1 C/k -> C``, LayerNorm whose weight and
bias start at zero, so the block adds exactly zero at init; convolutions without bias, MSRA-initialised
(kaiming-normal, fan-out, ReLU); LayerNorm eps ``1e-6``. Its output is added to the patch tokens.

Deviations from the official code:

* ``U`` and ``V`` are stored as vectors ``(r,)`` / ``(d_out,)`` (official ``(r, 1)`` / ``(d_out, 1)``): the same
  numbers, a plainer shape.
* Plain LoRA (``vectors=False``) trains ``A`` and ``B`` for the whole run, as the paper's ablation
  describes. The official ``mark_only_part_as_trainable`` would freeze a plain LoRA's ``A``, ``B`` after
  ``warm_up_step`` too (it keeps only names with ``lora_U`` / ``lora_V`` trainable), leaving only necks and heads.
* The neck is placed after the wrapped block (the official code runs it inside the block after the MLP residual:
  the same point of the computation) and handles any number of prefix tokens (official: 0 or 1 class token). Its
  bottleneck width is ``max(1, C // k)``, which differs from the official ``C // 8`` only below ``C = 8``.
* The adapter factors are kept in float32 at least, also on a half-precision backbone (as our other LoRA layers).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vadapt.adapters.layers import AdapterLayer, WeightAdapterLayer

#: the factors of one DV-LoRA layer, by phase: trained during warm-up / after it
WARM_UP_FACTORS: tuple[str, ...] = ("lora_A", "lora_B")
VECTOR_FACTORS: tuple[str, ...] = ("lora_U", "lora_V")


def dv_lora_parameter_count(d_in: int, d_out: int, r: int, vectors: bool = True) -> int:
    """Adapter tensors of one DV-LoRA layer on a ``(d_out, d_in)`` weight: ``r (d_in + d_out)`` for ``A``, ``B`` plus
    ``r + d_out`` for ``U``, ``V`` (with ``vectors``). All of them are trained, each in its phase."""
    return r * (d_in + d_out) + (r + d_out if vectors else 0)


def neck_width(channels: int, reduction: int) -> int:
    """Bottleneck width of a neck on ``channels``: ``max(1, channels // reduction)``."""
    return max(1, channels // reduction)


def conv_neck_parameter_count(channels: int, reduction: int = 8) -> int:
    """Parameters of one :class:`ConvNeck` on ``C`` channels, ``b = max(1, C // reduction)``: convolutions
    ``2 C b + 9 b^2`` (no biases) and LayerNorms ``2 b + 2 b + 2 C``."""
    b = neck_width(channels, reduction)
    return 2 * channels * b + 9 * b * b + 4 * b + 2 * channels


class DVLoraLinear(WeightAdapterLayer):
    """A frozen ``nn.Linear`` with DV-LoRA (or LoRA). Input ``(..., d_in)`` -> output ``(..., d_out)``, as
    ``base_layer`` (see the module docstring for the update and the phases).

    Args:
        base_layer: the frozen layer; its parameters are neither copied nor changed.
        r: rank of the update.
        scaling: factor ``s`` on the update (``lora_alpha / r``).
        vectors: add the trainable vectors ``U`` ``(r,)`` and ``V`` ``(d_out,)`` (DV-LoRA) or not (LoRA).
        vector_phase: start in the vector phase (``U``, ``V`` train) instead of warm-up (``A``, ``B`` train).
    """

    def __init__(self, base_layer: nn.Module, r: int = 4, scaling: float = 1.0, vectors: bool = True,
                 vector_phase: bool = False) -> None:
        super().__init__()
        self._check_base(base_layer)
        if r < 1:
            raise ValueError(f"{type(self).__name__} r must be >= 1, got {r}")
        self.base_layer = base_layer
        self.r, self.scaling, self.vectors = r, float(scaling), vectors
        weight = base_layer.weight
        d_out, d_in = weight.shape[0], weight.shape[1]
        kw = {"device": weight.device, "dtype": torch.promote_types(weight.dtype, torch.float32)}
        a = torch.empty(r, d_in, **kw)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # LoRA's / the official init of A
        factors = {"lora_A": a, "lora_B": torch.zeros(d_out, r, **kw)}
        if vectors:  # official kaiming-uniform (a = sqrt 5) on (r, 1) and (d_out, 1): fan-in 1, i.e. U(-1, 1)
            factors["lora_U"] = torch.empty(r, **kw).uniform_(-1.0, 1.0)
            factors["lora_V"] = torch.empty(d_out, **kw).uniform_(-1.0, 1.0)
        self.vector_phase = vector_phase and vectors
        for name, tensor in factors.items():
            self._hold(name, tensor, self._trains(name))

    @staticmethod
    def _check_base(base_layer: nn.Module) -> None:
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"DVLoraLinear wraps an nn.Linear, got {type(base_layer).__name__}")

    # ---- phases ------------------------------------------------------------------------------------------------
    def _trains(self, name: str) -> bool:
        if not self.vectors:
            return True  # plain LoRA: A and B train throughout
        return name in (VECTOR_FACTORS if self.vector_phase else WARM_UP_FACTORS)

    def _hold(self, name: str, tensor: torch.Tensor, trainable: bool) -> None:
        """Keep ``tensor`` under ``name`` as a trainable parameter or a persistent buffer (same state-dict key)."""
        self._parameters.pop(name, None)
        self._buffers.pop(name, None)
        if trainable:
            self.register_parameter(name, nn.Parameter(tensor.detach()))
        else:
            self.register_buffer(name, tensor.detach(), persistent=True)

    def set_phase(self, vectors: bool) -> None:
        """Warm-up (``vectors=False``: ``A``, ``B`` train) or vector phase (``U``, ``V`` train); the frozen ones
        become buffers. A no-op when already in that phase (the parameter objects are kept); for plain LoRA
        ``A`` and ``B`` always train."""
        vector_phase = vectors and self.vectors
        if vector_phase == self.vector_phase:
            return
        self.vector_phase = vector_phase
        for name in WARM_UP_FACTORS + VECTOR_FACTORS:
            self._hold(name, getattr(self, name), self._trains(name))

    # ---- the update ----------------------------------------------------------------------------------------------
    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(diag(U) A, diag(V) B)``: ``(r, d_in)`` and ``(d_out, r)`` in the adapter dtype (``A``, ``B`` without
        vectors); differentiable in whichever factors are parameters."""
        a, b = self.lora_A, self.lora_B
        if self.vectors:
            a, b = self.lora_U[:, None] * a, self.lora_V[:, None] * b
        return a, b

    def delta_weight(self) -> torch.Tensor:
        """``Delta W = s * diag(V) B diag(U) A`` ``(d_out, d_in)`` in the adapter dtype."""
        a, b = self.factors()
        return self.scaling * (b @ a)

    def update(self, x: torch.Tensor) -> torch.Tensor:
        """``s * (x (diag(U) A)^T) (diag(V) B)^T``: ``(..., d_in)`` -> ``(..., d_out)`` in the adapter dtype."""
        a, b = self.factors()
        return F.linear(F.linear(x.to(a.dtype), a), b) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(..., d_in)`` -> ``base_layer(x) + update(x)`` ``(..., d_out)`` in the frozen layer's dtype."""
        out = self.base_layer(x)
        return out + self.update(x).to(out.dtype)


    def num_adapter_parameters(self) -> int:
        """Adapter tensors of this layer, both phases: :func:`dv_lora_parameter_count`."""
        return sum(getattr(self, n).numel() for n in WARM_UP_FACTORS + (VECTOR_FACTORS if self.vectors else ()))

    @torch.no_grad()
    def merge(self) -> nn.Module:
        """A frozen copy of ``base_layer`` (same class) with weight ``W + Delta W``; ``base_layer`` is untouched."""
        base = self.base_layer
        merged = copy.deepcopy(base)
        merged.weight.copy_((base.weight.to(self.lora_A.dtype) + self.delta_weight().view_as(base.weight))
                            .to(base.weight.dtype))
        merged.requires_grad_(False)
        return merged

    def extra_repr(self) -> str:
        """Rank, scaling, vectors and phase for the module's ``repr``."""
        phase = "vectors" if self.vector_phase else "warm-up"
        return f"r={self.r}, scaling={self.scaling:g}, vectors={self.vectors}, phase={phase}"


class DVLoraConv2d(DVLoraLinear):
    """DV-LoRA on a frozen 1x1, stride-1, padding-0, ungrouped ``nn.Conv2d`` (a per-pixel Linear): input
    ``(B, C_in, H, W)`` -> ``(B, C_out, H, W)``; ``Delta W`` is reshaped to the ``(C_out, C_in, 1, 1)`` kernel."""

    @staticmethod
    def _check_base(base_layer: nn.Module) -> None:
        if not is_pointwise_conv(base_layer):
            raise TypeError(
                f"DVLoraConv2d wraps a 1x1, stride-1, padding-0, groups-1 nn.Conv2d, got {base_layer!r}"
            )

    def update(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W)`` -> ``(B, C_out, H, W)``: the Linear update at every pixel (adapter dtype)."""
        a, b = self.factors()
        h = F.conv2d(x.to(a.dtype), a[:, :, None, None])
        return F.conv2d(h, b[:, :, None, None]) * self.scaling


def is_pointwise_conv(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.Conv2d`` computing a per-pixel Linear (1x1 kernel, stride 1, no padding or
    dilation effect, one group); timm's ``Conv2dSame`` and other subclasses with their own forward are excluded."""
    if not isinstance(module, nn.Conv2d) or type(module).forward is not nn.Conv2d.forward:
        return False
    return (tuple(module.kernel_size) == (1, 1) and tuple(module.stride) == (1, 1) and module.groups == 1
            and module.padding in ((0, 0), "valid"))


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of ``(B, C, H, W)`` maps (the official channels-first ``LayerNorm``, eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H, W)``, each pixel's channel vector normalised."""
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeck(nn.Module):
    """EndoDAC's Convolutional Neck: a bottleneck residual branch ``(B, C, H, W) -> (B, C, H, W)`` (see the module
    docstring); zero at init (last LayerNorm weight and bias are zero)."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        width = neck_width(channels, reduction)
        self.channels = channels
        self.conv1 = nn.Conv2d(channels, width, 1, bias=False)
        self.norm1 = ChannelLayerNorm(width)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.norm2 = ChannelLayerNorm(width)
        self.act2 = nn.GELU()
        self.conv3 = nn.Conv2d(width, channels, 1, bias=False)
        self.norm3 = ChannelLayerNorm(channels)
        for conv in (self.conv1, self.conv2, self.conv3):  # MSRA fill, as the official (fvcore c2_msra_fill)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.norm3.weight)
        nn.init.zeros_(self.norm3.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> the residual ``(B, C, H, W)`` to add to ``x`` (zero at init)."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"ConvNeck on {self.channels} channels expects (B, {self.channels}, H, W), "
                             f"got {tuple(x.shape)}")
        h = self.act1(self.norm1(self.conv1(x)))
        h = self.act2(self.norm2(self.conv2(h)))
        return self.norm3(self.conv3(h))


class TokenGrid:
    """A plain (non-module) callable returning ``backbone.token_grid``, so the wrapped blocks hold no module cycle;
    ``copy.deepcopy`` of the backbone points the copy at the copied backbone."""

    def __init__(self, backbone: nn.Module) -> None:
        self.backbone = backbone

    def __call__(self) -> tuple[int, int] | None:
        """The ``(h, w)`` patch grid of the backbone's latest forward, or ``None`` before the first one."""
        return self.backbone.token_grid


class NeckedBlock(AdapterLayer):
    """A frozen block followed by a :class:`ConvNeck` (``adapter``) whose output is added to the block's output.

    Layouts: ``"tokens"`` ``(B, P + h w, C)``, the ``P = num_prefix_tokens`` first tokens unchanged and the others
    folded to the ``(h, w)`` grid ``grid()`` returns; ``"grid"`` ``(B, H, W, C)``; ``"conv"`` ``(B, C, H, W)``.
    Same shapes out as the block.
    """

    def __init__(self, base_layer: nn.Module, adapter: ConvNeck, layout: str, num_prefix_tokens: int = 0,
                 grid: Callable[[], tuple[int, int] | None] | None = None) -> None:
        super().__init__()
        if layout not in ("tokens", "grid", "conv"):
            raise ValueError(f"NeckedBlock supports 'tokens', 'grid' and 'conv' layouts, got {layout!r}")
        if layout == "tokens" and grid is None:
            raise ValueError("a 'tokens' layout block needs `grid`, a callable returning the (h, w) token grid")
        self.base_layer = base_layer
        self.adapter = adapter
        self.layout = layout
        self.num_prefix_tokens = num_prefix_tokens
        self.grid = grid

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """The block's output plus the neck's residual on its patch tokens / map. Raises ``ValueError`` when
        ``"tokens"`` output does not fold into the backbone's ``token_grid`` or its width is not the neck's."""
        out = self.base_layer(x, *args, **kwargs)
        neck = self.adapter
        if self.layout == "conv":
            return out + neck(out).to(out.dtype)
        if self.layout == "grid":
            return out + neck(out.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).to(out.dtype)
        grid, p = self.grid(), self.num_prefix_tokens
        if grid is None or out.ndim != 3 or out.shape[1] - p != grid[0] * grid[1]:
            raise ValueError(
                f"the EndoDAC neck cannot fold tokens of shape {tuple(out.shape)} ({p} prefix) into the backbone's "
                f"token grid {grid}; the backbone must set token_grid in its forward"
            )
        b, _, c = out.shape
        patches = out[:, p:]
        delta = neck(patches.transpose(1, 2).reshape(b, c, grid[0], grid[1]))  # (B, C, h, w)
        return torch.cat([out[:, :p], patches + delta.flatten(2).transpose(1, 2).to(out.dtype)], dim=1)
