"""Named spectral bands: matching input bands to a pretrained first layer, and selecting bands by name.

Pretrained image backbones see ``("red", "green", "blue")``. Multispectral inputs (Sentinel-2 has 13 bands,
Landsat 11) name their bands in the config. The pretrained filters of bands that the input has are kept
unchanged (re-ordered to the input's order); the other bands get new filters initialised by one of:

* ``"copy"``   -- the pretrained filter of the RGB band nearest in wavelength (NIR and SWIR take red);
* ``"mean"``   -- the mean of the pretrained RGB filters;
* ``"repeat"`` -- the RGB filters cycled over the new bands, then every filter scaled by ``3 / n_bands``
                  (timm's ``adapt_input_conv``); the only mode that rescales the pretrained part;
* ``"zero"``   -- zeros, so the new bands start with no influence.

A band asked for but absent from the data is an error, never zero-filled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import numpy as np
    import torch

RGB: tuple[str, ...] = ("red", "green", "blue")
BandInit = Literal["copy", "mean", "repeat", "zero"]

# Central wavelengths in nm (Sentinel-2 / Landsat common names, and Sentinel-2 band ids as aliases).
WAVELENGTH_NM: dict[str, float] = {
    "coastal": 443, "blue": 490, "green": 560, "red": 665, "rededge1": 705, "rededge2": 740,
    "rededge3": 783, "nir": 842, "nir08": 865, "watervapor": 945, "cirrus": 1375, "swir16": 1610,
    "swir22": 2190, "pan": 590, "lwir": 10900, "lwir11": 10900, "lwir12": 12000,
}
_S2_IDS = {
    "b01": "coastal", "b02": "blue", "b03": "green", "b04": "red", "b05": "rededge1", "b06": "rededge2",
    "b07": "rededge3", "b08": "nir", "b8a": "nir08", "b09": "watervapor", "b10": "cirrus", "b11": "swir16",
    "b12": "swir22",
}


def canonical(band: str) -> str:
    """Lowercase common name for a band (``"B04"`` -> ``"red"``)."""
    name = band.strip().lower()
    return _S2_IDS.get(name, name)


def check_bands(bands: Sequence[str]) -> tuple[str, ...]:
    """Canonical names (:func:`canonical`) of ``bands``, in order. Raises ``ValueError`` when empty or when two entries
    name the same band (``"B04"`` and ``"red"`` too)."""
    names = tuple(canonical(b) for b in bands)
    if not names:
        raise ValueError("bands must name at least one band")
    dupes = sorted({b for b in names if names.count(b) > 1})
    if dupes:
        raise ValueError(f"bands are named twice: {dupes} (in {list(bands)})")
    return names


def adapt_input_weight(
    weight: torch.Tensor,
    pretrained_bands: Sequence[str],
    bands: Sequence[str],
    init: BandInit = "copy",
) -> torch.Tensor:
    """Map a first-layer weight ``(O, len(pretrained_bands), *k)`` to ``(O, len(bands), *k)``.

    Bands present in ``pretrained_bands`` keep their filter bit for bit (except with ``init="repeat"``, which
    rescales everything as timm does).
    """
    import torch

    src = check_bands(pretrained_bands)
    dst = check_bands(bands)
    if weight.shape[1] != len(src):
        raise ValueError(f"weight has {weight.shape[1]} input channels but {len(src)} pretrained bands {src}")
    if src == dst:
        return weight.clone()
    out = torch.empty((weight.shape[0], len(dst), *weight.shape[2:]), dtype=weight.dtype, device=weight.device)
    extra = 0
    for i, band in enumerate(dst):
        if band in src:
            out[:, i] = weight[:, src.index(band)]
            continue
        if init == "copy":
            out[:, i] = weight[:, src.index(_nearest(band, src))]
        elif init == "mean":
            out[:, i] = weight.mean(dim=1)
        elif init == "repeat":
            out[:, i] = weight[:, extra % len(src)]
        elif init == "zero":
            out[:, i] = 0
        else:
            raise ValueError(f"extra_band_init must be one of copy, mean, repeat, zero; got {init!r}")
        extra += 1
    if init == "repeat" and extra:
        out *= len(src) / len(dst)
    return out


def _nearest(band: str, candidates: Sequence[str]) -> str:
    if band not in WAVELENGTH_NM:
        raise ValueError(
            f"Band {band!r} has no known wavelength, so extra_band_init='copy' cannot pick a filter for it. "
            f"Use a known name ({', '.join(sorted(WAVELENGTH_NM))}) or another extra_band_init."
        )
    known = [c for c in candidates if c in WAVELENGTH_NM]
    return min(known, key=lambda c: abs(WAVELENGTH_NM[c] - WAVELENGTH_NM[band]))


def select_bands(array: np.ndarray, available: Sequence[str], wanted: Sequence[str], axis: int = -1) -> np.ndarray:
    """Take the ``wanted`` bands, in that order, from ``array`` whose ``axis`` holds ``available`` bands."""
    import numpy as np

    have = check_bands(available)
    want = check_bands(wanted)
    if array.shape[axis] != len(have):
        raise ValueError(f"array has {array.shape[axis]} bands on axis {axis} but {len(have)} names: {list(available)}")
    missing = [b for b in want if b not in have]
    if missing:
        raise ValueError(f"bands {missing} are required but the input only has {list(have)}")
    return np.take(array, [have.index(b) for b in want], axis=axis)
