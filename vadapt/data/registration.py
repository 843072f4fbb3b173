"""Whether two rasters of a change pair share one pixel grid, and the grid to warp "after" onto "before".

A change pair is compared pixel by pixel, so both dates must cover the same ground with the same pixels: the same
size, CRS and geotransform. :func:`grid_mismatch` says what differs, with the numbers; ``vadapt infer --align``
(``InferOptions.align``) instead reprojects the second image onto the first's grid with a rasterio ``WarpedVRT``
that vadapt builds itself (never one read from a file), see :func:`vadapt.data.io.read_raw`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: how far the grids' origins may differ, in pixels, and their pixel sizes, relatively, and still be one grid
ORIGIN_TOLERANCE_PX = 0.01
PIXEL_SIZE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Grid:
    """A georeferenced pixel grid: ``crs`` as WKT, ``transform`` the affine's 6 coefficients (a, b, c, d, e, f),
    ``height`` x ``width`` pixels."""

    crs: str
    transform: tuple[float, float, float, float, float, float]
    height: int
    width: int

    @classmethod
    def of(cls, crs: Any, transform: Any, height: int, width: int) -> Grid | None:
        """The grid of an open rasterio dataset's ``crs`` / ``transform``; None when it is not georeferenced."""
        if crs is None or transform is None or transform.is_identity:
            return None
        return cls(crs.to_wkt(), tuple(transform)[:6], int(height), int(width))


def _crs_name(wkt: str) -> str:
    from rasterio.crs import CRS

    crs = CRS.from_wkt(wkt)
    return crs.to_string() if crs.to_epsg() is None else f"EPSG:{crs.to_epsg()}"


def grid_mismatch(a: Grid | None, b: Grid | None, size_a: tuple[int, int], size_b: tuple[int, int]) -> str | None:
    """What keeps the second raster from lying pixel for pixel on the first (``size_*`` are (height, width)), as
    a phrase with the numbers; None when they agree, or when either is not georeferenced and the sizes agree."""
    if a is not None and b is not None:
        from rasterio.crs import CRS

        if CRS.from_wkt(a.crs) != CRS.from_wkt(b.crs):
            return f"different CRS ({_crs_name(a.crs)} vs {_crs_name(b.crs)})"
        (pa, _, xa, _, ea, ya), (pb, _, xb, _, eb, yb) = a.transform, b.transform
        if abs(pa - pb) > PIXEL_SIZE_TOLERANCE * abs(pa) or abs(ea - eb) > PIXEL_SIZE_TOLERANCE * abs(ea):
            return f"different pixel sizes ({abs(pa):g} x {abs(ea):g} vs {abs(pb):g} x {abs(eb):g} CRS units)"
        dx, dy = (xb - xa) / pa, (yb - ya) / ea
        if max(abs(dx), abs(dy)) > ORIGIN_TOLERANCE_PX:
            return (f"grids shifted by {dx:+.2f} px in x and {dy:+.2f} px in y ({xb - xa:+g}, {yb - ya:+g} CRS "
                    "units)")
    if tuple(size_a) != tuple(size_b):
        return f"different sizes ({size_a[1]}x{size_a[0]} vs {size_b[1]}x{size_b[0]} px)"
    return None
