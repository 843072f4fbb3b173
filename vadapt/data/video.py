"""Captioned video clips for video-diffusion training (``DiffusionAdapterTask(kind="video")``, I2V-Adapter).

``VideoClipDataModule`` reads a folder (searched recursively) of clips, each either

* a video file (``.mp4``, ``.avi``, ``.mov``, ``.mkv``, ``.webm``, ``.m4v``; decoded by OpenCV, already installed
  with albumentations) or an animated ``.gif`` / ``.webp`` (Pillow), or
* a folder of frame images (``.png`` / ``.jpg`` / ...; frames in file-name order) holding nothing but frames.

The caption of clip ``a/b.mp4`` (or frame folder ``a/b/``) is, in this order: the sidecar ``a/b.txt``; its row
in a ``metadata.csv`` / ``metadata.jsonl`` (``file_name`` relative to the metadata file's folder and ``text``, or
``caption`` / ``prompt``: the same convention as the image folders; a WebVid CSV becomes one by renaming its
``videoid`` / ``name`` columns); the ``prompt`` option; else the empty prompt (one warning).

Frames are sampled as AnimateDiff's WebVid loader does (the data I2V-Adapter trains on): ``num_frames`` indices
spread evenly over a window of ``(num_frames - 1) * stride + 1`` frames (shortened to the clip's length), the
window placed at random in training and in the middle for validation; every frame resized (shorter side) and
centre-cropped to ``resolution``, training clips flipped left-right with probability 0.5. Clips with fewer than
``num_frames`` frames and files that cannot be decoded are skipped in ``setup`` with one warning listing them; a
clip that breaks later is replaced by the next readable one (one warning). Batches ``{"video": float32
(B, F, 3, H, W) in [0, 1], "prompt": list[str], "key": list[str]}``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageSequence
from torch.utils.data import Dataset

from vadapt.data.buckets import Bucket
from vadapt.data.captioned import (
    IMAGE_SUFFIXES,
    CorruptImageWarning,
    load_rgb,
    metadata_captions,
    probe_files,
    resize_crop,
)
from vadapt.data.generation_base import _check_common, _GenerationDataModule, _size, _split
from vadapt.data.io import DataError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
ANIMATED_SUFFIXES = (".gif", ".webp")


@dataclass(frozen=True)
class ClipRecord:
    """One clip: its file or frame folder, caption, stable key and frame count."""

    path: Path
    caption: str
    key: str
    num_frames: int


def frame_indices(length: int, num_frames: int, stride: int, start: float | None) -> list[int]:
    """AnimateDiff's sampling: ``num_frames`` indices evenly over a window of ``min(length, (num_frames - 1) *
    stride + 1)`` frames starting at ``start`` (a fraction of the free room; ``None``: the middle)."""
    window = min(length, (num_frames - 1) * stride + 1)
    first = round((length - window) * (0.5 if start is None else start))
    return np.linspace(first, first + window - 1, num_frames).round().astype(int).tolist()


def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_SUFFIXES)


def count_frames(path: Path) -> int:
    """Frames of a clip (video file, animated image or frame folder); raises when it cannot be decoded."""
    if path.is_dir():
        return len(_frame_files(path))
    if path.suffix.lower() in ANIMATED_SUFFIXES:
        with Image.open(path) as image:
            image.seek(getattr(image, "n_frames", 1) - 1)  # decodes up to the last frame
            return getattr(image, "n_frames", 1)
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        ok, _ = capture.read()
        if not capture.isOpened() or not ok:
            raise ValueError("OpenCV cannot decode it")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if count <= 0:  # containers without a frame count: read through
            count = 1
            while capture.grab():
                count += 1
        return count
    finally:
        capture.release()


def read_frames(path: Path, indices: Sequence[int]) -> list[Image.Image]:
    """The frames ``indices`` (any order, repeats allowed) of a clip as RGB images."""
    wanted = set(indices)
    last = max(wanted)
    frames: dict[int, Image.Image] = {}
    if path.is_dir():
        files = _frame_files(path)
        frames = {i: load_rgb(files[i]) for i in wanted}
    elif path.suffix.lower() in ANIMATED_SUFFIXES:
        with Image.open(path) as image:
            for i, frame in enumerate(ImageSequence.Iterator(image)):
                if i in wanted:
                    frames[i] = frame.convert("RGB")
                if i >= last:
                    break
    else:
        import cv2

        capture = cv2.VideoCapture(str(path))
        try:
            for i in range(last + 1):  # sequential decoding: seeking is inexact in many containers
                ok, bgr = capture.read()
                if not ok:
                    break
                if i in wanted:
                    frames[i] = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        finally:
            capture.release()
    missing = sorted(wanted - frames.keys())
    if missing:
        raise ValueError(f"frame {missing[0]} could not be read")
    return [frames[i] for i in indices]


class VideoClipDataset(Dataset):
    """Items ``{"video": float32 (F, 3, h, w) in [0, 1], "prompt", "key"}`` of clip records (module docstring)."""

    def __init__(self, records: Sequence[ClipRecord], size: Bucket, num_frames: int, stride: int, train: bool,
                 random_flip: bool = True) -> None:
        self.records, self.size = list(records), size
        self.num_frames, self.stride, self.train, self.random_flip = num_frames, stride, train, random_flip
        self.bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        start = float(torch.rand(())) if self.train else None
        flip = self.train and self.random_flip and bool(torch.rand(()) < 0.5)
        frames = read_frames(record.path, frame_indices(record.num_frames, self.num_frames, self.stride, start))
        video = np.stack([resize_crop(frame, self.size, flip=flip) for frame in frames])
        tensor = torch.from_numpy(np.ascontiguousarray(video.transpose(0, 3, 1, 2))).float().div_(255.0)
        return {"video": tensor, "prompt": record.caption, "key": record.key}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return first_readable(index, len(self), self.bad, self._load, lambda i: str(self.records[i].path), "clip")


def first_readable(index: int, count: int, bad: set[int], load: Callable[[int], Any], name: Callable[[int], str],
                   kind: str) -> Any:
    """``load(index)``, or where it raises (a file that changed or broke after setup: the epoch must not end) the
    next readable item after it, wrapping around; each unreadable one is remembered in ``bad`` and said once as a
    :class:`CorruptImageWarning` naming it (``name(i)``, a ``kind``). :class:`DataError` when none can be read."""
    for i in [index, *range(index + 1, count), *range(index)]:
        if i in bad:
            continue
        try:
            return load(i)
        except Exception as exc:  # noqa: BLE001 - decoders raise many types
            bad.add(i)
            warnings.warn(f"{kind} {name(i)} could not be read ({type(exc).__name__}: {exc}); it is skipped",
                          CorruptImageWarning, stacklevel=3)
    raise DataError(f"none of the {count} {kind}s could be read (the first: {name(index)})")


class VideoClipDataModule(_GenerationDataModule):
    """A folder of captioned clips for ``DiffusionAdapterTask(kind="video")`` (module docstring)."""

    def __init__(
        self,
        root: str,
        resolution: int | tuple[int, int] = 256,
        num_frames: int = 16,
        stride: int = 4,
        batch_size: int = 1,
        val_fraction: float = 0.1,
        num_workers: int = 0,
        random_flip: bool = True,
        prompt: str | None = None,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        """
        Args:
            root: the clip folder (searched recursively; relative roots to the working dir).
            resolution: frame size, ``256`` or ``[height, width]`` (AnimateDiff trains SD1.5 at 256).
            num_frames: frames per training clip (AnimateDiff / I2V-Adapter: 16).
            stride: frame step of the sampling window (AnimateDiff's ``sample_stride`` 4).
            batch_size, num_workers, drop_last: data loader settings.
            val_fraction: share of the clips held out for validation (seeded; 0: none).
            random_flip: mirror training clips left-right with probability 0.5.
            prompt: caption of clips with no sidecar or metadata row.
            seed: seed of the validation hold-out."""
        super().__init__()
        self.save_hyperparameters(logger=False)
        _check_common(batch_size, num_workers, val_fraction)
        if num_frames < 2 or stride < 1:
            raise DataError(f"num_frames must be >= 2 and stride >= 1, got {num_frames} and {stride}")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"clip folder not found: root={str(root)!r} (resolved to {self.root.resolve()})")
        self.resolution = _size(resolution, "resolution")
        self.records: list[ClipRecord] = []
        self.skipped: list[Path] = []

    def find(self) -> list[Path]:
        """Clips under ``root``: video / animated files, and folders holding only frame images (sorted)."""
        clips = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            folder = Path(dirpath)
            files = [f for f in filenames if not f.startswith(".")]
            frames = [f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES]
            if folder != self.root and not dirnames and len(frames) >= 2 and len(frames) == len(files):
                clips.append(folder)
                continue
            clips += [folder / f for f in files if Path(f).suffix.lower() in (*VIDEO_SUFFIXES, *ANIMATED_SUFFIXES)]
        return sorted(clips)

    def captions(self, clips: Sequence[Path]) -> list[str | None]:
        table = metadata_captions(self.root)
        out: list[str | None] = []
        for path in clips:
            sidecar = path.with_name(path.stem + ".txt") if path.is_file() else path.with_name(path.name + ".txt")
            text = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""
            text = text or table.get(os.path.normpath(path), "") or (self.hparams.prompt or "")
            out.append(text or None)
        return out

    def make_datasets(self) -> None:
        hp = self.hparams
        clips = self.find()
        if not clips:
            raise DataError(f"{self.root} has no clips: put video files ({', '.join(VIDEO_SUFFIXES)}), animated "
                            "GIF / WebP files or folders of frame images there, captions in <name>.txt files or a "
                            "metadata.csv with file_name,text")

        def probe(path: Path) -> int | str:
            try:
                count = count_frames(path)
            except Exception as exc:  # decoders raise many types
                return f"{type(exc).__name__}: {exc}"
            return count if count >= hp.num_frames else f"{count} frames, fewer than num_frames {hp.num_frames}"

        good, self.skipped = probe_files(clips, probe, self.root, "clips")
        captions = self.captions([p for p, _ in good])
        missing = [p for (p, _), c in zip(good, captions) if c is None]
        if missing:
            warnings.warn(f"{len(missing)} clip(s) in {self.root} have no caption (no <name>.txt or metadata row; "
                          f"e.g. {missing[0].name}): they train with the empty prompt; set prompt to give them one",
                          UserWarning, stacklevel=2)
        self.records = [ClipRecord(p, c or "", p.relative_to(self.root).as_posix(), n)
                        for (p, n), c in zip(good, captions)]
        train, val = _split(len(self.records), hp.val_fraction, hp.seed)
        for split, idx in (("train", train), ("val", val)):
            self.datasets[split] = VideoClipDataset([self.records[i] for i in idx], self.resolution, hp.num_frames,
                                                    hp.stride, train=split == "train", random_flip=hp.random_flip)
