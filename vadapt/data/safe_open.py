"""The one way vadapt opens files it did not write: GDAL drivers from an allow-list, limits read from headers.

Every raster read (``probe``/``read_raw`` in :mod:`vadapt.data.io`, the georeference of ``vadapt infer`` and of
the app) goes through :func:`open_raster`; ``.npy`` / ``.npz`` shapes come from their npy headers
(:func:`npy_header`, :func:`npz_member_header`) before any array is inflated or mapped.

Why an allow-list: GDAL picks the driver from the file's *content*, not its name, so an upload called ``x.tif``
that holds VRT XML would be opened as a VRT, whose sources can read any file on the server (a
``VRTRawRasterBand`` on ``/etc/passwd``, a ``SimpleSource`` on another GeoTIFF) or fetch URLs (``/vsicurl/``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

# Drivers GDAL may use to read a file (rasterio.open(path, driver=[...])). GTiff reads GeoTIFF and COG (the
# COG driver only writes); PNG and JPEG for photos that GDAL is asked to read; JP2OpenJPEG for Sentinel-2
# .jp2 band files (SAFE products); HFA for ERDAS Imagine .img (still common in national mapping archives).
# Left out on purpose: VRT (its sources read other files / URLs; only with allow_vrt), and everything with
# sidecar or container logic (netCDF, GPKG, MBTiles, MRF, PDF, ...) that nobody has asked for.
SAFE_DRIVERS: tuple[str, ...] = ("GTiff", "PNG", "JPEG", "JP2OpenJPEG", "HFA")
VRT_DRIVER = "VRT"
#: how a command-line user opts in to VRT / virtual-file / URL reads (the hint of those refusals)
VRT_OPT_IN = "they are read only with --allow-vrt (allow_vrt=True or VADAPT_ALLOW_VRT=1)"
VRT_FILE_OPT_IN = "VRTs are read only with --allow-vrt (allow_vrt=True or VADAPT_ALLOW_VRT=1)"
ALLOW_VRT_ENV = "VADAPT_ALLOW_VRT"  # "1": allow VRT and /vsi / URL paths where no allow_vrt argument is given
# GDAL options for every open: a VRT (when allowed) cannot read raw bytes of arbitrary files nor run Python
GDAL_OPTIONS = {"GDAL_VRT_ENABLE_RAWRASTERBAND": "NO", "GDAL_VRT_ENABLE_PYTHON": "NO"}

# Pixel limit (height x width, from the header, before any pixel is read) shared by `vadapt infer` (flag
# --max-pixels, InferOptions.max_pixels), the data modules and the app (app/limits.py passes its own, 4096²).
# vadapt infer streams GeoTIFF / .npy by rows, so memory stays bounded whatever the size: the pixel count only
# drives run time. 2**34 (~17.2 G px, e.g. 131072 x 131072) takes a 100000 x 100000 scene and refuses a header
# that declares 200000 x 200000 (40 G px: hours of work from a file of a few KB).
DEFAULT_MAX_PIXELS = 2**34
# Whole-file decodes (.npz members are inflated whole): the most bytes one member may inflate to.
DEFAULT_MAX_LOAD_BYTES = 4 * 2**30
# A compression bomb: an .npz member that inflates to more than BOMB_RATIO times its stored size and to more
# than BOMB_MIN_BYTES. Real imagery deflates 1.5-4x, label masks rarely 100x; zeros deflate ~1000x.
BOMB_RATIO = 200
BOMB_MIN_BYTES = 64 * 2**20


class DataError(ValueError):
    """Bad input data or data config; the message is one sentence naming the file or the key."""


class RefusedFile(DataError):
    """A file refused before reading (driver, path or limit); the message is one sentence naming the file:
    ``reason``, then ``hint`` (how a command-line user opts in) when there is one, so a face without that opt-in
    (the app) can show the reason alone."""

    def __init__(self, reason: str, hint: str = "") -> None:
        super().__init__(f"{reason}; {hint}" if hint else reason)
        self.reason, self.hint = reason, hint


class LimitExceeded(RefusedFile):
    """The header declares more pixels (or bytes) than allowed; ``height``/``width`` are the declared size."""

    def __init__(self, message: str, height: int = 0, width: int = 0) -> None:
        super().__init__(message)
        self.height, self.width = height, width


def vrt_allowed(allow_vrt: bool | None = None) -> bool:
    """``allow_vrt``, or when None the environment (``VADAPT_ALLOW_VRT=1``; DataLoader workers inherit it)."""
    if allow_vrt is not None:
        return bool(allow_vrt)
    return os.environ.get(ALLOW_VRT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def check_pixels(height: int, width: int, path: str, max_pixels: int | None = None,
                 hint: str = "raise the limit with --max-pixels (vadapt infer) or max_pixels") -> None:
    """Raise :class:`LimitExceeded` when ``height x width`` is over ``max_pixels`` (default DEFAULT_MAX_PIXELS)."""
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    if height < 0 or width < 0 or height * width > limit:
        raise LimitExceeded(f"{path} declares {width}x{height} = {height * width:,} pixels, over the limit of "
                            f"{limit:,} pixels (max_pixels): {hint}", height, width)


def check_path(path: str, allow_vrt: bool) -> None:
    """Refuse GDAL virtual-file (``/vsi...``) and URL paths unless VRTs / remote reads are allowed."""
    if not allow_vrt and (path.startswith("/vsi") or "://" in path):
        raise RefusedFile(f"refused {path}: GDAL virtual-file and URL paths (/vsi..., ://) are not read", VRT_OPT_IN)


@contextlib.contextmanager
def open_raster(path: str | Path, allow_vrt: bool | None = None) -> Iterator:
    """``rasterio.open`` for reading, limited to :data:`SAFE_DRIVERS` (plus VRT when allowed), with raw VRT
    bands and VRT Python disabled; warnings (NotGeoreferencedWarning ...) silenced. A VRT (when not allowed)
    raises :class:`RefusedFile` naming the file and ``--allow-vrt``; another file no allowed driver reads an
    ``OSError`` with GDAL's reason."""
    import rasterio
    from rasterio.io import DatasetReader

    allow = vrt_allowed(allow_vrt)
    text = os.fspath(path)
    check_path(text, allow)
    # an absolute local path: GDAL never reads a name like "GTIFF_DIR:1:/etc/x.tif" as its connection syntax
    local = text if allow and (text.startswith("/vsi") or "://" in text) else os.path.abspath(text)
    drivers = [*SAFE_DRIVERS, VRT_DRIVER] if allow else list(SAFE_DRIVERS)
    if allow and local == os.path.abspath(text) and _looks_like_vrt(local):
        _check_vrt(local, text)
    with warnings.catch_warnings(), rasterio.Env(**GDAL_OPTIONS):
        warnings.simplefilter("ignore")
        try:
            # rasterio.open() takes one driver name only (1.4: "invalid driver" for a list); the reader it
            # builds takes GDAL's list of allowed drivers, and no other driver is tried
            src = DatasetReader(local, driver=drivers)
        except Exception as exc:  # noqa: BLE001 - RasterioIOError, DriverError ("invalid driver") ...
            if not allow and _looks_like_vrt(local):
                raise RefusedFile(f"refused {text}: it is a GDAL VRT, which can read other files",
                                  VRT_FILE_OPT_IN) from None
            # not a refusal: a damaged or foreign file; callers add "cannot read <role> file <path>: "
            raise OSError(f"no allowed GDAL driver ({', '.join(drivers)}) reads it: "
                          f"{' '.join(str(exc).split())}") from None
        with src:
            yield src


def _check_vrt(path: str, shown: str, depth: int = 0) -> None:
    """Refuse an (allowed) VRT with raw-file bands or pixel-function code, in it or in the local VRTs it
    sources. GDAL_VRT_ENABLE_RAWRASTERBAND=NO is set too, but the GDAL 3.10 of the rasterio wheels still
    reads raw bands with it (checked in tests/test_hostile_files.py), so the XML is checked here first."""
    import xml.etree.ElementTree as ET

    if depth > 8:
        raise RefusedFile(f"refused {shown}: its VRT sources nest more than 8 deep")
    try:
        root = ET.parse(path).getroot()  # character references resolved: no spelling hides a subClass
    except (ET.ParseError, OSError) as exc:
        raise RefusedFile(f"refused {shown}: not a well-formed VRT ({exc})") from None
    for element in root.iter():
        if element.get("subClass") == "VRTRawRasterBand" or element.tag in ("PixelFunctionCode",
                                                                             "PixelFunctionLanguage"):
            raise RefusedFile(f"refused {shown}: its VRT reads raw files or runs code ({element.tag} "
                              f"{element.get('subClass') or ''}), which vadapt never allows, even with --allow-vrt")
    for element in root.iter("SourceFilename"):
        source = (element.text or "").strip()
        if element.get("relativeToVRT") == "1":
            source = os.path.join(os.path.dirname(path), source)
        if not (source.startswith("/vsi") or "://" in source) and _looks_like_vrt(source):
            _check_vrt(source, shown, depth + 1)


def _looks_like_vrt(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(1024).lstrip()
    except OSError:
        return False
    return head.startswith(b"<VRTDataset") or (head.startswith(b"<?xml") and b"<VRTDataset" in head)


# ---- numpy headers ----------------------------------------------------------------------------------------------
# numpy parses every .npy header with ``ast.literal_eval``; on CPython 3.11 the AST constructor is not thread-safe
# (python/cpython#106905: "SystemError: AST constructor recursion depth mismatch" when two threads parse at once),
# and our readers describe files on a thread pool. Every header parse in vadapt holds this lock.
NPY_HEADER_LOCK = threading.Lock()


def _read_npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    with NPY_HEADER_LOCK:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"unsupported .npy format version {version}")


def load_npy(path: str | Path, mmap_mode: Literal["r"] | None = None) -> np.ndarray:
    """``np.load`` of an ``.npy`` (never pickles) under :data:`NPY_HEADER_LOCK`; with ``mmap_mode="r"`` only the
    header is parsed under the lock."""
    with NPY_HEADER_LOCK:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    n = int(dtype.itemsize)
    for s in shape:
        n *= int(s)
    return n


def npy_header(path: str | Path, max_pixels: int | None = None) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an ``.npy`` file from its header; the file must hold the bytes the header declares."""
    with open(path, "rb") as f:
        shape, _, dtype = _read_npy_header(f)
        offset = f.tell()
    if dtype.hasobject:
        raise RefusedFile(f"{path} holds Python objects (pickles), which are never loaded")
    if len(shape) >= 2:
        check_pixels(int(shape[0]), int(shape[1]), str(path), max_pixels)
    size = os.path.getsize(path)
    if offset + _nbytes(shape, dtype) > size:
        raise RefusedFile(f"{path} is truncated: its header declares a {shape} {dtype} array "
                          f"({_nbytes(shape, dtype):,} bytes) but the file has {size - offset:,} bytes of data")
    return tuple(int(s) for s in shape), dtype


def npz_member_header(path: str | Path, key: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and stored (compressed) size of member ``key`` of an ``.npz``, from the npy header only
    (the first bytes of the member: the array is never inflated)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{key}.npy")
        with zf.open(info) as f:
            shape, _, dtype = _read_npy_header(f)
    if dtype.hasobject:
        raise RefusedFile(f"{path} member {key} holds Python objects (pickles), which are never loaded")
    return tuple(int(s) for s in shape), dtype, int(info.compress_size)


def npz_keys(path: str | Path) -> list[str]:
    """The array names in an ``.npz`` (from the zip directory)."""
    with zipfile.ZipFile(path) as zf:
        return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]


def check_npz_member(path: str | Path, key: str, max_pixels: int | None = None,
                     max_bytes: int | None = None) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of ``key`` in ``path`` after checking, from its header, the pixel limit (2-d / 3-d
    arrays), the whole-load limit ``max_bytes`` (default DEFAULT_MAX_LOAD_BYTES) and the compression ratio
    (:data:`BOMB_RATIO`); raises :class:`LimitExceeded` before anything is inflated."""
    shape, dtype, stored = npz_member_header(path, key)
    if len(shape) >= 2:
        check_pixels(shape[0], shape[1], f"{path} ({key})", max_pixels)
    nbytes = _nbytes(shape, dtype)
    limit = DEFAULT_MAX_LOAD_BYTES if max_bytes is None else int(max_bytes)
    if nbytes > limit:
        raise LimitExceeded(f"{path} ({key}) would inflate to {nbytes:,} bytes, over the {limit:,}-byte limit for "
                            ".npz arrays (loaded whole): store large scenes as GeoTIFF or .npy (read by window)",
                            *shape[:2])
    if nbytes > BOMB_MIN_BYTES and nbytes > BOMB_RATIO * max(stored, 1):
        raise LimitExceeded(f"{path} ({key}) would inflate {nbytes // max(stored, 1):,}-fold, from {stored:,} to "
                            f"{nbytes:,} bytes: refused as a compression bomb (over {BOMB_RATIO}-fold and "
                            f"{BOMB_MIN_BYTES // 2**20} MB)", *shape[:2])
    return shape, dtype


def load_npz_arrays(path: str | Path, keys: list[str], max_pixels: int | None = None,
                    max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """The named members of an ``.npz`` (those present), each checked by :func:`check_npz_member` first;
    pickles are never loaded."""
    present = set(npz_keys(path))
    for key in keys:
        if key in present:
            check_npz_member(path, key, max_pixels, max_bytes)
    with NPY_HEADER_LOCK, np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in keys if key in present}

