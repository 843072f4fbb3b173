"""Earth-Adapter layers (Hu et al., 2025, arXiv:2504.06220): frequency split, experts, router, block wrapper.

What the official code does (``earth_adapter/models/backbones/earth_adapter.py`` and ``moa_dino.py`` of
github.com/VisionXLab/Earth-Adapter), and what we do:

* After every DINOv2 block, the patch tokens (class token passed through untouched) are refined:
  ``x + s_l * delta``. We wrap each selected block and do the same; all ``num_prefix_tokens`` leading tokens
  (class, registers) pass through untouched. ``grid`` layout backbones (SAM, Hiera) have no prefix tokens.
* ``delta`` in a frequency block is ``sum_e g_e * E_e(x_e)`` with ``x_e`` the map, its low- and its
  high-frequency part, ``E_e`` a ``Linear(C, r) - ReLU - Linear(r, C)`` expert and ``g = softmax(Linear(C, 3)(x))``
  a per-token router on the (unsplit) tokens; elsewhere ``delta = E_spatial(x)``. Same here.
* The split: ``fft2`` of the ``(B, C, h, w)`` map, ``fftshift``, a centred box mask of half-width
  ``k = floor(min(h, w) * cutoff_ratio / 2)`` (shifted indices ``[c - k, c + k)``, i.e. frequencies ``-k..k-1``),
  ``ifft2`` of the masked spectra and ``.real``. The box is one bin wider on the negative side, so the
  ``.real`` turns it into the symmetric filter ``(M(f) + M(-f)) / 2`` (weight 1 inside ``|f| < k``, 1/2 on most
  of the ``|f| = k`` ring). We apply exactly that real, Hermitian-symmetric filter with ``rfft2`` / ``irfft2``
  (same result, half the spectrum); high = the complementary filter ``1 - M_sym``, so low + high = x.

Deviations: the grid comes from the backbone (official: hard-coded 32 x 32, i.e. 512 px at patch 16); the
cut-off is floored at ``k = 1`` so the zero frequency is always low (official: ``k = 0`` below
``min(h, w) * cutoff_ratio < 2`` and an empty low band); up-projections start at zero (official: PyTorch's
default init, only ``s = 0.1`` keeps the start near the frozen model); FFTs run in float32 under autocast.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from vadapt.adapters.layers import AdapterLayer


def cutoff_index(h: int, w: int, cutoff_ratio: float) -> int:
    """Half-width ``k`` of the low-frequency box on an ``h x w`` grid (official formula, floored at 1)."""
    return max(1, math.floor(min(h, w) * cutoff_ratio / 2))


def _box(n: int, k: int, device: torch.device | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-axis indicator of the box ``[-k, k - 1]`` on FFT bins (in ``fft`` order) and on the negated bins."""
    bins = torch.arange(n, device=device)
    signed = (bins + n // 2) % n - n // 2  # fftshift's signed frequency of each bin: -(n//2) .. n - 1 - n//2
    inside = (signed >= -k) & (signed <= k - 1)
    negated = inside[(-bins) % n]  # the indicator at -f
    return inside.float(), negated.float()


def low_pass_mask(h: int, w: int, cutoff_ratio: float, device: torch.device | None = None) -> torch.Tensor:
    """The low-band filter on the ``rfft2`` half-spectrum, shape ``(h, w // 2 + 1)``, values in {0, 1/2, 1}.

    ``M_sym(f) = (M(f) + M(-f)) / 2`` with ``M`` the official centred box (frequencies ``-k..k-1`` on both
    axes); this is what ``Re(ifft2(fft2(x) * M))`` applies to a real map ``x``.
    """
    k = cutoff_index(h, w, cutoff_ratio)
    row, row_neg = _box(h, k, device)
    col, col_neg = _box(w, k, device)
    mask = 0.5 * (row[:, None] * col[None, :] + row_neg[:, None] * col_neg[None, :])
    return mask[:, : w // 2 + 1]


def split_frequencies(x: torch.Tensor, cutoff_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Split maps ``(..., h, w)`` into low- and high-frequency parts of the same shape; ``low + high == x``.

    Computed in float32 (half-precision FFTs need power-of-two sizes on CUDA) and returned in ``x.dtype``.
    """
    h, w = x.shape[-2:]
    spectrum = torch.fft.rfft2(x.float(), norm="ortho")
    low_mask = low_pass_mask(h, w, cutoff_ratio, x.device)
    masks = torch.stack([low_mask, 1.0 - low_mask])  # (2, h, w // 2 + 1)
    parts = torch.fft.irfft2(spectrum.unsqueeze(-3) * masks, s=(h, w), norm="ortho")  # (..., 2, h, w)
    return parts[..., 0, :, :].to(x.dtype), parts[..., 1, :, :].to(x.dtype)


class Expert(nn.Module):
    """``up(relu(down(x)))`` on the channel axis: ``(..., C) -> (..., C)`` through ``rank`` hidden units."""

    def __init__(self, dim: int, rank: int, zero_init: bool) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank)
        self.act = nn.ReLU()
        self.up = nn.Linear(rank, dim)
        if zero_init:
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., C)`` -> ``(..., C)``; zero at init with ``zero_init``."""
        return self.up(self.act(self.down(x)))


class EarthAdapter(nn.Module):
    """The per-block adapter: maps ``(B, h, w, C) -> (B, h, w, C)``, the scaled update ``s * delta``.

    With ``frequency=False`` only the spatial expert exists: ``s * E_spatial(x)``.
    """

    def __init__(self, dim: int, rank: int, scale: float, cutoff_ratio: float, frequency: bool = True,
                 zero_init: bool = True) -> None:
        super().__init__()
        self.cutoff_ratio = cutoff_ratio
        self.frequency = frequency
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.spatial = Expert(dim, rank, zero_init)
        if frequency:
            self.low = Expert(dim, rank, zero_init)
            self.high = Expert(dim, rank, zero_init)
            self.router = nn.Linear(dim, 3)

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token weights of the (spatial, low, high) experts: ``(..., C) -> (..., 3)``, summing to 1."""
        return torch.softmax(self.router(x), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch map ``(B, h, w, C)`` -> update ``s * delta`` ``(B, h, w, C)``; zero at init with ``zero_init``."""
        delta = self.spatial(x)
        if self.frequency:
            low, high = split_frequencies(x.permute(0, 3, 1, 2), self.cutoff_ratio)
            gates = self.route(x).unsqueeze(-1)  # (B, h, w, 3, 1)
            experts = torch.stack([delta, self.low(low.permute(0, 2, 3, 1)), self.high(high.permute(0, 2, 3, 1))], -2)
            delta = (gates * experts).sum(-2)
        return self.scale.to(delta.dtype) * delta


class TokenGrid:
    """A small callable returning ``backbone.token_grid``: a plain (non-module) reference, so no module cycle.

    ``copy.deepcopy`` of the backbone copies it along and points it at the copy.
    """

    def __init__(self, backbone: nn.Module) -> None:
        self.backbone = backbone

    def __call__(self) -> tuple[int, int] | None:
        """The backbone's ``token_grid`` ``(h, w)`` of its latest forward, or ``None`` before the first one."""
        return self.backbone.token_grid


class EarthAdaptedBlock(AdapterLayer):
    """Wraps a frozen block as ``base_layer`` and adds the Earth-Adapter update to its output.

    ``"tokens"`` layout: ``(B, N, C) -> (B, N, C)``; the last ``h * w`` tokens are folded to the ``(h, w)`` grid
    that ``grid()`` returns, the ``num_prefix_tokens`` first ones pass through. ``"grid"`` layout:
    ``(B, H, W, C) -> (B, H', W', C')``, the adapter sized for the block's output width ``C'``.
    """

    def __init__(self, base_layer: nn.Module, adapter: EarthAdapter, layout: str, num_prefix_tokens: int = 0,
                 grid: Callable[[], tuple[int, int] | None] | None = None) -> None:
        super().__init__()
        if layout not in ("tokens", "grid"):
            raise ValueError(f"EarthAdaptedBlock supports 'tokens' and 'grid' layouts, got {layout!r}")
        if layout == "tokens" and grid is None:
            raise ValueError("a 'tokens' layout block needs `grid`, a callable returning the (h, w) token grid")
        self.base_layer = base_layer
        self.adapter = adapter
        self.layout = layout
        self.num_prefix_tokens = num_prefix_tokens
        self.grid = grid

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """The block's output plus the adapter update on its patch tokens (shapes in the class docstring). Raises
        ``ValueError`` when ``"tokens"`` output does not fold into the backbone's ``token_grid``."""
        out = self.base_layer(x, *args, **kwargs)
        if self.layout == "grid":
            return out + self.adapter(out)
        grid = self.grid()
        p = self.num_prefix_tokens
        if grid is None or out.shape[1] - p != grid[0] * grid[1]:
            raise ValueError(
                f"Earth-Adapter cannot fold {out.shape[1]} tokens ({p} prefix) into the backbone's token grid "
                f"{grid}; the backbone must set token_grid in its forward"
            )
        b, _, c = out.shape
        patches = out[:, p:]
        delta = self.adapter(patches.reshape(b, grid[0], grid[1], c)).reshape(b, -1, c)
        return torch.cat([out[:, :p], patches + delta], dim=1)
