"""Cloud-Adapter's two parts: the spatial perception ConvNet and the per-block adapting module.

Paper: Zou et al., "Adapting Vision Foundation Models for Robust Cloud Segmentation in Remote Sensing Images";
official code github.com/XavierJiezou/Cloud-Adapter (``cloud_adapter/models/backbones/cloud_adapter.py``:
``PMAAConvBlock``, ``CrossAttention``, ``LoRaMLP``, ``ConvnextInteractiveModule``; hooked into DINOv2 by
``cloud_adapter_dinov2.py``). This is our own implementation of the released configuration (``cnn_type="pmaa"``,
``int_type="convnext"``, one aggregated context map).

Data flow for one forward of the backbone on ``x`` of shape ``(B, bands, H, W)``:

1. :class:`SpatialPerception` (run by a forward pre-hook on the backbone, see :meth:`SpatialPerception.capture`)
   maps the padded input to ``context`` ``(B, D, H / 2**depth, W / 2**depth)`` and stores it in a
   :class:`ContextSlot` shared with the adapted blocks.
2. Each :class:`CloudAdaptedBlock` runs its frozen ``base_layer`` and then, on the output's patch tokens ``(B, L,
   C)`` (``L = h * w``; prefix tokens are left as they are), adds :class:`ContextCrossAttention` of the tokens to
   the context resized (bilinear) to the patch grid ``(B, L, D)``.

Deviations from the official code (all stated in the package docs as well):

* Norms: GroupNorm instead of BatchNorm in the ConvNet. BatchNorm's running statistics are buffers that change
  while training, which this repository's adapter checkpoints (trainable parameters only) would not keep, and
  they make the context depend on batch composition; GroupNorm has the same parameter count. The first norm
  (on the input bands) uses one group so the relative band values survive; the ``D``-wide ones use
  ``norm_groups``.
* Init: the cross-attention's output projection ends with a zero factor (``zero_init``), so the adapted
  backbone starts equal to the frozen one; the official code keeps PyTorch's default Linear init everywhere
  in the cross-attention. The ConvNet keeps the official init (normal, std ``sqrt(2 / fan_out)``; norms 1, 0).
* Geometry: the context is resized to the backbone's actual patch grid ``(h, w)`` (official: a square grid
  ``sqrt(N)``, so square inputs only), and it is computed on the input padded exactly as the backbone pads
  it, so context and tokens cover the same pixels.
* Prefix tokens: all ``num_prefix_tokens`` (class token and registers) pass unchanged; the official code
  splits off exactly one class token.
* Placement: the adapting module runs inside the wrapper right after its block, which is the official order
  (block, then interaction) without editing the backbone's forward loop.
* Attention is computed with ``scaled_dot_product_attention`` (same maths as the official einsum/softmax).
"""

from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from vadapt.adapters.layers import AdapterLayer


class ContextSlot:
    """The context map of the current forward, shared by :class:`SpatialPerception` and the adapted blocks.

    It also remembers (weakly) which backbone ran, so token-layout blocks can read its ``token_grid``.
    Copies and pickles start empty: the context belongs to one forward and is recomputed by the next.
    """

    def __init__(self) -> None:
        self.context: torch.Tensor | None = None
        self.backbone: weakref.ref | None = None

    def __reduce__(self):
        return (ContextSlot, ())


class LowRankLinear(nn.Module):
    """``up(down(x))`` without biases, ``(..., in_dim) -> (..., out_dim)``; ``rank=None``: one full Linear.

    The official ``LoRaMLP`` (``rank_dim`` set) or a plain bias-free ``nn.Linear`` (``rank_dim=None``).
    """

    def __init__(self, in_dim: int, out_dim: int, rank: int | None) -> None:
        super().__init__()
        if rank is None:
            self.down = None
            self.up = nn.Linear(in_dim, out_dim, bias=False)
        else:
            self.down = nn.Linear(in_dim, rank, bias=False)
            self.up = nn.Linear(rank, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_dim)`` -> ``(..., out_dim)``."""
        return self.up(x if self.down is None else self.down(x))


class ContextCrossAttention(nn.Module):
    """Multi-head cross-attention from block tokens to context tokens through low-rank projections.

    ``tokens (B, L, dim)``, ``context (B, M, context_dim)`` -> update ``(B, L, dim)``; queries come from the
    tokens, keys and values from the context, inner width ``num_heads * head_dim``, softmax scale
    ``head_dim ** -0.5``. Parameters: ``rank * (2 * dim + 2 * context_dim + 4 * inner)`` (full rank:
    ``inner * (2 * dim + 2 * context_dim)``).
    """

    def __init__(
        self, dim: int, context_dim: int, num_heads: int, head_dim: int, rank: int | None, zero_init: bool
    ) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.dim = dim
        self.num_heads = num_heads
        self.q_proj = LowRankLinear(dim, inner, rank)
        self.k_proj = LowRankLinear(context_dim, inner, rank)
        self.v_proj = LowRankLinear(context_dim, inner, rank)
        self.out_proj = LowRankLinear(inner, dim, rank)
        if zero_init:
            nn.init.zeros_(self.out_proj.up.weight)

    def forward(self, tokens: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, L, dim)`` attend to context tokens ``(B, M, context_dim)`` -> update ``(B, L, dim)`` (zero at
        init with ``zero_init``)."""
        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, n, h * d) -> (B, h, n, d)
            return t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        q, k, v = heads(self.q_proj(tokens)), heads(self.k_proj(context)), heads(self.v_proj(context))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, L, d)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class _ConvUnit(nn.Module):
    """``k×k`` conv (stride ``s``) -> norm -> ReLU -> ``1×1`` conv -> norm, plus the input when shapes allow.

    The official ``DepthwiseSeparableConv`` as the released ConvNet configures it: its "depthwise" convs there
    get ``groups = 1`` (group size = channels), i.e. full convolutions, except in the stem (``groups = in``).
    """

    def __init__(self, in_dim: int, out_dim: int, kernel: int, stride: int, groups: int,
                 first_norm: nn.Module, second_norm: nn.Module) -> None:
        super().__init__()
        self.spatial = nn.Conv2d(in_dim, in_dim, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
        self.norm1 = first_norm
        self.act = nn.ReLU()
        self.pointwise = nn.Conv2d(in_dim, out_dim, 1, bias=False)
        self.norm2 = second_norm
        self.residual = stride == 1 and in_dim == out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm2(self.pointwise(self.act(self.norm1(self.spatial(x)))))
        return x + y if self.residual else y


class SpatialPerception(nn.Module):
    """The spatial perception ConvNet: ``(B, bands, H, W) -> (B, dim, H_d, W_d)`` with ``H_d = ceil(H / 2**depth)``.

    A stem (per-band 1×1 scale, norm, ReLU, 1×1 to ``dim``, norm), one stride-1 3×3 unit with a residual, then
    ``depth`` stride-2 3×3 units. The ``depth + 1`` unit outputs (strides 1 .. ``2**depth``) are average-pooled
    to the coarsest size and summed: the multi-scale context. Parameters: ``3 * bands + bands * dim + 2 * dim``
    for the stem and ``10 * dim**2 + 4 * dim`` per unit.
    """

    def __init__(self, in_chans: int, dim: int, depth: int, norm_groups: int) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.stem = _ConvUnit(
            in_chans, dim, kernel=1, stride=1, groups=in_chans,
            first_norm=nn.GroupNorm(1, in_chans), second_norm=nn.GroupNorm(norm_groups, dim),
        )
        self.units = nn.ModuleList(
            _ConvUnit(dim, dim, kernel=3, stride=1 if i == 0 else 2, groups=1,
                      first_norm=nn.GroupNorm(norm_groups, dim), second_norm=nn.GroupNorm(norm_groups, dim))
            for i in range(depth + 1)
        )
        self.slot = ContextSlot()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official ConvNet init: conv weights ``N(0, 2 / fan_out)`` with ``fan_out = k*k*out / groups``; GroupNorm
        weights 1, biases 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # the official ConvNet's init: normal, std sqrt(2 / fan_out)
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Padded image ``(B, bands, H, W)`` -> context ``(B, dim, ceil(H / 2**depth), ceil(W / 2**depth))``."""
        feats = []
        x = self.stem(image)
        for unit in self.units:
            x = unit(x)
            feats.append(x)
        size = feats[-1].shape[-2:]
        return sum(F.adaptive_avg_pool2d(f, size) for f in feats)

    def capture(self, backbone: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook on the backbone: compute this forward's context from its input.

        The input is padded (bottom/right zeros to ``backbone.pad_multiple``) as ``Backbone.forward`` pads it.
        Malformed inputs are left for the backbone's own check to report.
        """
        x = args[0] if args else kwargs.get("x")
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != len(getattr(backbone, "bands", ())):
            self.slot.context = None
            return
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"Cloud-Adapter's spatial perception ConvNet was built for {self.in_chans} input bands, but the "
                f"backbone now takes {x.shape[1]}; call set_bands before apply_adapter"
            )
        multiple = getattr(backbone, "pad_multiple", 1)
        pad_h, pad_w = -x.shape[-2] % multiple, -x.shape[-1] % multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        self.slot.context = self(x)
        self.slot.backbone = weakref.ref(backbone)


class CloudAdaptedBlock(AdapterLayer):
    """A frozen block followed by Cloud-Adapter's adapting module; same input and output shapes as the block.

    ``layout="tokens"``: ``(B, N, C)`` with ``N = num_prefix_tokens + h * w`` and ``(h, w)`` the backbone's
    ``token_grid``; ``layout="grid"``: ``(B, H, W, C)``. On the block output ``y``, the patch tokens become
    ``y + attn(y, context)`` (the official residual); prefix tokens are unchanged.
    """

    def __init__(self, base_layer: nn.Module, adapter: ContextCrossAttention, slot: ContextSlot, layout: str,
                 num_prefix_tokens: int = 0) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter
        self.slot = slot
        self.layout = layout
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``base_layer``'s output with the cross-attention update added to its patch tokens; same shape. Raises
        ``RuntimeError`` when no context has been computed yet and ``ValueError`` on a width, token-grid or batch
        mismatch."""
        out = self.base_layer(x, *args, **kwargs)
        context = self.slot.context
        if context is None:
            raise RuntimeError(
                "Cloud-Adapter blocks use the context its ConvNet computes from the backbone input: call the "
                "backbone itself (backbone(x)), not forward_features or the blocks directly"
            )
        if out.shape[-1] != self.adapter.dim:
            raise ValueError(f"Cloud-Adapter module of width {self.adapter.dim} got tokens of width {out.shape[-1]}")
        if self.layout == "tokens":
            backbone = self.slot.backbone() if self.slot.backbone is not None else None
            grid = getattr(backbone, "token_grid", None)
            p = self.num_prefix_tokens
            if grid is None or out.ndim != 3 or out.shape[1] != p + grid[0] * grid[1]:
                raise ValueError(
                    f"Cloud-Adapter expects (B, {p} + h*w, C) tokens with (h, w) = backbone.token_grid ({grid}), "
                    f"got {tuple(out.shape)}"
                )
            prefix, patches = out[:, :p], out[:, p:]
        else:
            grid = out.shape[1:3]
            prefix, patches = None, out.flatten(1, 2)
        if context.shape[0] != out.shape[0]:
            raise ValueError(f"context batch {context.shape[0]} != token batch {out.shape[0]}")
        ctx = F.interpolate(context, size=tuple(grid), mode="bilinear", align_corners=False)
        ctx = ctx.flatten(2).transpose(1, 2).to(patches.dtype)  # (B, h * w, D)
        patches = patches + self.adapter(patches, ctx)
        if prefix is None:
            return patches.unflatten(1, tuple(grid))
        return torch.cat([prefix, patches], dim=1)
