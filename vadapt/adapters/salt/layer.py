"""The SALT layer (Elsayed et al., 2025, "SALT: Singular Value Adaptation with Low-Rank Transformation",
arXiv:2503.16055).

For a frozen ``nn.Linear`` with weight ``W`` ``(out, in)``, take once the thin SVD ``W = U diag(s) Vh`` with
``U`` ``(out, k)``, ``s`` ``(k,)``, ``Vh`` ``(k, in)``, ``k = min(out, in)``, ``s`` sorted descending. Split at
``r``: the *top* directions ``U_t = U[:, :r]``, ``s_t``, ``Vh_t = Vh[:r]`` and the *residual* ones ``U_o = U[:, r:]``,
``Vh_o = Vh[r:]``. SALT trains

* a scale ``alpha`` ``(r,)`` (init 1) and a shift ``beta`` ``(r,)`` (init 0) of the top singular values,
  ``s_t' = relu(alpha * s_t + beta)`` (paper Eq. for the scaled/shifted singular values; the ReLU keeps them
  non-negative, as in the official code);
* a LoRA in the residual singular basis, ``B`` ``(k - r, lora_r)`` (init 0) and ``A`` ``(lora_r, k - r)``
  (kaiming-uniform), so the residual block of the singular-value matrix becomes ``diag(s_o) + c * B A``.

The adapted weight is ``W' = W + dW`` with

    dW = U_t diag(s_t' - s_t) Vh_t  +  c * U_o (B A) Vh_o          (out, in)

which is what the official ``U relu(S') Vh`` reconstruction equals (up to the deviation below) without
rebuilding the frozen part. At init ``s_t' = s_t`` and ``B = 0``, so ``dW`` is exactly zero: the layer is the
frozen one bit for bit. ``merge()`` returns the plain ``nn.Linear`` with weight ``W + dW``.

Stored: the frozen ``base_layer`` (its weight and bias, untouched), and non-persistent float32 (or float64)
buffers ``U`` ``(out, k)``, ``Vh`` ``(k, in)`` and ``s_top`` ``(r,)``: the residual singular values are not
needed. The buffers are recomputed from the frozen weight at injection, so they are not saved in checkpoints
(an adapter checkpoint holds only ``adapter.*``). Extra memory per matrix: ``(out + in) * k`` floats.

Deviations from the paper / official code:

* The official code applies the ReLU elementwise to the whole ``k x k`` modified singular-value matrix, so also
  to every entry of ``diag(s_o) + X Y`` (off-diagonal LoRA entries below 0 are cut, which is no longer a
  low-rank update). Here the ReLU acts on the scaled/shifted top singular values only; the residual LoRA is
  linear, as in LoRA.
* The official SAM (ViT) code initialises both LoRA factors with ``N(0, 0.01^2)`` (not the identity at init);
  its SAM 2 code (and this layer) uses kaiming ``A`` and zero ``B``.
* The official forward also returns a Frobenius-norm regulariser (weight 0 in the released config); here it is
  available as :meth:`SaltLinear.regularization` but not added to any loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vadapt.adapters.layers import WeightAdapterLayer


class SaltParameters(nn.Module):
    """The trainable part of one SALT layer (kept in its own module so checkpoints hold only these).

    Attributes:
        scale: ``(r,)`` multiplies the top singular values (init 1).
        shift: ``(r,)`` added to them (init 0).
        lora_A: ``(lora_r, k - r)`` (kaiming-uniform) or ``None`` when there is no residual LoRA.
        lora_B: ``(k - r, lora_r)`` (zeros) or ``None``.
    """

    def __init__(self, r: int, residual: int, lora_r: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(r)) if r else None
        self.shift = nn.Parameter(torch.zeros(r)) if r else None
        if residual and lora_r:
            self.lora_A = nn.Parameter(torch.empty(lora_r, residual))
            self.lora_B = nn.Parameter(torch.zeros(residual, lora_r))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # LoRA's / peft's init of A
        else:
            self.lora_A = self.lora_B = None


def salt_parameter_count(out_features: int, in_features: int, r: int, lora_r: int) -> int:
    """Trainable parameters SALT adds to one ``(out, in)`` weight: ``2 r + 2 lora_r (k - r)``, ``k = min(out, in)``
    (no LoRA when ``k == r``)."""
    k = min(out_features, in_features)
    residual = k - r
    return 2 * r + (2 * lora_r * residual if residual and lora_r else 0)


class SaltLinear(WeightAdapterLayer):
    """A frozen ``nn.Linear`` adapted by SALT (see the module docstring for the maths and what is stored).

    Shapes: input ``(..., in)`` -> output ``(..., out)``, like ``base_layer``.

    Args:
        base_layer: the frozen Linear; its parameters are neither copied nor changed.
        r: number of top singular values to scale and shift (``0 <= r <= min(out, in)``).
        lora_r: rank of the residual LoRA (0: none).
        lora_scaling: factor ``c`` on the LoRA term.
    """

    def __init__(self, base_layer: nn.Linear, r: int, lora_r: int, lora_scaling: float = 1.0) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"SaltLinear wraps nn.Linear, got {type(base_layer).__name__}")
        weight = base_layer.weight
        k = min(weight.shape)
        shape = tuple(weight.shape)
        if not 0 <= r <= k:
            raise ValueError(f"SALT r={r} must be in [0, min(out, in)={k}] for a weight of shape {shape}")
        if salt_parameter_count(*shape, r, lora_r) == 0:
            raise ValueError(f"SALT with r={r} and lora_r={lora_r} trains nothing on a weight of shape {shape}")
        self.base_layer = base_layer
        self.r, self.lora_r, self.lora_scaling = r, lora_r, lora_scaling
        # One SVD, in float64 for accuracy; kept in float32 (or the weight's float64).
        keep = torch.promote_types(weight.dtype, torch.float32)
        with torch.no_grad():
            u, s, vh = torch.linalg.svd(weight.detach().to(torch.float64), full_matrices=False)
        self.register_buffer("U", u.to(keep), persistent=False)  # (out, k)
        self.register_buffer("Vh", vh.to(keep), persistent=False)  # (k, in)
        self.register_buffer("s_top", s[:r].to(keep), persistent=False)  # (r,)
        self.adapter = SaltParameters(r, k - r, lora_r).to(device=weight.device)


    def delta_weight(self) -> torch.Tensor:
        """``dW`` ``(out, in)`` in the buffers' dtype: zero at init (see the module docstring)."""
        p, r = self.adapter, self.r
        left, right = [], []  # dW = cat(left, 1) @ cat(right, 0)
        if p.scale is not None:
            new_top = F.relu(p.scale * self.s_top + p.shift)  # (r,)
            left.append(self.U[:, :r] * (new_top - self.s_top))  # (out, r)
            right.append(self.Vh[:r])  # (r, in)
        if p.lora_A is not None:
            left.append((self.U[:, r:] @ p.lora_B) * self.lora_scaling)  # (out, lora_r)
            right.append(p.lora_A @ self.Vh[r:])  # (lora_r, in)
        return torch.cat(left, 1) @ torch.cat(right, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in)`` -> ``(..., out)`` with weight ``W + dW``, rebuilt at every call (exactly ``W`` at init)."""
        weight = self.base_layer.weight
        adapted = weight + self.delta_weight().to(weight.dtype)
        return F.linear(x, adapted, self.base_layer.bias)

    def regularization(self) -> torch.Tensor:
        """The official code's regulariser: ``||diag(s_t' - s_t)||_F + c ||B A||_F`` (a scalar; not used by vadapt)."""
        p = self.adapter
        total = self.s_top.new_zeros(())
        if p.scale is not None:
            total = total + torch.linalg.vector_norm(F.relu(p.scale * self.s_top + p.shift) - self.s_top)
        if p.lora_A is not None:
            total = total + self.lora_scaling * torch.linalg.matrix_norm(p.lora_B @ p.lora_A)
        return total

    def num_adapter_parameters(self) -> int:
        """Adapter parameters of this layer (all trainable), as :func:`salt_parameter_count`."""
        return sum(p.numel() for p in self.adapter.parameters())

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """A plain frozen ``nn.Linear`` computing what this layer computes now (weight ``W + dW``)."""
        base = self.base_layer
        merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                           device=base.weight.device, dtype=base.weight.dtype)
        merged.weight.copy_(base.weight + self.delta_weight().to(base.weight.dtype))
        if base.bias is not None:
            merged.bias.copy_(base.bias)
        merged.requires_grad_(False)
        return merged

    def extra_repr(self) -> str:
        """``r``, ``lora_r`` and ``lora_scaling`` for the module's ``repr``."""
        return f"r={self.r}, lora_r={self.lora_r}, lora_scaling={self.lora_scaling:g}"
