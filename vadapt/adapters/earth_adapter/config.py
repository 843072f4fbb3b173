"""Earth-Adapter configuration."""

from __future__ import annotations

from dataclasses import dataclass

from vadapt.adapters.base import AdapterConfig


@dataclass
class EarthAdapterConfig(AdapterConfig):
    """Earth-Adapter (Hu et al., 2025, arXiv:2504.06220): a frequency-guided mixture of adapters per block.

    After each selected block, the block output ``x`` (the patch tokens folded to a ``(B, h, w, C)`` map) gets
    ``x + s * sum_e g_e(x) * E_e(x_e)``: three bottleneck experts ``E_e`` (``C -> adapter_dim -> C``, ReLU) see
    the map itself (spatial expert), its low-frequency part and its high-frequency part (a 2-D DFT split at
    ``cutoff_ratio``), and a per-token softmax router ``g = softmax(Linear(C, 3)(x))`` mixes them. ``s`` is one
    learnable scalar per block. Blocks in ``layers`` but not in ``fft_layers`` get the spatial expert alone:
    ``x + s * E_spatial(x)``.

    Defaults follow the official code (github.com/VisionXLab/Earth-Adapter,
    ``earth_adapter/models/backbones/earth_adapter.py``): ``dim=64``, ``cutoff_ratio=0.3``, ``scale=0.1``,
    every block adapted. Their per-dataset configs (``configs/{SS,DA,DG}/dinov2/earth_adapter/*.py``) use
    ``adapter_dim`` 16-64, ``cutoff_ratio`` 0.2 or 0.3 and the frequency mixture in only 3 or 6 blocks (the
    first or the last ones), e.g. DG Potsdam->Vaihingen: ``adapter_dim=24, fft_layers=[18, ..., 23]``.

    Trainable parameters per block of width ``C`` with ``r = adapter_dim``: ``E = 2Cr + r + C`` per expert;
    ``3E + 3C + 3 + 1`` for a frequency block, ``E + 1`` for a spatial-only one. On DINOv2 ViT-L/14 (24 x 1024)
    the defaults train 9,589,344 (the official module with every block in ``fft_layer`` holds the same number).

    Attributes:
        adapter_dim: bottleneck width of every expert (official ``dim``).
        cutoff_ratio: ``k = max(1, floor(min(h, w) * cutoff_ratio / 2))``; the low band is the centred
            ``2k x 2k`` box of frequencies ``[-k, k - 1]`` on each axis of the ``h x w`` token grid, symmetrised
            as the official ``.real`` of the inverse FFT makes it (see ``layer.low_pass_mask``). Must be in
            ``(0, 1]``.
        adapter_scale: initial value of each block's learnable scale ``s`` (official 0.1).
        layers: block indices that get an adapter (negative counts from the end); ``None`` = every block.
        fft_layers: block indices (a subset of ``layers``) whose adapter is the three-expert frequency mixture;
            ``None`` = every adapted block (the paper's description); ``[]`` = spatial experts only (the
            official constructor's default, which turns Earth-Adapter into a plain sequential adapter).
        zero_init: start each expert's up-projection at zero so the adapted backbone starts exactly as the
            frozen one (our default; deviation). ``False`` keeps PyTorch's default Linear init for every layer,
            as the official code does (there only ``s = 0.1`` keeps the start near the frozen model).
        target_modules, exclude_modules: unused (Earth-Adapter wraps whole blocks); choose blocks with ``layers``.

    Deviations from the official code (all listed in ``layer.py`` too): the token grid is read from the
    backbone (official: a fixed 32 x 32 grid); the cut-off is floored at ``k = 1``; zero-initialised
    up-projections; experts and routers exist only where they are used (official: every block holds all three
    experts and a router even when it runs the spatial one alone); the ``with_token`` option (learnable tokens
    concatenated to the expert input, off in every official config) is not implemented.
    """

    adapter_dim: int = 64
    cutoff_ratio: float = 0.3
    adapter_scale: float = 0.1
    layers: list[int] | None = None
    fft_layers: list[int] | None = None
    zero_init: bool = True

    method = "earth_adapter"

    def __post_init__(self) -> None:
        if self.adapter_dim < 1:
            raise ValueError(f"EarthAdapterConfig.adapter_dim must be >= 1, got {self.adapter_dim}")
        if not 0.0 < self.cutoff_ratio <= 1.0:
            raise ValueError(f"EarthAdapterConfig.cutoff_ratio must be in (0, 1], got {self.cutoff_ratio}")
        for name in ("layers", "fft_layers"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, (str, bytes)) or not all(isinstance(i, int) for i in value)
            ):
                raise ValueError(f"EarthAdapterConfig.{name} must be a list of block indices or None, got {value!r}")
            if value is not None and len(set(value)) != len(value):
                raise ValueError(f"EarthAdapterConfig.{name} has repeated indices: {value!r}")
        if self.layers is not None and not self.layers:
            raise ValueError("EarthAdapterConfig.layers is empty: give block indices, or None for every block")
        if self.target_modules is not None or self.exclude_modules is not None:
            raise ValueError(
                "EarthAdapterConfig adapts whole blocks: choose them with `layers`, not target_modules"
            )
