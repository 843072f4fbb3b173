"""Which files a batch job reads and writes: input discovery, output names, atomic writers.

Inputs are a folder (searched recursively), a glob or one file; outputs mirror the inputs' paths relative to
the input root. Every output is written under a hidden temporary name in its final folder and renamed when
complete (``os.replace`` is atomic), so a finished name always holds a complete file and a run killed at any
moment leaves only temporaries, which the next run removes before it starts.
"""

from __future__ import annotations

import errno
import glob as globlib
import os
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vadapt.data.io import GDAL_SUFFIXES

IMAGE_SUFFIXES = frozenset(GDAL_SUFFIXES | {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".npy", ".npz"})
FORMATS = ("auto", "png", "tif", "npy")
TMP_MARK = ".vadapt-partial"
MASK_NODATA = 255  # output value where the input had no data


@dataclass
class Job:
    """One output: its input file(s) (two for change detection) and the files it writes."""

    name: str  # input path relative to the input root, with its suffix (what reports show)
    sources: tuple[Path, ...]
    mask: Path
    extras: dict[str, Path] = field(default_factory=dict)  # "probabilities" / "overlay" -> path

    @property
    def outputs(self) -> list[Path]:
        return [*self.extras.values(), self.mask]  # the mask is written last: it marks the job complete

    def complete(self) -> bool:
        return all(p.is_file() for p in self.outputs)


def is_glob(pattern: str) -> bool:
    return globlib.has_magic(pattern)


def list_inputs(source: str | os.PathLike,
                failures: list[tuple[str, str]] | None = None) -> tuple[Path, list[Path], list[Path]]:
    """``(root, images, ignored)`` for a folder, a glob or one file; ``ignored`` are files without an image
    suffix (reported, not failed); hidden files and our temporaries are skipped.

    An input that exists is taken literally, even with glob characters in its name (``scenes[2024]/``); only
    one that does not exist is a glob. Paths that cannot be read (a directory named like an image, a broken
    symlink, a symlink loop, a file without read permission, a device or pipe) are never dropped: with
    ``failures`` given they are appended to it as ``(name relative to root, reason)``; without it, those with an
    image suffix stay in ``images`` (their reader then fails them) and the others go to ``ignored``.
    An input that names nothing (a glob matching nothing, an empty folder) is a :class:`FileNotFoundError`.
    """
    text = str(source)
    path = Path(text)
    if os.path.lexists(text):
        problem = None if path.is_dir() else _problem(path)  # a folder given by name is read, whatever its name
        if path.is_dir():
            root = path
            found, problems = _walk(root)
            if not found and not problems:
                raise FileNotFoundError(f"input folder {text} is empty")
        elif problem is not None:
            raise FileNotFoundError(f"input {text} cannot be read: {problem}")
        else:
            return path.parent, [path], []
    elif is_glob(text):
        prefix = text[: min(i for i, c in enumerate(text) if c in "*?[")]  # the folder part before the pattern
        root = Path(prefix) if prefix.endswith(os.sep) else Path(prefix).parent
        found, problems = [], []
        for p in sorted(globlib.glob(text, recursive=True)):
            p = Path(p)
            if _hidden(p.relative_to(root)):
                continue
            reason = _problem(p)
            if reason is not None:
                problems.append((p, reason))
            elif p.is_file():
                found.append(p)
        if not found and not problems:
            raise FileNotFoundError(f"input not found: no file matches {text} (give a folder, a glob such as "
                                    "'scenes/*.tif', or a file)")
    else:
        raise FileNotFoundError(f"input not found: {text} (give a folder, a glob such as 'scenes/*.tif', or a file)")
    files = sorted(found)
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    ignored = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    for p, reason in sorted(problems):
        if failures is not None:
            failures.append((str(p.relative_to(root)), reason))
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            images.append(p)
        else:
            ignored.append(p)
    return root, sorted(images), sorted(ignored)


def _problem(path: Path) -> str | None:
    """Why ``path`` (an entry that exists, maybe as a dangling link) cannot be read as an input file, or None
    for a readable file or a folder without an image suffix."""
    try:
        st = os.stat(path)  # follows symlinks
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop (the link points back to itself)"
        if path.is_symlink():
            return f"broken symlink (its target {os.readlink(path)} does not exist)"
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory" if path.suffix.lower() in IMAGE_SUFFIXES else None
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file (a device, pipe or socket)"
    if not os.access(path, os.R_OK):
        return "unreadable (permission denied)"
    return None


def _walk(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Readable files and ``(path, reason)`` of unreadable entries below ``root``, following symlinked folders
    (a link to a folder it is inside is a symlink loop); hidden entries are skipped."""
    files: list[Path] = []
    problems: list[tuple[Path, str]] = []

    def visit(folder: Path, ancestors: frozenset[str]) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            problems.append((folder, f"folder cannot be listed ({exc.strerror or exc})"))
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            reason = _problem(path)
            if path.is_dir() and (reason is None or reason == "is a directory"):
                if reason:
                    problems.append((path, reason))
                real = os.path.realpath(path)
                if real in ancestors:
                    problems.append((path, f"symlink loop (the link points to {real}, a folder it is inside)"))
                    continue
                visit(path, ancestors | {real})
            elif reason is not None:
                problems.append((path, reason))
            else:
                files.append(path)

    visit(root, frozenset({os.path.realpath(root)}))
    return files, problems


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def output_suffix(source: Path, fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt != "auto":
        return "." + fmt
    suffix = source.suffix.lower()
    if suffix in GDAL_SUFFIXES:
        return ".tif"
    if suffix in (".npy", ".npz"):
        return ".npy"
    return ".png"


def make_jobs(
    sources: Sequence[tuple[Path, ...]], root: Path, output: Path, fmt: str, probabilities: bool, overlay: bool
) -> tuple[list[Job], list[tuple[str, str]]]:
    """Jobs for ``sources`` (tuples of paired files) and ``(name, reason)`` of inputs whose output name
    collides with an earlier one (``a.png`` and ``a.jpg`` both give ``a.png``)."""
    jobs, collisions, taken = [], [], {}
    for files in sources:
        rel = files[0].relative_to(root)
        suffix = output_suffix(files[0], fmt)
        mask = output / rel.with_suffix(suffix)
        if mask in taken:
            collisions.append((str(rel), f"its output {mask} is also the output of {taken[mask]}"))
            continue
        taken[mask] = str(rel)
        extras = {}
        if probabilities:
            extras["probabilities"] = mask.with_name(f"{mask.stem}_prob{suffix}")
        if overlay:
            extras["overlay"] = mask.with_name(f"{mask.stem}_overlay.png")
        jobs.append(Job(str(rel), tuple(files), mask, extras))
    return jobs, collisions


def pair_inputs(root_a: Path, files_a: Sequence[Path], root_b: Path,
                files_b: Sequence[Path]) -> tuple[list[tuple[Path, Path]], list[tuple[str, str]]]:
    """Pairs of before/after files matched by relative path, and ``(name, reason)`` of unpaired files."""
    by_rel_b = {p.relative_to(root_b): p for p in files_b}
    pairs, unpaired = [], []
    for a in files_a:
        rel = a.relative_to(root_a)
        b = by_rel_b.pop(rel, None)
        if b is None:
            unpaired.append((str(rel), f"no file {rel} in {root_b} (the 'after' folder)"))
        else:
            pairs.append((a, b))
    unpaired += [(str(rel), f"no file {rel} in {root_a} (the 'before' folder)") for rel in by_rel_b]
    return pairs, unpaired


def temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{path.suffix}")


def remove_temporaries(job: Job) -> None:
    for path in job.outputs:
        temporary(path).unlink(missing_ok=True)


class OutputFile:
    """A raster written row block by row block under a temporary name; ``commit`` renames it into place.

    Args:
        path: final path; the suffix picks the format: ``.tif`` (GeoTIFF, deflate-compressed, with ``geo`` from
            the input: CRS, transform, GCPs), ``.npy`` (``(H, W)`` or ``(H, W, bands)``, memory-mapped) or
            ``.png`` (kept in memory, written at commit; one band, with ``palette`` if given).
        dtype, bands, nodata: pixel type, band count and the nodata value (GeoTIFF: its nodata tag; 8-bit PNG: a
            ``nodata`` text chunk, and that palette entry transparent).
    """

    def __init__(self, path: Path, height: int, width: int, bands: int, dtype: str, nodata: float | None,
                 geo: dict[str, Any] | None = None, palette: list[int] | None = None) -> None:
        self.path, self.tmp, self.suffix = path, temporary(path), path.suffix.lower()
        self.height, self.width, self.bands, self.dtype = height, width, bands, np.dtype(dtype)
        self.palette, self.nodata = palette, nodata
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.suffix == ".tif":
            import rasterio

            profile = {
                "driver": "GTiff", "height": height, "width": width, "count": bands, "dtype": self.dtype.name,
                "nodata": nodata, "compress": "deflate", "predictor": 2 if self.dtype.kind in "iu" else 3,
                "BIGTIFF": "IF_SAFER",
                **({"tiled": True, "blockxsize": 256, "blockysize": 256} if min(height, width) >= 256 else {}),
                **(geo or {}),
            }
            with warnings.catch_warnings():  # a plain TIFF in gives a plain TIFF out: no NotGeoreferencedWarning
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                self._file: Any = rasterio.open(self.tmp, "w", **profile)
        elif self.suffix == ".npy":
            shape = (height, width) if bands == 1 else (height, width, bands)
            self._file = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=self.dtype, shape=shape)
        elif self.suffix == ".png":
            self._file = np.zeros((height, width), dtype=self.dtype)
        else:
            raise ValueError(f"cannot write {path}: the output format is png, tif or npy")

    def write(self, top: int, rows: np.ndarray) -> None:
        """Write ``rows`` ``(n, W)`` or ``(bands, n, W)`` at row ``top``."""
        rows = rows.reshape(self.bands, -1, self.width) if rows.ndim == 2 else rows
        n = rows.shape[1]
        if self.suffix == ".tif":
            from rasterio.windows import Window

            self._file.write(rows.astype(self.dtype, copy=False), window=Window(0, top, self.width, n))
        elif self.suffix == ".npy":
            self._file[top : top + n] = rows[0] if self.bands == 1 else np.moveaxis(rows, 0, -1)
        else:
            self._file[top : top + n] = rows[0]

    def commit(self) -> None:
        if self.suffix == ".tif":
            self._file.close()
        elif self.suffix == ".npy":
            self._file.flush()
            del self._file
        else:
            from PIL import Image
            from PIL.PngImagePlugin import PngInfo

            image = Image.frombytes("L" if self.palette is None else "P", (self.width, self.height),
                                    np.ascontiguousarray(self._file, dtype=np.uint8).tobytes())
            extra: dict[str, Any] = {}
            if self.nodata is not None and self.dtype == np.uint8:  # PNG has no nodata tag: a text chunk says it
                info = PngInfo()
                info.add_text("nodata", f"{self.nodata:g}")
                extra["pnginfo"] = info
            if self.palette is not None:
                image.putpalette(self.palette)
                if self.nodata is not None and 0 <= self.nodata <= 255:  # nodata shows transparent in viewers
                    extra["transparency"] = bytes(255 if i != int(self.nodata) else 0 for i in range(256))
            image.save(self.tmp, format="PNG", **extra)
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        if self.suffix == ".tif" and not self._file.closed:
            self._file.close()
        self.tmp.unlink(missing_ok=True)
