"""MV-Adapter layers (Huang et al., "MV-Adapter: Multi-view Consistent Image Generation Made Easy", 2024,
arXiv:2412.03632): the decoupled self-attention processor installed on every ``attn1`` of a diffusers UNet.

Shapes: ``b`` objects, ``N`` views each, ``B = b * N`` images in the UNet batch, ``L = H * W`` tokens of a
square feature map, ``C`` token width, ``h`` heads of width ``d = C / h``; reference features ``(b or B, Lr, C)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class MVAdapterState:
    """Run-time state shared by all processors of one adapted UNet (plain Python, not saved).

    Attributes:
        num_views: views per object ``N`` of the current batch.
        trained_num_views: the view count the adapter was built / trained for.
        mv_scale / ref_scale: branch weights.
        enabled: ``False`` runs the base self-attention only (the reference "write" pass).
        record: when a dict, every processor stores its input ``(B, L, C)`` under its name ("write" pass).
        reference: name -> reference features ``(b or B, Lr, C)`` read by the ref branch ("read" pass).
    """

    num_views: int
    trained_num_views: int
    mv_scale: float = 1.0
    ref_scale: float = 1.0
    enabled: bool = True
    record: dict[str, torch.Tensor] | None = None
    reference: dict[str, torch.Tensor] | None = field(default=None, repr=False)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, L, C)`` -> ``(B, h, L, d)``."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def row_mv_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_views: int, heads: int) -> torch.Tensor:
    """Row-wise multi-view attention (the official ``DecoupledMVRowSelfAttnProcessor2_0`` branch).

    ``q, k, v``: ``(B, L, C)`` with ``B = b * N`` and ``L = H * W``, ``H = W = isqrt(L)``. Each query token of row
    ``r`` of view ``n`` attends to the ``N * W`` tokens of row ``r`` in all views of its object (itself included).
    All queries of one row share those keys, so the ``N`` views' rows are attended in one call of shape
    ``(b * H, h, N * W, d)`` instead of repeating the keys per view. Returns ``(B, L, C)``.
    """
    bn, length, c = q.shape
    if bn % num_views:
        raise ValueError(
            f"MV-Adapter expects the batch to hold whole objects of {num_views} views each, but got a batch of "
            f"{bn} images (call set_num_views(backbone, n) to change the view count)."
        )
    side = math.isqrt(length)
    if side * side != length:
        raise ValueError(f"MV-Adapter's row-wise attention needs square feature maps, but got {length} tokens; "
                         f"use square images (the official code assumes H == W)")
    b, d = bn // num_views, c // heads

    def rows(x: torch.Tensor) -> torch.Tensor:  # (B, L, C) -> (b * H, h, N * W, d)
        x = x.reshape(b, num_views, side, side, heads, d).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b * side, heads, num_views * side, d)

    out = F.scaled_dot_product_attention(rows(q), rows(k), rows(v))  # (b * H, h, N * W, d)
    out = out.reshape(b, side, heads, num_views, side, d).permute(0, 3, 1, 4, 2, 5)
    return out.reshape(bn, length, c)


def _projections(query_dim: int, inner_dim: int, device: torch.device | None, dtype: torch.dtype | None) -> tuple:
    q, k, v = (nn.Linear(query_dim, inner_dim, bias=False, device=device, dtype=dtype) for _ in range(3))
    out = nn.ModuleList([nn.Linear(inner_dim, query_dim, bias=True, device=device, dtype=dtype), nn.Dropout(0.0)])
    return q, k, v, out


class MVAttnProcessor(nn.Module):
    """Decoupled multi-view (+ reference) self-attention processor for one ``attn1``.

    ``out = base(x) + (mv_scale * to_out_mv(MV_row(x)) + ref_scale * to_out_ref(REF(x, ref))) / rescale`` where
    ``base`` is the attention's original processor (``to_out(SA(x))``, so a zero-initialised adapter reproduces
    the base bit for bit), ``x`` ``(B, L, C)`` the normed block input, ``MV_row`` :func:`row_mv_attention` on
    ``to_{q,k,v}_mv(x)`` and ``REF`` plain attention of ``to_q_ref(x)`` on ``to_{k,v}_ref(ref)``. Parameter
    names follow the official processor, so the module's state dict keys are the official file's keys
    (``<attn path>.processor.to_q_mv.weight``, ..., ``to_out_mv.0.bias``; ``_ref`` alike).

    Args:
        query_dim / inner_dim: ``attn1``'s token width and attention width (``C`` for SD UNets).
        name: the processor's path in the UNet (``"down_blocks.0....attn1.processor"``), key of reference features.
        state: the shared :class:`MVAdapterState`.
        base_processor: the processor ``attn1`` had before injection.
        use_ref: build the reference branch.
    """

    def __init__(self, query_dim: int, inner_dim: int, name: str, state: MVAdapterState, base_processor: object,
                 use_ref: bool = False, device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.name = name
        self.state = state
        self.base_processor = base_processor
        self.use_ref = use_ref
        self.to_q_mv, self.to_k_mv, self.to_v_mv, self.to_out_mv = _projections(query_dim, inner_dim, device, dtype)
        if use_ref:
            self.to_q_ref, self.to_k_ref, self.to_v_ref, self.to_out_ref = _projections(
                query_dim, inner_dim, device, dtype)

    @torch.no_grad()
    def init_from(self, attn: nn.Module, copy_attn_weights: bool = True, zero_init_out: bool = True) -> None:
        """Official init: copy ``attn.to_{q,k,v}`` / ``to_out.0`` weights into each branch; zero the out projections."""
        for suffix in ("_mv", "_ref") if self.use_ref else ("_mv",):
            if copy_attn_weights:
                for base in ("to_q", "to_k", "to_v"):
                    getattr(self, base + suffix).weight.copy_(getattr(attn, base).weight)
                out, src = getattr(self, "to_out" + suffix)[0], attn.to_out[0]
                out.weight.copy_(src.weight)
                if src.bias is not None:
                    out.bias.copy_(src.bias)
            if zero_init_out:
                getattr(self, "to_out" + suffix)[0].weight.zero_()
                getattr(self, "to_out" + suffix)[0].bias.zero_()

    def _branch_input(self, attn: nn.Module, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        if x.ndim != 3:
            raise ValueError(f"MV-Adapter's processor takes (B, L, C) tokens, got a {x.ndim}-d input on {self.name}")
        if getattr(attn, "spatial_norm", None) is not None:
            x = attn.spatial_norm(x, temb)
        if getattr(attn, "group_norm", None) is not None:
            x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
        return x

    def mv_branch(self, attn: nn.Module, x: torch.Tensor, num_views: int | None = None) -> torch.Tensor:
        """``to_out_mv(MV_row(x))`` ``(B, L, C)`` for the normed input ``x`` ``(B, L, C)`` (scale not applied)."""
        nv = self.state.num_views if num_views is None else num_views
        out = row_mv_attention(self.to_q_mv(x), self.to_k_mv(x), self.to_v_mv(x), nv, attn.heads)
        return self.to_out_mv[1](self.to_out_mv[0](out.to(x.dtype)))

    def ref_branch(self, attn: nn.Module, x: torch.Tensor, ref: torch.Tensor, num_views: int | None = None
                   ) -> torch.Tensor:
        """``to_out_ref(REF(x, ref))`` ``(B, L, C)``; ``ref`` ``(b, Lr, C)`` (repeated per view) or ``(B, Lr, C)``."""
        nv = self.state.num_views if num_views is None else num_views
        if ref.shape[0] != x.shape[0]:
            if ref.shape[0] * nv != x.shape[0]:
                raise ValueError(f"MV-Adapter reference features for {self.name} have batch {ref.shape[0]}, but the "
                                 f"UNet batch is {x.shape[0]} images of {nv} views each")
            ref = ref.repeat_interleave(nv, dim=0)
        ref = ref.to(x.dtype)
        out = F.scaled_dot_product_attention(_heads(self.to_q_ref(x), attn.heads),
                                             _heads(self.to_k_ref(ref), attn.heads),
                                             _heads(self.to_v_ref(ref), attn.heads))
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1).to(x.dtype)
        return self.to_out_ref[1](self.to_out_ref[0](out))

    def forward(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs
                ) -> torch.Tensor:
        """Called by ``attn1`` as its processor: ``hidden_states`` ``(B, L, C)`` -> ``(B, L, C)``."""
        state = self.state
        if state.record is not None:
            state.record[self.name] = hidden_states.detach()
        out = self.base_processor(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if not state.enabled:
            return out
        x = self._branch_input(attn, hidden_states, temb)
        extra = self.mv_branch(attn, x) * state.mv_scale
        if self.use_ref:
            if state.reference is None or self.name not in state.reference:
                raise ValueError(f"This MV-Adapter has a reference branch (use_ref=True) but no reference features "
                                 f"were given for {self.name}: run the UNet inside use_reference(backbone, feats)")
            extra = extra + self.ref_branch(attn, x, state.reference[self.name]) * state.ref_scale
        return out + extra / attn.rescale_output_factor

    def extra_repr(self) -> str:
        """``name`` and ``use_ref`` for the module's ``repr``."""
        return f"name={self.name!r}, use_ref={self.use_ref}"
