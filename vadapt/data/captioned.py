"""Captioned image files: what ``CaptionedImageDataModule`` (``vadapt.data.generation``) reads, and the caption,
probing and image-loading helpers ``VideoClipDataModule`` (``vadapt.data.video``) shares.

* captions from ``metadata.csv`` / ``metadata.jsonl`` (``metadata_captions``; the diffusers / Hugging Face
  imagefolder convention: ``file_name`` and ``text`` / ``caption`` / ``prompt``);
* ``probe_files`` -- checks files in threads and skips the unusable ones with one ``CorruptImageWarning``;
* ``load_rgb`` (EXIF-oriented RGB) and ``resize_crop`` (resize to cover a bucket, crop, optional flip);
* ``CaptionedImageDataset`` -- items ``{"image", "prompt", "key"}`` of ``ImageRecord`` s, a broken file replaced
  by the next readable one of its bucket.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from .buckets import Bucket
from .generation_base import _to_tensor
from .io import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
METADATA_FILES = ("metadata.csv", "metadata.jsonl")
CAPTION_COLUMNS = ("text", "caption", "prompt")


class CorruptImageWarning(UserWarning):
    """Some images could not be read and are skipped."""


def _listing(values: Sequence[Any], limit: int = 10) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


# ---- captioned image folders -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageRecord:
    """One image: its file, caption, stable key and (EXIF-oriented) size ``(h, w)``."""

    path: Path
    caption: str
    key: str
    size: Bucket


def _read_metadata(path: Path) -> dict[str, str]:
    """``{resolved image path: caption}`` of a ``metadata.csv`` / ``metadata.jsonl``."""
    rows: list[dict[str, Any]] = []
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    else:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {n} is not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path} line {n} is not a JSON object with file_name and text")
            rows.append(row)
        columns = sorted({k for row in rows for k in row})
    if not rows:
        return {}
    if "file_name" not in columns:
        raise DataError(f"{path} has no file_name column (it has: {', '.join(columns)}); expected file_name,text")
    text_key = next((c for c in CAPTION_COLUMNS if c in columns), None)
    if text_key is None:
        raise DataError(f"{path} has no caption column: expected one of {', '.join(CAPTION_COLUMNS)} (it has: "
                        f"{', '.join(columns)})")
    out = {}
    for row in rows:
        if row.get("file_name") and row.get(text_key) is not None:
            out[os.path.normpath(path.parent / str(row["file_name"]))] = str(row[text_key]).strip()
    return out


def metadata_captions(root: Path) -> dict[str, str]:
    """``{resolved file path: caption}`` of every ``metadata.csv`` / ``metadata.jsonl`` under ``root``."""
    table: dict[str, str] = {}
    for name in METADATA_FILES:
        for meta in sorted(root.rglob(name)):
            table.update(_read_metadata(meta))
    return table


def probe_files(paths: Sequence[Path], probe: Any, root: Path, noun: str) -> tuple[list[tuple[Path, Any]], list[Path]]:
    """Run ``probe(path)`` (a value, or a string saying why the file cannot be used) over ``paths`` in threads;
    warn once listing the unusable ones and raise when none is usable. Returns the usable ``(path, value)`` pairs
    and the skipped paths."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        probes = list(pool.map(probe, paths))
    bad = [(p, why) for p, why in zip(paths, probes) if isinstance(why, str)]
    if len(bad) == len(paths):
        raise DataError(f"none of the {len(paths)} {noun} in {root} can be used (the first: {bad[0][0]}: "
                        f"{bad[0][1]})")
    if bad:
        warnings.warn(f"{len(bad)} of {len(paths)} {noun} in {root} are skipped: "
                      f"{_listing([f'{p.relative_to(root)} ({why})' for p, why in bad])}",
                      CorruptImageWarning, stacklevel=3)
    return [(p, v) for p, v in zip(paths, probes) if not isinstance(v, str)], [p for p, _ in bad]


def _probe(path: Path, full: bool) -> Bucket | str:
    """The oriented ``(h, w)`` of an image, or why it cannot be read."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF rotations by 90 degrees
                width, height = height, width
            if full:
                im.load()
        if min(width, height) < 1:
            return "it has no pixels"
        return height, width
    except Exception as exc:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError ...)
        return f"{type(exc).__name__}: {exc}"


def load_rgb(path: str | Path) -> Image.Image:
    """An image file as an EXIF-oriented RGB PIL image (alpha dropped, palettes and grey expanded)."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        return im.convert("RGB")


def resize_crop(image: Image.Image, size: Bucket, offset: tuple[float, float] | None = None,
                flip: bool = False) -> np.ndarray:
    """Resize (shorter side: the image just covers ``size``) and crop to ``size`` = ``(h, w)``: uint8 ``(h, w, 3)``.

    ``offset`` = (vertical, horizontal) crop position in [0, 1] (``None``: the centre); ``flip`` mirrors it."""
    h, w = size
    scale = max(h / image.height, w / image.width)
    new_w, new_h = max(w, round(image.width * scale)), max(h, round(image.height * scale))
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    oy, ox = offset if offset is not None else (0.5, 0.5)
    top, left = round((new_h - h) * oy), round((new_w - w) * ox)
    array = np.asarray(image.crop((left, top, left + w, top + h)), dtype=np.uint8)
    return array[:, ::-1] if flip else array


class CaptionedImageDataset(Dataset):
    """Items ``{"image": float32 (3, h, w) in [0, 1], "prompt": str, "key": str}`` of image records.

    Each record is resized and cropped to ``sizes[bucket_of[i]]`` (random crop and flip when ``train``). An
    image that fails to load is replaced by the next readable one of its bucket (one warning per file)."""

    def __init__(self, records: Sequence[ImageRecord], sizes: Sequence[Bucket], bucket_of: Sequence[int] | None,
                 train: bool, center_crop: bool = True, random_flip: bool = True) -> None:
        self.records, self.sizes = list(records), list(sizes)
        self.bucket_of = list(bucket_of) if bucket_of is not None else None
        self.train, self.center_crop, self.random_flip = train, center_crop, random_flip
        self.bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.records)

    def _bucket(self, index: int) -> int:
        return self.bucket_of[index] if self.bucket_of is not None else 0

    def _load(self, index: int, bucket: int) -> dict[str, Any]:
        record = self.records[index]
        image = load_rgb(record.path)
        offset, flip = None, False
        if self.train:
            if not self.center_crop:
                offset = (float(torch.rand(())), float(torch.rand(())))
            flip = self.random_flip and bool(torch.rand(()) < 0.5)
        array = resize_crop(image, self.sizes[bucket], offset, flip)
        return {"image": _to_tensor(array), "prompt": record.caption, "key": record.key}

    def _try(self, index: int, bucket: int) -> dict[str, Any] | None:
        if index in self.bad:
            return None
        try:
            return self._load(index, bucket)
        except Exception as exc:  # a file that changed or broke after setup: never crash the epoch
            self.bad.add(index)
            warnings.warn(f"image {self.records[index].path} could not be read ({type(exc).__name__}: {exc}); "
                          "it is skipped", CorruptImageWarning, stacklevel=2)
            return None

    def __getitem__(self, index: int) -> dict[str, Any]:
        bucket = self._bucket(index)
        item = self._try(index, bucket)
        if item is not None:
            return item
        same = [i for i in range(len(self)) if self._bucket(i) == bucket]  # only after a failure
        start = same.index(index)
        for i in same[start + 1:] + same[:start]:
            item = self._try(i, bucket)  # the replacement keeps the requested bucket's size
            if item is not None:
                return item
        raise DataError(f"none of the {len(same)} images of size {self.sizes[bucket]} could be read (the first: "
                        f"{self.records[index].path})")
