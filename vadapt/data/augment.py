"""Training augmentations by name: the entries of a datamodule's ``augment:`` list.

Geometric entries (``hflip``, ``vflip``, ``rot90``) move image and mask together; photometric "travel" entries
(``band_gain``, ``gamma``, ``haze``, ``blur``) change only the image (and additional image targets such as
change detection's ``image_b``), never the mask. They mimic what changes between sensors, cities and dates:
calibration and band response, tone, thin haze, point-spread / resampling (docs/travel.md).

The photometric ones are our own ``A.ImageOnlyTransform`` subclasses, not albumentations' ``MultiplicativeNoise``,
``RandomGamma``, ``RandomFog`` or ``GaussianBlur``: in albumentations 2.0.8 those assume float images in [0, 1]
and *clip* their float32 output to [0, 1] (albucore's ``@clipped``: ``MAX_VALUES_BY_DTYPE[float32] = 1.0``), so
reflectance up to 1.5, raw 0-10000 digital numbers, 0-255 photos and negative values are destroyed;
``RandomGamma`` gives NaN for negative values and ``RandomFog`` accepts only 3-band images. Ours work on float32
``(H, W, C)`` for any C and any value scale: they measure each band's robust range on the image itself
(a percentile of its valid pixels), so the same setting means the same relative change for 0-1 reflectance
and for 0-10000 counts.

Nodata: pixels that are exactly 0 in every band (nodata and padding, whose mask is ``ignore_index``) are left
at 0 and do not count in the percentiles.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np

from .io import DataError

STAT_PIXELS = 16384  # the percentiles are taken on at most about this many pixels (a regular grid)


# ---- helpers -------------------------------------------------------------------------------------------------
def band_percentile(image: np.ndarray, q: float) -> np.ndarray:
    """Per-band ``q``-th percentile of an ``(H, W, C)`` image's valid pixels -> ``(C,)`` float32.

    Valid: not 0 in every band. Computed on a regular sub-grid of at most ~``STAT_PIXELS`` pixels; a crop
    without valid pixels gives zeros.
    """
    h, w, c = image.shape
    step = max(1, int(np.ceil(np.sqrt(h * w / STAT_PIXELS))))
    flat = image[::step, ::step].reshape(-1, c)
    flat = flat[(flat != 0).any(axis=1)]
    if not len(flat):
        return np.zeros(c, dtype=np.float32)
    return np.percentile(flat, q, axis=0).astype(np.float32)


def keep_nodata(image: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out`` (float32, shape of ``image``) with the pixels that are 0 in every band of ``image`` set back to 0."""
    out = out.astype(np.float32, copy=False)
    nodata = ~(image != 0).any(axis=-1)
    if nodata.any():
        out[nodata] = 0.0
    return out


def _hwc(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """Let an ``(H, W, C)`` image function also take ``(H, W)`` images (returned as ``(H, W)``)."""

    @functools.wraps(fn)
    def wrapped(self: Any, img: np.ndarray, **params: Any) -> np.ndarray:
        if img.ndim == 2:
            return fn(self, img[..., None], **params)[..., 0]
        return fn(self, img, **params)

    return wrapped


# ---- photometric transforms ------------------------------------------------------------------------------------
class BandGain(A.ImageOnlyTransform):
    """Another sensor's calibration / band response: ``v' = g_b * v + o_b * r_b`` per band ``b``.

    ``g_b ~ U(gain)`` and ``o_b ~ U(-offset, offset)`` independently per band; ``r_b`` is the band's robust range
    (``quantile``-th percentile of ``|v|`` over the image's valid pixels). Image ``(H, W, C)`` float32 -> same.
    """

    def __init__(self, gain: tuple[float, float] = (0.8, 1.2), offset: float = 0.02, quantile: float = 98.0,
                 p: float = 0.5) -> None:
        super().__init__(p=p)
        self.gain, self.offset, self.quantile = (float(gain[0]), float(gain[1])), float(offset), float(quantile)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """One gain and one offset fraction per band: ``(C,)`` float32 each."""
        shape = params["shape"]
        bands = shape[2] if len(shape) == 3 else 1
        gains = self.random_generator.uniform(*self.gain, size=bands).astype(np.float32)
        offsets = self.random_generator.uniform(-self.offset, self.offset, size=bands).astype(np.float32)
        return {"gains": gains, "offsets": offsets}

    @_hwc
    def apply(self, img: np.ndarray, gains: np.ndarray, offsets: np.ndarray, **params: Any) -> np.ndarray:
        """``(H, W, C)`` -> ``(H, W, C)`` float32."""
        scale = band_percentile(np.abs(img), self.quantile)
        return keep_nodata(img, img * gains + offsets * scale)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Arguments shown by ``repr`` and serialisation."""
        return ("gain", "offset", "quantile")


class BandGamma(A.ImageOnlyTransform):
    """Tone change: ``v' = m_b * (v / m_b) ** gamma`` for ``v > 0``, one ``gamma ~ U(gamma)`` per image.

    ``m_b`` is the band's robust max (``quantile``-th percentile of its valid pixels), so any value scale works;
    values <= 0 (and bands whose robust max is <= 0) are unchanged. Monotone per band, zero stays zero.
    Image ``(H, W, C)`` float32 -> same.
    """

    def __init__(self, gamma: tuple[float, float] = (0.7, 1.5), quantile: float = 98.0, p: float = 0.5) -> None:
        super().__init__(p=p)
        self.gamma, self.quantile = (float(gamma[0]), float(gamma[1])), float(quantile)

    def get_params(self) -> dict[str, Any]:
        """The gamma of this call."""
        return {"gamma": float(self.random_generator.uniform(*self.gamma))}

    @_hwc
    def apply(self, img: np.ndarray, gamma: float, **params: Any) -> np.ndarray:
        """``(H, W, C)`` -> ``(H, W, C)`` float32."""
        top = band_percentile(img, self.quantile)
        safe = np.where(top > 0, top, 1.0).astype(np.float32)
        mapped = safe * np.power(np.maximum(img, 0) / safe, np.float32(gamma))
        return np.where((img > 0) & (top > 0), mapped, img).astype(np.float32, copy=False)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Arguments shown by ``repr`` and serialisation."""
        return ("gamma", "quantile")


class Haze(A.ImageOnlyTransform):
    """Thin haze / atmosphere: ``v' = v * (1 - t) + t * a_b`` with ``t ~ U(strength)`` per image.

    ``a_b`` is a bright value of band ``b`` (``quantile``-th percentile of its valid pixels): contrast drops and
    dark areas brighten, more where the band is bright (blue under haze). Image ``(H, W, C)`` float32 -> same.
    """

    def __init__(self, strength: tuple[float, float] = (0.0, 0.3), quantile: float = 99.0, p: float = 0.5) -> None:
        super().__init__(p=p)
        self.strength, self.quantile = (float(strength[0]), float(strength[1])), float(quantile)

    def get_params(self) -> dict[str, Any]:
        """The haze thickness ``t`` of this call."""
        return {"t": float(self.random_generator.uniform(*self.strength))}

    @_hwc
    def apply(self, img: np.ndarray, t: float, **params: Any) -> np.ndarray:
        """``(H, W, C)`` -> ``(H, W, C)`` float32."""
        airlight = band_percentile(img, self.quantile)
        return keep_nodata(img, img * np.float32(1.0 - t) + np.float32(t) * airlight)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Arguments shown by ``repr`` and serialisation."""
        return ("strength", "quantile")


class Blur(A.ImageOnlyTransform):
    """Another sensor's point-spread / resampling: Gaussian blur with ``sigma ~ U(sigma)`` pixels, all bands alike.

    OpenCV's ``GaussianBlur`` (reflected borders) on any number of bands, without albumentations' clipping to
    [0, 1]. Valid pixels next to nodata are darkened by the zeros; nodata stays 0. ``(H, W, C)`` float32 -> same.
    """

    def __init__(self, sigma: tuple[float, float] = (0.5, 1.5), p: float = 0.3) -> None:
        super().__init__(p=p)
        self.sigma = (float(sigma[0]), float(sigma[1]))

    def get_params(self) -> dict[str, Any]:
        """The sigma of this call (pixels)."""
        return {"sigma": float(self.random_generator.uniform(*self.sigma))}

    @_hwc
    def apply(self, img: np.ndarray, sigma: float, **params: Any) -> np.ndarray:
        """``(H, W, C)`` -> ``(H, W, C)`` float32."""
        src = np.ascontiguousarray(img, dtype=np.float32)
        out = cv2.GaussianBlur(src, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
        return keep_nodata(img, out.reshape(img.shape))  # OpenCV drops a single band's axis

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Arguments shown by ``repr`` and serialisation."""
        return ("sigma",)


# ---- the table -------------------------------------------------------------------------------------------------
GEOMETRIC: dict[str, Callable[[], A.BasicTransform]] = {
    "hflip": lambda: A.HorizontalFlip(p=0.5),
    "vflip": lambda: A.VerticalFlip(p=0.5),
    "rot90": lambda: A.RandomRotate90(p=1.0),  # k in 0..3: identity a quarter of the time
}
PHOTOMETRIC: dict[str, Callable[[], A.BasicTransform]] = {
    "band_gain": lambda: BandGain(gain=(0.8, 1.2), offset=0.02, p=0.5),
    "gamma": lambda: BandGamma(gamma=(0.7, 1.5), p=0.5),
    "haze": lambda: Haze(strength=(0.0, 0.3), p=0.5),
    "blur": lambda: Blur(sigma=(0.5, 1.5), p=0.3),
}
AUGMENTATIONS: dict[str, Callable[[], A.BasicTransform]] = {**GEOMETRIC, **PHOTOMETRIC}


def build_augmentations(names: Sequence[str]) -> list[A.BasicTransform]:
    """The albumentations transforms of ``augment`` entries, in the order given; unknown names are a
    ``DataError`` listing every valid name."""
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise DataError(f"augment has unknown entries {unknown}; choose from {sorted(AUGMENTATIONS)}")
    return [AUGMENTATIONS[n]() for n in names]


# ---- seeding -------------------------------------------------------------------------------------------------
def seed_transform(transform: Any, seed: int) -> None:
    """Seed an albumentations pipeline with ONE random stream shared by all its transforms.

    ``Compose.set_random_seed(seed)`` gives every child a generator seeded with the same ``seed``, so their draws
    coincide: with ``hflip`` and ``vflip`` (p=0.5) both flips happen or neither (never one alone), and a gain would
    be drawn from the same numbers as a gamma. ``set_random_state`` shares one generator pair instead.
    """
    if hasattr(transform, "set_random_state"):
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
    elif hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


class SeededCompose(A.Compose):
    """``A.Compose`` whose ``set_random_seed`` seeds one stream shared by all its transforms (``seed_transform``)
    instead of identical, correlated streams; callers that re-seed per item (change detection) get independent
    flips and photometric draws."""

    def set_random_seed(self, seed: int | None) -> None:
        """Seed the pipeline: one shared stream (``seed=None``: fresh entropy, as albumentations)."""
        super().set_random_seed(seed)
        if seed is not None:
            seed_transform(self, seed)
