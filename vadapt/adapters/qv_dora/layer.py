"""The QV-DoRA layer: DoRA on the query and value row blocks of one fused ``qkv`` Linear.

MapSAM (Xia et al., 2024, "MapSAM: Adapting Segment Anything Model for Automated Feature Detection in Historical
Maps", arXiv:2411.06971) adapts SAM's image encoder with rank-4 DoRA (Liu et al., 2024, "DoRA:
Weight-Decomposed Low-Rank Adaptation", arXiv:2402.09353) on the query and value projections only. SAM (and
SAM 2's Hiera, and timm ViTs) compute q, k and v with ONE fused ``nn.Linear`` whose weight ``W`` is
``(3 d_out, d_in)`` with rows ``[W_q | W_k | W_v]`` (each ``(d_out, d_in)``). peft adapts whole modules, so it
cannot put DoRA on two row blocks of one Linear (its ``target_modules`` select modules, and its DoRA magnitude
would cover all ``3 d_out`` rows, k included); hence this small layer of our own.

For each adapted slice ``s`` (default ``q`` and ``v``) with frozen rows ``W_s`` ``(d_out, d_in)`` and bias ``b_s``:

* LoRA factors ``A_s`` ``(r, d_in)`` (kaiming-uniform, peft's init) and ``B_s`` ``(d_out, r)`` (zeros);
* a DoRA magnitude ``m_s`` ``(d_out,)``, initialised to the row norms ``||W_s||`` (one per output feature);
* the adapted rows (DoRA paper Eq. 5, norm over each output row, ``c = lora_alpha / r``)::

      W_s' = m_s / ||W_s + c B_s A_s|| * (W_s + c B_s A_s)          (d_out, d_in)

  with the norm detached from the gradient (DoRA paper Sec. 4.3; peft's ``DoraLinearLayer`` does the same).
  ``use_dora=False`` drops the magnitude: ``W_s' = W_s + c B_s A_s`` (plain LoRA on the slice).

The forward follows peft's DoRA (``result = base(x) + dora_delta``): the frozen layer runs once, ``y = W x + b``
``(..., 3 d_out)``, and for each adapted slice, with ``g_s = m_s / ||W_s + c B_s A_s||`` ``(d_out,)``,

      y_s' = y_s + (g_s - 1) * (y_s - b_s) + g_s * c * B_s A_s x            (..., d_out)

which equals ``W_s' x + b_s``. The unadapted slices (k by default) are the frozen layer's output itself, so they
are bit-identical to it whatever the trained values are. At init ``B_s = 0`` and ``g_s = 1`` exactly, so the
layer is the frozen one bit for bit. ``merge()`` returns the plain fused ``nn.Linear`` with rows
``[W_q' | W_k | W_v']`` and the frozen bias.

Trainable parameters per layer: for each slice ``r (d_in + d_out) + d_out`` (DoRA) or ``r (d_in + d_out)``
(LoRA). On SAM ViT-B (12 blocks, ``d = 768``, r = 4, q and v): ``12 * 2 * (4 * 1536 + 768) = 165,888``, as the
official MapSAM code.

Deviations from the official MapSAM code (``sam_dora_image_encoder.py``, ``_DoRA_qkv``):

* MapSAM normalises the columns of each slice (``dim=0`` of the torch ``(out, in)`` weight), i.e. one magnitude
  per *input* feature, which only fits because its q / v slices are square; and it back-propagates through the
  norm. We use standard DoRA as in the paper and peft: one magnitude per *output* row, norm detached. This
  merges into a plain weight either way, matches the DoRA paper and peft (and ``LoraConfig(use_dora=True)``),
  and stays correct where the slices are not square (SAM 2 Hiera's stage-transition blocks, ``d_in -> 2 d_in``).
* MapSAM initialises the output-side factor ``N(0, 1/r)`` and the input-side factor to zero; we keep LoRA's and
  peft's convention (``A`` kaiming-uniform, ``B`` zero). Both start as the identity.
* MapSAM slices ``W[:d_in]`` / ``W[-d_in:]`` by the *input* width; we slice by ``out_features // 3``, which is
  the same on SAM's square projections and right on Hiera's widening ones.
* The row norm is clamped to the smallest positive float so an all-zero row gives ``g = 0`` instead of NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vadapt.adapters.layers import WeightAdapterLayer

from .config import QKV_SLICES


def qv_dora_parameter_count(d_out: int, d_in: int, r: int, num_slices: int = 2, use_dora: bool = True) -> int:
    """Trainable parameters on one fused ``(3 d_out, d_in)`` Linear: per slice ``r (d_in + d_out)`` (+ ``d_out``
    magnitudes with DoRA)."""
    return num_slices * (r * (d_in + d_out) + (d_out if use_dora else 0))


class QVDoraParameters(nn.Module):
    """The trainable part of one :class:`QVDoraLinear` (its own module, so its names start with ``adapter.``).

    Attributes:
        lora_A: per slice name, ``(r, d_in)`` (kaiming-uniform).
        lora_B: per slice name, ``(d_out, r)`` (zeros).
        lora_magnitude: per slice name, ``(d_out,)`` (the frozen row norms); empty without DoRA.
    """

    def __init__(self, weight: torch.Tensor, slices: Sequence[str], r: int, use_dora: bool, dtype: torch.dtype) -> None:
        super().__init__()
        d_out, d_in = weight.shape[0] // 3, weight.shape[1]
        kw = {"device": weight.device, "dtype": dtype}
        self.lora_A = nn.ParameterDict({s: nn.Parameter(torch.empty(r, d_in, **kw)) for s in slices})
        self.lora_B = nn.ParameterDict({s: nn.Parameter(torch.zeros(d_out, r, **kw)) for s in slices})
        for a in self.lora_A.values():
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # LoRA's / peft's init of A
        self.lora_magnitude = nn.ParameterDict()
        if use_dora:
            with torch.no_grad():
                rows = weight.detach().to(dtype).split(d_out)
                for s in slices:
                    norm = torch.linalg.vector_norm(rows[QKV_SLICES.index(s)], dim=1)  # (d_out,)
                    self.lora_magnitude[s] = nn.Parameter(norm)


class QVDoraLinear(WeightAdapterLayer):
    """A frozen fused ``qkv`` ``nn.Linear`` with DoRA (or LoRA) on some of its q / k / v row blocks.

    Shapes: input ``(..., d_in)`` -> output ``(..., 3 d_out)``, like ``base_layer`` (see the module docstring).

    Args:
        base_layer: the frozen fused Linear, weight ``(3 d_out, d_in)`` with rows ``[q | k | v]``; its
            parameters are neither copied nor changed.
        r: rank of each slice's update.
        scaling: factor ``c`` on the update (``lora_alpha / r``).
        slices: the row blocks to adapt, a subset of ``("q", "k", "v")``.
        use_dora: learn a per-row magnitude (DoRA) or not (LoRA).
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        r: int = 4,
        scaling: float = 1.0,
        slices: Sequence[str] = ("q", "v"),
        use_dora: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"QVDoraLinear wraps a fused qkv nn.Linear, got {type(base_layer).__name__}")
        shape = tuple(base_layer.weight.shape)
        if shape[0] % 3:
            raise ValueError(
                f"QVDoraLinear needs a fused qkv nn.Linear whose out_features is divisible by 3 (rows [q | k | v]), "
                f"got a weight of shape {shape}"
            )
        unknown = [s for s in slices if s not in QKV_SLICES]
        if not slices or unknown:
            raise ValueError(f"QVDoraLinear slices must be a non-empty subset of {list(QKV_SLICES)}, got {slices!r}")
        if r < 1:
            raise ValueError(f"QVDoraLinear r must be >= 1, got {r}")
        self.base_layer = base_layer
        self.d_out, self.d_in = shape[0] // 3, shape[1]
        self.r, self.scaling, self.use_dora = r, float(scaling), use_dora
        self.slices = tuple(s for s in QKV_SLICES if s in slices)
        dtype = torch.promote_types(base_layer.weight.dtype, torch.float32)  # adapter kept in float32 at least
        self.adapter = QVDoraParameters(base_layer.weight, self.slices, r, use_dora, dtype)


    @property
    def in_features(self) -> int:
        """``d_in``, the wrapped Linear's."""
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        """``3 d_out``, the wrapped Linear's."""
        return self.base_layer.out_features

    def _rows(self, s: str) -> slice:
        i = QKV_SLICES.index(s)
        return slice(i * self.d_out, (i + 1) * self.d_out)

    def _directional(self, s: str) -> torch.Tensor:
        """``W_s + c B_s A_s`` ``(d_out, d_in)`` in the adapter's dtype (differentiable in A and B)."""
        a, b = self.adapter.lora_A[s], self.adapter.lora_B[s]
        return self.base_layer.weight[self._rows(s)].to(a.dtype) + self.scaling * (b @ a)

    def magnitude_scale(self, s: str) -> torch.Tensor:
        """``g_s = m_s / ||W_s + c B_s A_s||`` ``(d_out,)``, the norm detached (DoRA Sec. 4.3, as peft)."""
        with torch.no_grad():
            norm = torch.linalg.vector_norm(self._directional(s), dim=1)
            norm = norm.clamp_min(torch.finfo(norm.dtype).tiny)
        return self.adapter.lora_magnitude[s] / norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(..., d_in)`` -> ``(..., 3 d_out)``: the frozen output with the adapted slices replaced."""
        base = self.base_layer
        out = base(x)  # (..., 3 d_out); unadapted slices are returned as they are
        chunks = list(out.split(self.d_out, dim=-1))
        for s in self.slices:
            i = QKV_SLICES.index(s)
            a, b = self.adapter.lora_A[s], self.adapter.lora_B[s]
            update = F.linear(F.linear(x.to(a.dtype), a), b).to(out.dtype) * self.scaling  # (..., d_out)
            if self.use_dora:
                g = self.magnitude_scale(s).to(out.dtype)  # (d_out,)
                frozen = chunks[i] if base.bias is None else chunks[i] - base.bias[self._rows(s)].to(out.dtype)
                chunks[i] = chunks[i] + (g - 1) * frozen + g * update
            else:
                chunks[i] = chunks[i] + update
        return torch.cat(chunks, dim=-1).to(out.dtype)  # the frozen layer's dtype (also under autocast)

    def adapted_weight(self) -> torch.Tensor:
        """The fused weight this layer computes with, ``(3 d_out, d_in)`` in the base weight's dtype: rows
        ``W_s'`` for the adapted slices, the frozen rows (bit for bit) for the others."""
        weight = self.base_layer.weight
        rows = list(weight.split(self.d_out))
        for s in self.slices:
            adapted = self._directional(s)
            if self.use_dora:
                adapted = self.magnitude_scale(s)[:, None] * adapted
            rows[QKV_SLICES.index(s)] = adapted.to(weight.dtype)
        return torch.cat(rows, dim=0)

    def num_adapter_parameters(self) -> int:
        """Adapter parameters of this layer (all trainable): ``r (d_in + d_out)`` per slice, ``+ d_out`` with DoRA."""
        return sum(p.numel() for p in self.adapter.parameters())

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """A plain frozen ``nn.Linear`` computing what this layer computes now (weight :meth:`adapted_weight`)."""
        base = self.base_layer
        merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                           device=base.weight.device, dtype=base.weight.dtype)
        merged.weight.copy_(self.adapted_weight())
        if base.bias is not None:
            merged.bias.copy_(base.bias)
        merged.requires_grad_(False)
        return merged

    def extra_repr(self) -> str:
        """Slices, rank, scaling and ``use_dora`` for the module's ``repr``."""
        return f"slices={self.slices}, r={self.r}, scaling={self.scaling:g}, use_dora={self.use_dora}"
