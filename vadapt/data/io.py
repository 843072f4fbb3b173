"""Reading images and masks of every supported format, whole or by window, with named bands and nodata.

Formats (by file suffix):

* GeoTIFF and anything else GDAL reads (``.tif``, ``.tiff``, ``.vrt``, ``.jp2``, ``.img``) through rasterio,
  by window (only the requested bands and pixels are read). Band names come from the band descriptions, else
  from ``file_bands`` in the config, else from the colour interpretation (``red``, ``green``, ``blue``,
  ``alpha``, ``gray``); the file's nodata value is honoured.
* ``.npy``: ``(H, W, C)`` or ``(H, W)``, memory-mapped, so windows are read without loading the file.
* ``.npz``: ``img`` (or ``image``) ``(H, W, C)``, optionally ``msk`` (or ``mask``) ``(H, W)``, ``bands`` (C names),
  ``scale`` (multiplied into the image) and ``nodata``; loaded whole.
* Everything else through Pillow (``.jpg``, ``.png``, ``.bmp`` ...). Photos are converted to RGB when the
  wanted bands are RGB and the file is grey, palette or CMYK (as mmsegmentation's ``color`` loading does).

Images come out as float32 ``(h, w, len(bands))`` raw values (times ``scale``) plus a boolean ``invalid``
map of nodata pixels; masks as int64 ``(h, w)`` class ids (see ``MaskDecoder``).
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from vadapt.bands import RGB, canonical
from vadapt.preprocessing import georeferenced_pixel_size

from .registration import Grid
from .safe_open import (
    DEFAULT_MAX_PIXELS,
    DataError,
    LimitExceeded,  # noqa: F401 - re-exported: the app tells a limit from other refusals
    RefusedFile,  # noqa: F401 - re-exported
    check_npz_member,
    check_path,
    check_pixels,
    load_npy,
    load_npz_arrays,
    npy_header,
    npz_keys,
    open_raster,
    vrt_allowed,
)

GDAL_SUFFIXES = frozenset({".tif", ".tiff", ".vrt", ".jp2", ".img"})
PIL_BAND_NAMES = {"R": "red", "G": "green", "B": "blue", "A": "alpha", "L": "gray", "I": "gray", "F": "gray",
                  "1": "gray", "P": "palette", "C": "cyan", "M": "magenta", "Y": "yellow", "K": "black"}
COLORINTERP_NAMES = {"red", "green", "blue", "alpha", "gray"}
NodataOption = float | Literal["file"] | None
Window = tuple[int, int, int, int]  # (row, col, height, width)


def find_data_error(exc: BaseException) -> BaseException | None:
    """The ``DataError`` / ``FileNotFoundError`` behind ``exc`` (jsonargparse wraps errors raised in a
    datamodule's ``__init__`` in a long type-check report), or None: lets the CLI print just that sentence."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (DataError, FileNotFoundError)):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def file_kind(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in GDAL_SUFFIXES:
        return "gdal"
    if suffix in (".npy", ".npz"):
        return suffix[1:]
    return "pil"


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _npz_key(files: Sequence[str], keys: Sequence[str]) -> str | None:
    return next((k for k in keys if k in files), None)


@dataclass(frozen=True)
class FileInfo:
    """Header of an image or mask file: size, band count and names, nodata, and how to read it."""

    path: str
    kind: str
    height: int
    width: int
    count: int
    names: tuple[str, ...] | None
    nodata: tuple[float | None, ...]
    scale: float = 1.0
    to_rgb: bool = False
    allow_vrt: bool = False  # how the header was opened: read_raw opens the pixels the same way
    #: GDAL only: read through a WarpedVRT onto this grid (a change pair's "after" aligned to "before"; height and
    #: width are then the grid's)
    warp_to: Grid | None = None


def _gdal_info(path: str, allow_vrt: bool, max_pixels: int | None) -> FileInfo:
    with open_raster(path, allow_vrt) as src:
        check_pixels(src.height, src.width, path, max_pixels)
        descriptions = tuple(src.descriptions)
        names = tuple(descriptions) if all(descriptions) else None
        if names is None:
            interp = tuple(ci.name for ci in src.colorinterp)
            if all(n in COLORINTERP_NAMES for n in interp) and len(set(interp)) == len(interp):
                names = interp
        return FileInfo(path, "gdal", src.height, src.width, src.count, names, tuple(src.nodatavals),
                        allow_vrt=allow_vrt)


def _numpy_info(path: str, kind: str, role: str, max_pixels: int | None) -> FileInfo:
    """From the npy header(s) only: nothing is mapped or inflated before the limits are checked."""
    if kind == "npy":
        shape, _ = npy_header(path, max_pixels)
        names, scale, nodata = None, 1.0, None
    else:
        files = npz_keys(path)
        key = _npz_key(files, ("img", "image") if role == "image" else ("msk", "mask"))
        if key is None:
            raise DataError(f"{role} file {path} has no {'img' if role == 'image' else 'msk'} array "
                            f"(it has {sorted(files)})")
        shape, _ = check_npz_member(path, key, max_pixels)
        small = load_npz_arrays(path, ["bands", "scale", "nodata"], max_bytes=1 << 20)  # metadata: tiny
        names = tuple(str(b) for b in small["bands"]) if "bands" in small and role == "image" else None
        scale = float(small["scale"]) if "scale" in small and role == "image" else 1.0
        nodata = float(small["nodata"]) if "nodata" in small else None
    if len(shape) not in (2, 3):
        raise DataError(f"{role} file {path} holds a {len(shape)}-d array {shape}; expected (H, W, C) or (H, W)")
    check_pixels(shape[0], shape[1], path, max_pixels)
    count = 1 if len(shape) == 2 else shape[2]
    return FileInfo(path, kind, shape[0], shape[1], count, names, (nodata,) * count, scale)


def _pil_info(path: str, want_rgb: bool, max_pixels: int | None) -> FileInfo:
    from PIL import Image

    with Image.open(path) as im:  # reads the header only; Pillow's own MAX_IMAGE_PIXELS check applies too
        mode, (width, height) = im.mode, im.size
        bands = im.getbands()
    check_pixels(height, width, path, max_pixels)
    to_rgb = want_rgb and mode not in ("RGB", "RGBA")
    if to_rgb:
        names: tuple[str, ...] = RGB
    else:
        names = tuple(PIL_BAND_NAMES.get(b, b.lower()) for b in bands)
    return FileInfo(path, "pil", height, width, len(names), names, (None,) * len(names), to_rgb=to_rgb)


def probe(path: str | Path, role: str = "image", want_rgb: bool = False, *, max_pixels: int | None = None,
          allow_vrt: bool | None = None) -> FileInfo:
    """Read the header of ``path``; any failure is a ``DataError`` naming the file.

    Rasters open through :func:`vadapt.data.safe_open.open_raster` (allowed GDAL drivers; VRT and ``/vsi`` /
    URL paths only with ``allow_vrt``, default: ``VADAPT_ALLOW_VRT=1``); the declared size is checked against
    ``max_pixels`` (default ``DEFAULT_MAX_PIXELS``), and ``.npz`` members against the load limits, from the
    headers, before any pixel is read (a refusal is a ``LimitExceeded``, a ``DataError``).
    """
    path = str(path)
    allow = vrt_allowed(allow_vrt)
    check_path(path, allow)
    virtual = path.startswith("/vsi") or "://" in path  # allowed by now: GDAL reads it
    if not virtual and not Path(path).is_file():
        raise DataError(f"{role} file not found: {path}")
    kind = "gdal" if virtual else file_kind(path)
    try:
        if kind == "gdal":
            return _gdal_info(path, allow, max_pixels)
        if kind in ("npy", "npz"):
            return _numpy_info(path, kind, role, max_pixels)
        return _pil_info(path, want_rgb, max_pixels)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - every reader error becomes one clear sentence
        raise DataError(f"cannot read {role} file {path}: {_reason(exc)}") from exc


@contextlib.contextmanager
def _warped(src, grid: Grid | None) -> Iterator:
    """``src`` itself, or a bilinear ``WarpedVRT`` of it on ``grid`` (built here from numbers, never read from a file;
    pixels outside ``src`` get its nodata value, else 0)."""
    if grid is None:
        yield src
        return
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    with WarpedVRT(src, crs=CRS.from_wkt(grid.crs), transform=Affine(*grid.transform), width=grid.width,
                   height=grid.height, resampling=Resampling.bilinear) as vrt:
        yield vrt


def read_raw(info: FileInfo, window: Window | None = None, indexes: Sequence[int] | None = None,
             role: str = "image") -> np.ndarray:
    """``(h, w, len(indexes))`` native-dtype values of ``info.path`` (all bands when ``indexes`` is None)."""
    path = info.path
    y, x, h, w = window if window is not None else (0, 0, info.height, info.width)
    idx = list(range(info.count)) if indexes is None else list(indexes)
    try:
        if info.kind == "gdal":
            from rasterio.windows import Window as RioWindow

            with open_raster(path, info.allow_vrt) as src, _warped(src, info.warp_to) as view:
                arr = view.read([i + 1 for i in idx], window=RioWindow(x, y, w, h))
            return np.moveaxis(arr, 0, -1)
        if info.kind == "npy":
            arr = load_npy(path, mmap_mode="r")
        elif info.kind == "npz":
            arr = _npz_array(path, role, Path(path).stat().st_mtime_ns)
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                if info.to_rgb:
                    im = im.convert("RGB")
                elif im.mode == "1":
                    im = im.convert("L")
                arr = np.asarray(im)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return np.array(arr[y : y + h, x : x + w][:, :, idx])
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        what = f"rows {y}..{y + h - 1}" if window is not None else "its pixels"
        raise DataError(f"cannot read {role} file {path}: reading {what} failed, the file is probably truncated "
                        f"or corrupt ({_read_reason(exc)})") from exc


def _read_reason(exc: BaseException) -> str:
    """The most telling message of ``exc`` and its causes (rasterio says "see previous exception" and keeps
    GDAL's own words in ``__cause__``)."""
    texts = []
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = _reason(exc)
        if "previous exception" not in text.lower() and text not in texts:
            texts.append(text)
        exc = exc.__cause__ or exc.__context__
    return "; ".join(texts[:2]) or "no reason given"


@functools.lru_cache(maxsize=8)
def _npz_array(path: str, role: str, mtime: int) -> np.ndarray:
    """The image or mask array of an ``.npz`` file (cached: windows of one scene are read many times); its
    size was checked from the header by ``probe`` (and is again here, still before inflating)."""
    key = _npz_key(npz_keys(path), ("img", "image") if role == "image" else ("msk", "mask"))
    arr = load_npz_arrays(path, [key], max_pixels=2**62)[key]  # pixels: probe's limit applied already
    arr.flags.writeable = False
    return arr


def row_windows(height: int, width: int, rows: int | None = None, top: int = 0) -> Iterator[Window]:
    """Full-width strips of about 4 M pixels (or ``rows`` rows) covering rows ``top .. height``."""
    rows = rows or max(1, (1 << 22) // max(width, 1))
    for y in range(top, height, rows):
        yield (y, 0, min(rows, height - y), width)


class BandReader:
    """Reads the configured bands of image files as float32, with nodata pixels flagged and filled.

    Args:
        bands: bands to return, by name, in this order.
        file_bands: names of the files' bands when the files do not name them (or to check that they match).
        scale: multiplied into the values (after nodata detection).
        offset: added after ``scale`` (e.g. -0.1 for Sentinel-2 L2A reflectance from processing baseline 04.00).
        nodata: ``"file"`` (the file's own nodata value, if any), a number, or ``None`` (no nodata value).
            NaN is always nodata.
        nodata_rule: a pixel is nodata when ``"all"`` (or ``"any"``) of its selected bands equal the nodata value.
        nodata_fill: value written into the image at nodata pixels (they are ignored in the mask).
        max_pixels: largest image (height x width, from the header) read; default ``DEFAULT_MAX_PIXELS``.
        allow_vrt: read GDAL VRTs and ``/vsi`` / URL paths; default: the ``VADAPT_ALLOW_VRT`` environment variable.
    """

    def __init__(self, bands: Sequence[str], file_bands: Sequence[str] | None = None, scale: float = 1.0,
                 nodata: NodataOption = "file", nodata_rule: Literal["all", "any"] = "all",
                 nodata_fill: float = 0.0, max_pixels: int | None = None, allow_vrt: bool | None = None,
                 offset: float = 0.0) -> None:
        from vadapt.bands import check_bands

        try:
            self.bands = check_bands(bands)
        except ValueError as exc:
            raise DataError(f"bands: {exc}") from None
        try:
            self.file_bands = check_bands(file_bands) if file_bands is not None else None
        except ValueError as exc:
            raise DataError(f"file_bands: {exc}") from None
        if nodata_rule not in ("all", "any"):
            raise DataError(f"nodata_rule must be 'all' or 'any', got {nodata_rule!r}")
        if nodata is not None and nodata != "file" and not isinstance(nodata, (int, float)):
            raise DataError(f"nodata must be 'file', a number or null, got {nodata!r}")
        self.scale, self.nodata, self.nodata_rule, self.nodata_fill = float(scale), nodata, nodata_rule, nodata_fill
        self.offset = float(offset)
        self.want_rgb = all(b in RGB for b in self.bands)
        self.max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
        self.allow_vrt = allow_vrt

    def info(self, path: str | Path) -> tuple[FileInfo, list[int]]:
        """Header of ``path`` and the indexes of the configured bands in it; mismatches are ``DataError``."""
        info = probe(path, "image", self.want_rgb, max_pixels=self.max_pixels, allow_vrt=self.allow_vrt)
        names = info.names
        if info.kind == "pil" and info.to_rgb:
            names = RGB  # converted; file_bands does not apply to a colour conversion
        elif self.file_bands is not None:
            if len(self.file_bands) != info.count:
                raise DataError(f"image {path} has {info.count} bands but file_bands names "
                                f"{len(self.file_bands)}: {list(self.file_bands)}")
            if names is not None and info.kind != "pil" and _all_described(info):
                if tuple(canonical(n) for n in names) != self.file_bands:
                    raise DataError(f"image {path} describes its bands as {list(names)} but file_bands is "
                                    f"{list(self.file_bands)}")
            names = self.file_bands
        if names is None:
            raise DataError(f"image {path} does not name its {info.count} bands (no band descriptions): set "
                            "file_bands (data config) or --file-bands (vadapt infer)")
        names = tuple(canonical(n) for n in names)
        if len(names) != info.count:
            raise DataError(f"image {path} has {info.count} bands but names {len(names)}: {list(names)}")
        missing = [b for b in self.bands if b not in names]
        if missing:
            raise DataError(f"image {path} lacks the configured bands {missing} (it has {list(names)})")
        return info, [names.index(b) for b in self.bands]

    def nodata_values(self, info: FileInfo, indexes: Sequence[int]) -> list[float | None]:
        if self.nodata is None:
            return [None] * len(indexes)
        if self.nodata == "file":
            return [info.nodata[i] for i in indexes]
        return [float(self.nodata)] * len(indexes)

    def read(self, info: FileInfo, indexes: Sequence[int],
             window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
        """float32 ``(h, w, len(bands))`` image (nodata filled) and bool ``(h, w)`` nodata map."""
        raw = read_raw(info, window, indexes)
        invalid = self.invalid(raw, self.nodata_values(info, indexes))
        image = raw.astype(np.float32)
        if np.issubdtype(raw.dtype, np.floating):
            invalid |= np.isnan(image).any(-1)
        scale = self.scale * info.scale
        if scale != 1.0:
            image *= np.float32(scale)
        if self.offset:
            image += np.float32(self.offset)
        if invalid.any():
            image[invalid] = self.nodata_fill
        return image, invalid

    def invalid(self, raw: np.ndarray, nodata: Sequence[float | None]) -> np.ndarray:
        hits = [raw[..., i] == np.float64(nd) for i, nd in enumerate(nodata) if nd is not None and not np.isnan(nd)]
        if not hits:
            return np.zeros(raw.shape[:2], dtype=bool)
        return np.logical_and.reduce(hits) if self.nodata_rule == "all" else np.logical_or.reduce(hits)


def pixel_size(info: FileInfo) -> float | None:
    """The pixel size (mean of the x and y sizes, in CRS units) of a georeferenced GDAL raster, else ``None``."""
    if info.kind != "gdal":
        return None
    with open_raster(info.path, info.allow_vrt) as src:
        return georeferenced_pixel_size({"crs": src.crs, "transform": src.transform})


def _all_described(info: FileInfo) -> bool:
    """True when the file's names are its own band descriptions / stored names (not colour interpretation)."""
    if info.kind in ("npy", "npz"):
        return info.names is not None
    if info.kind == "gdal" and info.names is not None:
        return not all(n in COLORINTERP_NAMES for n in info.names)
    return False


def parse_color(key: str | Sequence[int]) -> tuple[int, ...]:
    """``"0,255,0"``, ``"(0, 255, 0)"``, ``"#00ff00"`` or ``[0, 255, 0]`` -> ``(0, 255, 0)``."""
    if not isinstance(key, str):
        values = tuple(int(v) for v in key)
    else:
        text = key.strip()
        if text.startswith("#") and len(text) == 7:
            values = tuple(int(text[i : i + 2], 16) for i in (1, 3, 5))
        else:
            parts = [p for p in re.split(r"[\s,;()\[\]]+", text) if p]
            if not all(p.isdigit() for p in parts):
                raise DataError(f"color_map key {key!r} is not a colour: write 'R,G,B' or '#rrggbb'")
            values = tuple(int(p) for p in parts)
    if len(values) != 3:
        raise DataError(f"color_map key {key!r} is not a colour: write 'R,G,B' or '#rrggbb'")
    return values


def _pack(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 32) | (rgb[..., 1] << 16) | rgb[..., 2]


def _unpack(code: int) -> tuple[int, int, int]:
    return (int(code) >> 32, (int(code) >> 16) & 0xFFFF, int(code) & 0xFFFF)


def _listing(values: Sequence, limit: int = 20) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


class MaskDecoder:
    """Turns raw mask values (or colours) into int64 class ids; unexpected values are a ``DataError``.

    Exactly one way of reading the mask applies:

    * ``color_map`` (``{"R,G,B": class}``): colour-coded masks (3 or 4 channels; alpha 0 = ignore);
    * ``threshold``: grey value (mean of the colour channels) ``> threshold`` is class 1, else 0 (JPEG masks);
    * values: ``reduce_zero_label`` first (mmsegmentation: 0 -> ignore, v -> v - 1, 255 stays ignore), then
      ``label_map`` (``{value: class}``), else the values are the class ids (checked against ``num_classes``).

    Values equal to ``ignore_index`` stay ``ignore_index`` unless mapped. A value (colour) outside the mapping
    is an error listing it, unless ``other_class`` is set (it then gets that class; use ``ignore_index`` to
    ignore it). Pixels equal to the mask file's nodata value become ``ignore_index``.
    """

    def __init__(self, label_map: Mapping[int, int] | None = None, color_map: Mapping[str, int] | None = None,
                 threshold: float | None = None, other_class: int | None = None, num_classes: int | None = None,
                 ignore_index: int = 255, reduce_zero_label: bool = False) -> None:
        given = [n for n, v in (("label_map", label_map), ("color_map", color_map), ("mask_threshold", threshold))
                 if v is not None]
        if len(given) > 1:
            raise DataError(f"set only one of label_map, color_map and mask_threshold (got {' and '.join(given)})")
        if reduce_zero_label and (color_map is not None or threshold is not None):
            raise DataError("reduce_zero_label works on mask values, not with color_map or mask_threshold")
        if num_classes is not None and num_classes < 1:
            raise DataError(f"num_classes must be >= 1, got {num_classes}")
        self.label_map = {int(k): int(v) for k, v in label_map.items()} if label_map is not None else None
        self.color_map = None
        if color_map is not None:
            self.color_map = {}
            for key, cls in color_map.items():
                code = int(_pack(np.array(parse_color(key))))
                if code in self.color_map and self.color_map[code] != int(cls):
                    raise DataError(f"color_map names colour {parse_color(key)} twice with different classes")
                self.color_map[code] = int(cls)
        self.threshold, self.other_class, self.num_classes = threshold, other_class, num_classes
        self.ignore_index, self.reduce_zero_label = int(ignore_index), reduce_zero_label
        for name, classes in (("label_map", self.label_map), ("color_map", self.color_map)):
            bad = sorted({c for c in (classes or {}).values() if c != self.ignore_index and not self._valid(c)})
            if bad:
                raise DataError(f"{name} maps to classes {bad} outside 0..{num_classes - 1} (num_classes)")

    def _valid(self, cls: int) -> bool:
        return cls >= 0 and (self.num_classes is None or cls < self.num_classes)

    @property
    def colour(self) -> bool:
        return self.color_map is not None

    def channels_ok(self, count: int) -> str | None:
        """Why a mask with ``count`` channels cannot be decoded (None when it can)."""
        if self.colour and count not in (3, 4):
            return f"has {count} channel(s) but color_map needs colour (RGB or RGBA) masks"
        return None

    def decode(self, raw: np.ndarray, path: str, invalid: np.ndarray | None = None,
               nodata: float | None = None) -> np.ndarray:
        """``(h, w)`` or ``(h, w, c)`` raw mask -> int64 ``(h, w)`` class ids; raises on unexpected values."""
        if raw.ndim == 3 and raw.shape[2] == 1:
            raw = raw[:, :, 0]
        ignore = np.zeros(raw.shape[:2], dtype=bool) if invalid is None else invalid.copy()
        if self.colour:
            if raw.ndim != 3 or raw.shape[2] not in (3, 4):
                raise DataError(f"mask {path} {self.channels_ok(1 if raw.ndim == 2 else raw.shape[2])}")
            if raw.shape[2] == 4:
                ignore |= raw[..., 3] == 0
            if nodata is not None:
                ignore |= (raw[..., :3] == np.float64(nodata)).all(-1)
            codes = _pack(raw[..., :3])
            return self._map(codes, self.color_map, ignore, path, colours=True)
        if raw.ndim == 3:
            channels = raw[..., :3] if raw.shape[2] in (3, 4) else raw[..., :1] if raw.shape[2] == 2 else raw
            if self.threshold is None and not (channels == channels[..., :1]).all():
                raise DataError(f"mask {path} has {raw.shape[2]} channels with different values: set color_map "
                                "for colour-coded masks (or mask_threshold)")
            if raw.shape[2] in (2, 4):  # grey + alpha / RGBA
                ignore |= raw[..., -1] == 0
            raw = channels.mean(-1) if self.threshold is not None else channels[..., 0]
        if nodata is not None and not np.isnan(nodata):
            ignore |= raw == np.float64(nodata)
        if self.threshold is not None:
            out = (raw > self.threshold).astype(np.int64)
            out[ignore] = self.ignore_index
            return out
        values = raw.astype(np.int64)
        if self.reduce_zero_label:  # mmseg LoadAnnotations: 0 -> 255, v -> v - 1, 255 stays 255
            ignore |= (values == 0) | (values == 255)
            values = values - 1
        return self._map(values, self.label_map, ignore, path, colours=False)

    def _map(self, values: np.ndarray, table: dict[int, int] | None, ignore: np.ndarray, path: str,
             colours: bool) -> np.ndarray:
        uniq, inverse = np.unique(values[~ignore], return_inverse=True)
        mapped = np.empty(len(uniq), dtype=np.int64)
        unexpected = []
        for i, v in enumerate(uniq.tolist()):
            if table is not None and v in table:
                mapped[i] = table[v]
            elif not colours and v == self.ignore_index:
                mapped[i] = self.ignore_index
            elif table is None and not colours and self._valid(v):
                mapped[i] = v
            elif self.other_class is not None:
                mapped[i] = self.other_class
            else:
                unexpected.append(_unpack(v) if colours else v)
        if unexpected:
            if colours:
                allowed = f"color_map colours {sorted(_unpack(c) for c in table)}"
            elif table is not None:
                allowed = f"label_map values {sorted(table)}"
            else:
                allowed = f"the classes 0..{self.num_classes - 1} and ignore_index {self.ignore_index}"
            what = "colours" if colours else "values"
            raise DataError(f"mask {path} has {what} {_listing(unexpected)} outside {allowed} (set other_class "
                            "to give them a class, or ignore_index to ignore them)")
        out = np.full(values.shape, self.ignore_index, dtype=np.int64)
        out[~ignore] = mapped[inverse.reshape(-1)]
        return out


class MaskReader:
    """Reads mask files (any supported format) by window and decodes them with a ``MaskDecoder``."""

    def __init__(self, decoder: MaskDecoder, max_pixels: int | None = None, allow_vrt: bool | None = None) -> None:
        self.decoder, self.max_pixels, self.allow_vrt = decoder, max_pixels, allow_vrt

    def info(self, path: str | Path) -> FileInfo:
        info = probe(path, "mask", max_pixels=self.max_pixels, allow_vrt=self.allow_vrt)
        problem = self.decoder.channels_ok(info.count)
        if problem:
            raise DataError(f"mask {path} {problem}")
        return info

    def read(self, info: FileInfo, window: Window | None = None, invalid: np.ndarray | None = None) -> np.ndarray:
        raw = read_raw(info, window, role="mask")
        nodata = info.nodata[0] if info.nodata else None
        return self.decoder.decode(raw, info.path, invalid, nodata)
