"""Monocular endoscopic video for self-supervised depth training (Monodepth2 / AF-SfMLearner / EndoDAC).

Papers: Godard et al., "Digging Into Self-Supervised Monocular Depth Estimation" (Monodepth2, ICCV 2019,
arXiv:1806.01260); Shao et al., AF-SfMLearner (MedIA 2022); Cui et al., "EndoDAC" (MICCAI 2024,
arXiv:2405.08672, github.com/BeileiCui/EndoDAC, whose ``datasets/*.py`` this module reads the same files as).

A sample is a target frame ``t`` with its neighbours ``t + i * frame_stride`` for ``i`` in ``frame_ids``
(``[0, -1, 1]``); targets whose neighbours do not all exist (sequence ends, gaps in the frame numbers) are not
samples. Batches::

    {"frames":     float32 (B, F, 3, H, W) in [0, 1], un-augmented, in frame_ids order,
     "frames_aug": float32 (B, F, 3, H, W), colour-jittered (== frames when not jittered),
     "K":          float32 (B, 3, 3) pixels at (H, W) (NaN-filled when unknown),
     "depth":      float32 (B, 1, H, W) truth of frame 0 (0 = no truth; nearest-neighbour resize),
     "key":        list[str] "sequence/frame"}

Pixel convention: pixel ``(u, v)`` has its centre at integer coordinates, ``u = 0 .. W - 1`` (OpenCV's, and that
of the integer meshgrid Monodepth2 back-projects with). So resizing ``W0 -> W`` maps ``fx -> fx * W / W0`` and
``cx -> (cx + 0.5) * W / W0 - 0.5``, a horizontal flip ``u -> W - 1 - u`` maps ``cx -> W - 1 - cx`` (and the skew
``K[0, 1] -> -K[0, 1]``; ``fx`` unchanged), a crop at ``(top, left)`` maps ``cx -> cx - left``, ``cy -> cy - top``.
Deviation: Monodepth2 / EndoDAC scale a normalised K by ``W`` and ``H`` (corners at 0 and W) and never flip K
(their flip of a centred camera changes nothing at that precision); with our convention the official SCARED K
(``cx = 0.5`` normalised) becomes ``cx = W / 2 - 0.5``, the same image centre. Colour jitter (Monodepth2:
brightness, contrast, saturation 0.2, hue 0.1, with probability 0.5) is drawn once per sample and applied to
every frame alike (albumentations ``ColorJitter`` with ``additional_targets``); the flip (p = 0.5) moves all
frames, the depth and K. Validation / test samples are neither jittered nor flipped. Frames are resized with
Pillow's Lanczos filter (as the official code); truth with centre-aligned nearest neighbour (never interpolated).

Depth truth is z-depth; invalid (0, negative, non-finite, above ``max_depth``) becomes 0. Every image / npy /
tiff goes through :mod:`vadapt.data.io` (``probe`` + ``read_raw``: header size limits, GDAL driver allow-list);
video files are decoded by OpenCV (:func:`vadapt.data.video.read_frames`).

Layouts (``layout`` option):

``"folders"`` (default; what ``vadapt make-endoscopy`` writes)::

    root/<sequence>/images/000000.png ...   frames, any image suffix, file-name order
    root/<sequence>/depth/000000.npy ...    optional truth per frame (same stem): float32 (H, W) .npy, float32
                                            .tif / .tiff, or 16-bit .png; depth = value * depth_scale (your unit)
    root/<sequence>/intrinsics.txt          optional K (3 lines of 3 numbers), pixels of the frame size
    root/<sequence>/poses.txt               optional, one line of 12 numbers (3x4 camera-to-world) per frame;
                                            read and checked (``SequenceRecord.poses``), not used for training
    root/<sequence>.mp4                     a sequence as a video file (.mp4 .avi .mov .mkv .webm .m4v): no truth,
                                            K only from the ``intrinsics`` option; decoded from its start for
                                            every sample (slow for long videos: extract frames instead)

  ``root`` itself may be one sequence (``root/images/``).

``"scared"`` (SCARED, MICCAI 2019 EndoVis; sequences ``dataset{d}/keyframe{k}``, left camera only), either as
EndoDAC's ``SCAREDRAWDataset`` reads it::

    root/{train,test}/dataset{d}/keyframe{k}/data/left/frame_data{n-1:06d}.png        frame number n
    root/{train,test}/dataset{d}/keyframe{k}/data/scene_points/scene_points{n-1:06d}.tiff

  or as AF-SfMLearner's converted copy (``root/dataset{d}/keyframe{k}/image_02/data/{n:010d}.png``; truth from the
  same ``data/scene_points`` folder of the keyframe when present). K: the official fixed normalised intrinsics
  ``fx = 0.82 W, fy = 1.02 H, centre (0.5, 0.5)`` of EndoDAC's ``SCAREDDataset``. Truth: the z channel (third
  band) of the rows ``0 .. H - 1`` (the left view) of the float ``scene_points`` TIFF, millimetres, as EndoDAC's
  ``get_depth`` / ``export_gt_depth.py --split endovis`` read it (``cv2.imread(path, 3)[:, :, 0]``: BGR order puts
  z first). Users get those TIFFs by extracting SCARED's ``scene_points`` archives with the SCARED toolkit
  (``MICCAI_challenge_preprocess`` / ``scared-toolkit``); EndoDAC's ``export_gt_depth.py`` then only stacks them
  into ``splits/endovis/gt_depths.npz`` for its test list, which this module does not need.

``"hamlyn"`` (rectified Hamlyn sequences as EndoDAC's ``HamlynDataset`` reads them, from Recasens et al.'s
Endo-Depth-and-Motion release)::

    root/rectified{NN}/image01/{i}.jpg      left frames (any image suffix), numbered by their stem
    root/rectified{NN}/depth01/{i}.png      16-bit depth, millimetres (read as is, times depth_scale)
    root/rectified{NN}/intrinsics.txt       optional K (not in EndoDAC's reader: NaN without it)

  As EndoDAC, sequences numbered above 13 are cropped to the columns 180 .. 589 (their ``box``), images and depth.

``"c3vd"`` (C3VD, Bobrow et al. 2023, as EndoDAC's ``C3VDDataset`` reads it)::

    root/<sequence>/{i}_color.png           frames, numbered by ``i`` (numeric order, not file-name order)
    root/<sequence>/{i}_depth.tiff          16-bit, 0 .. 65535 = 0 .. 100 mm (EndoDAC: ``* 100 / 65535``)
    root/<sequence>/pose.txt                not read

  As EndoDAC, frames and depth are cropped to rows 180 .. 899, columns 200 .. 1149 (their ``box``) when the frames
  are at least 1150 x 900. C3VD's camera is a fisheye (Scaramuzza model) with no pinhole K: K is NaN unless the
  ``intrinsics`` option gives one.

``"simcol"`` (SimCol3D, Rau et al. 2023; UNVERIFIED against the official docs, which could not be read here)::

    root/SyntheticColon_*/Frames_*/FrameBuffer_{i:04d}.png    frames
    root/SyntheticColon_*/Frames_*/Depth_{i:04d}.png          16-bit, 0 .. 65535 taken as 0 .. 20 cm (stored in mm)
    root/SyntheticColon_*/cam.txt (or in Frames_*)           K: 9 numbers (3x3 row-major) or fx fy cx cy

Truth units: millimetres for scared, hamlyn, c3vd and simcol (times ``depth_scale``, default 1); for folders,
whatever ``value * depth_scale`` gives.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vadapt.preprocessing import Preprocessing, median_size

from .captioned import IMAGE_SUFFIXES, CorruptImageWarning
from .io import DataError, probe, read_raw
from .video import VIDEO_SUFFIXES, count_frames, first_readable, read_frames

Layout = Literal["folders", "scared", "hamlyn", "c3vd", "simcol"]
LAYOUTS = ("folders", "scared", "hamlyn", "c3vd", "simcol")
DEPTH_SUFFIXES = (".npy", ".tif", ".tiff", ".png")
#: EndoDAC's SCAREDDataset intrinsics, normalised by the frame width / height (corner convention)
SCARED_K_NORMALISED = ((0.82, 0.0, 0.5), (0.0, 1.02, 0.5))
HAMLYN_BOX = (180, 590)  # columns kept for rectified sequences numbered above 13 (EndoDAC's box (180, 0, 590, 288))
C3VD_BOX = (180, 900, 200, 1150)  # rows 180:900, columns 200:1150 (EndoDAC's box (200, 180, 1150, 900))
C3VD_DEPTH_FACTOR = 100.0 / 65535.0  # mm per count
SIMCOL_DEPTH_FACTOR = 200.0 / 65535.0  # mm per count (0 .. 20 cm; unverified)


# ---- public helpers ----------------------------------------------------------------------------------------------
def read_depth_truth(path: str | Path, depth_scale: float = 1.0, channel: int | None = None) -> np.ndarray:
    """A depth truth file as float32 ``(H, W)``: ``value * depth_scale``, 0 where there is no truth.

    Reads ``.npy`` (``(H, W)`` or ``(H, W, 1)``), float or 16-bit TIFF (GDAL) and 16-bit PNG (Pillow) through
    :func:`vadapt.data.io.probe` / ``read_raw`` (size checked from the header first). No truth: 0, negative or
    non-finite values. ``channel``: the band of a multi-band file (SCARED's ``scene_points`` z is 2); a
    multi-band file without it is a ``DataError``."""
    info = probe(path, "depth")
    if info.count > 1 and channel is None:
        raise DataError(f"depth file {path} has {info.count} bands: give the channel holding z-depth")
    band = 0 if channel is None else int(channel)
    if not 0 <= band < info.count:
        raise DataError(f"depth file {path} has {info.count} band(s), no channel {band}")
    raw = read_raw(info, indexes=[band], role="depth")[:, :, 0]
    depth = raw.astype(np.float32) * np.float32(depth_scale)
    depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    return depth


def read_intrinsics(path: str | Path) -> np.ndarray:
    """Pinhole intrinsics from a text file as float64 ``(3, 3)`` pixels.

    Accepts 9 numbers (3x3, row-major; our ``intrinsics.txt``), 4 (``fx fy cx cy``), 12 (3x4 ``P``) or 16 (4x4),
    separated by spaces, commas or new lines. The last row must be ``0 0 1`` and ``fx``, ``fy`` positive."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    try:
        values = [float(v) for v in re.split(r"[\s,;]+", text.strip()) if v]
    except ValueError:
        raise DataError(f"intrinsics file {path} holds something other than numbers") from None
    if len(values) == 4:
        fx, fy, cx, cy = values
        K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)
    elif len(values) in (9, 12, 16):
        cols = {9: 3, 12: 4, 16: 4}[len(values)]
        K = np.array(values, dtype=np.float64).reshape(-1, cols)[:3, :3]
    else:
        raise DataError(f"intrinsics file {path} holds {len(values)} numbers; expected 9 (3x3), 4 (fx fy cx cy), "
                        "12 (3x4) or 16 (4x4)")
    return check_intrinsics(K, str(path))


def check_intrinsics(K: Any, source: str) -> np.ndarray:
    """``K`` as float64 ``(3, 3)``, or a ``DataError`` naming ``source``."""
    try:
        K = np.asarray(K, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{source}: intrinsics must be a 3x3 matrix of numbers, got {K!r}") from None
    if K.shape != (3, 3) or not np.isfinite(K).all():
        raise DataError(f"{source}: intrinsics must be a finite 3x3 matrix, got shape {K.shape}")
    if not np.allclose(K[2], [0, 0, 1]) or K[0, 0] <= 0 or K[1, 1] <= 0 or K[1, 0] != 0:
        raise DataError(f"{source}: not a pinhole K (want [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0), "
                        f"got {K.tolist()}")
    return K


def scale_intrinsics(K: np.ndarray, src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    """K ``(3, 3)`` at frame size ``src = (H0, W0)`` -> the same camera at ``dst = (H, W)`` (whole-frame resize,
    pixel centres at integer coordinates: ``c' = (c + 0.5) * s - 0.5``, ``f' = f * s``)."""
    sy, sx = dst[0] / src[0], dst[1] / src[1]
    out = np.array(K, dtype=np.float64)
    out[0, :] *= sx
    out[1, :] *= sy
    out[0, 2] += 0.5 * sx - 0.5
    out[1, 2] += 0.5 * sy - 0.5
    return out


def flip_intrinsics(K: np.ndarray, width: int) -> np.ndarray:
    """K of the left-right mirrored frame of width ``width``: ``cx -> W - 1 - cx``, skew negated."""
    out = np.array(K, dtype=np.float64)
    out[0, 2] = width - 1 - out[0, 2]
    out[0, 1] = -out[0, 1]
    return out


def resize_nearest(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre-aligned nearest-neighbour resize of ``(H0, W0)`` to ``size``: values are picked, never mixed."""
    h0, w0 = depth.shape
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h0 / size[0]).astype(np.int64), h0 - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w0 / size[1]).astype(np.int64), w0 - 1)
    return depth[rows[:, None], cols[None, :]]


# ---- sequences ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    """One frame: its number (neighbours are number + offset), image file (None: frame ``number`` of the
    sequence's video), truth file and key name."""

    number: int
    image: Path | None
    depth: Path | None
    name: str


@dataclass
class SequenceRecord:
    """One camera sequence: frames (by number), how to read its truth, its K and crop.

    ``K`` is in pixels of the frame size ``size = (H0, W0)`` before ``crop`` = ``(top, bottom, left, right)``.
    Truth is ``read_depth_truth(file, depth_factor * depth_scale, depth_channel)`` cut to its first ``H0`` rows
    (SCARED stacks the right view below the left)."""

    name: str
    frames: list[Frame]
    video: Path | None = None
    K: np.ndarray | None = None
    crop: tuple[int, int, int, int] | None = None
    depth_factor: float = 1.0
    depth_channel: int | None = None
    size: tuple[int, int] = (0, 0)
    poses: np.ndarray | None = None
    by_number: dict[int, int] = field(default_factory=dict)


def _natural(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: p.name)


def _first(folder: Path, stem: str, suffixes: Sequence[str]) -> Path | None:
    return next((folder / f"{stem}{s}" for s in suffixes if (folder / f"{stem}{s}").is_file()), None)


def _numbered(files: Sequence[Path], pattern: str, depth_of) -> list[Frame]:
    """Frames of files whose name matches ``pattern`` (one integer group), in numeric order."""
    frames = []
    for path in files:
        match = re.fullmatch(pattern, path.name)
        if match:
            number = int(match.group(1))
            frames.append(Frame(number, path, depth_of(path, number), path.stem))
    return sorted(frames, key=lambda f: f.number)


def read_poses(path: Path, count: int | None = None) -> np.ndarray:
    """``poses.txt``: one line of 12 numbers (3x4 camera-to-world, row-major) per frame -> float64 ``(T, 3, 4)``."""
    rows = [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        poses = np.array([[float(v) for v in row] for row in rows], dtype=np.float64)
    except ValueError:
        raise DataError(f"poses file {path} holds something other than numbers") from None
    if poses.ndim != 2 or poses.shape[1] != 12:
        raise DataError(f"poses file {path}: every line must hold 12 numbers (3x4 camera-to-world)")
    if count is not None and len(poses) != count:
        raise DataError(f"poses file {path} has {len(poses)} lines for {count} frames")
    return poses.reshape(-1, 3, 4)


def find_folders(root: Path) -> list[SequenceRecord]:
    """``"folders"`` layout: ``root/<seq>/images/`` (with ``depth/``, ``intrinsics.txt``, ``poses.txt``) and
    ``root/<seq>.<video>``; ``root/images/`` makes ``root`` one sequence."""
    parents = [root] if (root / "images").is_dir() else sorted(p for p in root.iterdir() if p.is_dir()
                                                                 and (p / "images").is_dir())
    out = []
    for folder in parents:
        name = folder.name if folder != root else root.resolve().name
        frames = []
        for i, image in enumerate(_images(folder / "images")):
            depth = _first(folder / "depth", image.stem, DEPTH_SUFFIXES) if (folder / "depth").is_dir() else None
            frames.append(Frame(i, image, depth, image.stem))
        record = SequenceRecord(name, frames)
        if (folder / "intrinsics.txt").is_file():
            record.K = read_intrinsics(folder / "intrinsics.txt")
        if (folder / "poses.txt").is_file():
            record.poses = read_poses(folder / "poses.txt", len(frames))
        out.append(record)
    if root not in parents:
        for video in sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES):
            out.append(SequenceRecord(video.stem, [], video=video))
    return out


def find_scared(root: Path) -> list[SequenceRecord]:
    """``"scared"`` layout (module docstring): EndoDAC's ``data/left/frame_data*.png`` or AF-SfMLearner's
    ``image_02/data/*.png`` keyframes, truth from ``data/scene_points``."""
    out = []
    for keyframe in sorted(p for p in root.glob("**/keyframe*") if p.is_dir() and p.parent.name.startswith("dataset")):
        points = keyframe / "data" / "scene_points"

        def depth_of(_: Path, number: int, points: Path = points) -> Path | None:
            path = points / f"scene_points{number - 1:06d}.tiff"
            return path if path.is_file() else None

        if (keyframe / "data" / "left").is_dir():
            files = _images(keyframe / "data" / "left")
            frames = [Frame(f.number + 1, f.image, depth_of(f.image, f.number + 1), f.name)
                      for f in _numbered(files, r"frame_data(\d+)\.\w+", lambda p, n: None)]
        elif (keyframe / "image_02" / "data").is_dir():
            frames = _numbered(_images(keyframe / "image_02" / "data"), r"(\d+)\.\w+", depth_of)
        else:
            continue
        out.append(SequenceRecord(f"{keyframe.parent.name}/{keyframe.name}", frames, depth_channel=2))
    return out


def find_hamlyn(root: Path) -> list[SequenceRecord]:
    """``"hamlyn"`` layout: ``rectified*/image01`` frames with ``depth01/<stem>.png`` truth (mm)."""
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and (p / "image01").is_dir()):
        def depth_of(image: Path, _: int, folder: Path = folder) -> Path | None:
            path = folder / "depth01" / f"{image.stem}.png"
            return path if path.is_file() else None

        record = SequenceRecord(folder.name, _numbered(_images(folder / "image01"), r"(\d+)\.\w+", depth_of))
        if (folder / "intrinsics.txt").is_file():
            record.K = read_intrinsics(folder / "intrinsics.txt")
        digits = re.search(r"(\d+)$", folder.name)
        if digits and int(digits.group(1)) > 13:
            record.crop = (0, -1, *HAMLYN_BOX)  # rows: all (resolved against the frame size in setup)
        out.append(record)
    return out


def find_c3vd(root: Path) -> list[SequenceRecord]:
    """``"c3vd"`` layout: ``<seq>/{i}_color.png`` with ``{i}_depth.tiff`` (16-bit, 100 mm full scale)."""
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        def depth_of(image: Path, number: int, folder: Path = folder) -> Path | None:
            path = folder / f"{image.name[: -len('_color.png')]}_depth.tiff"
            return path if path.is_file() else None

        frames = _numbered(sorted(folder.glob("*_color.png")), r"(\d+)_color\.png", depth_of)
        if frames:
            out.append(SequenceRecord(folder.name, frames, crop=C3VD_BOX, depth_factor=C3VD_DEPTH_FACTOR))
    return out


def find_simcol(root: Path) -> list[SequenceRecord]:
    """``"simcol"`` layout: ``SyntheticColon_*/Frames_*/FrameBuffer_{i:04d}.png`` with ``Depth_{i:04d}.png``."""
    out = []
    for folder in sorted(p for p in root.glob("**/Frames_*") if p.is_dir()):
        def depth_of(_: Path, number: int, folder: Path = folder) -> Path | None:
            path = folder / f"Depth_{number:04d}.png"
            return path if path.is_file() else None

        frames = _numbered(sorted(folder.glob("FrameBuffer_*.png")), r"FrameBuffer_(\d+)\.png", depth_of)
        name = folder.relative_to(root).as_posix()
        record = SequenceRecord(name, frames, depth_factor=SIMCOL_DEPTH_FACTOR)
        cam = _first(folder, "cam", (".txt",)) or _first(folder.parent, "cam", (".txt",))
        if cam is not None:
            record.K = read_intrinsics(cam)
        out.append(record)
    return out


FINDERS = {"folders": find_folders, "scared": find_scared, "hamlyn": find_hamlyn, "c3vd": find_c3vd,
           "simcol": find_simcol}


# ---- reading one sample -------------------------------------------------------------------------------------------
def resize_frame(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An 8-bit ``(H, W, 3)`` frame resized to ``size`` ``(h, w)`` with Pillow's Lanczos filter, as the EndoDAC data
    loader resizes (antialiased when shrinking); ``vadapt infer`` resizes depth inputs with this too."""
    if image.shape[:2] == tuple(size):
        return image
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((size[1], size[0]), Image.Resampling.LANCZOS)
    return np.asarray(resized)


def read_rgb(path: Path) -> np.ndarray:
    """An image file as uint8 ``(H, W, 3)`` through the hardened reader (grey / palette expanded, alpha dropped;
    16-bit colour scaled to 8 bits)."""
    info = probe(path, "image", want_rgb=True)
    raw = read_raw(info)[:, :, :3]
    if raw.shape[2] == 1:
        raw = np.repeat(raw, 3, axis=2)
    if raw.dtype == np.uint16:
        raw = (raw.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif raw.dtype != np.uint8:
        raise DataError(f"frame {path} has {raw.dtype} pixels; frames must be 8-bit (or 16-bit) colour")
    return raw


def _crop_box(crop: tuple[int, int, int, int] | None, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """``(top, bottom, left, right)`` of ``crop`` in a frame of ``size`` (``bottom = -1``: all rows); None when
    the frame is too small for it (then nothing is cropped)."""
    if crop is None:
        return None
    top, bottom, left, right = crop
    bottom = size[0] if bottom < 0 else bottom
    if bottom > size[0] or right > size[1]:
        return None
    return top, bottom, left, right


def _color_jitter():
    import albumentations as A

    return A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1, p=1.0)


class DepthVideoDataset(Dataset):
    """Items ``{"frames", "frames_aug": (F, 3, H, W), "K": (3, 3), "depth": (1, H, W), "key"}`` (module docs)."""

    def __init__(self, sequences: Sequence[SequenceRecord], samples: Sequence[tuple[int, int]],
                 frame_ids: Sequence[int], stride: int, size: tuple[int, int], train: bool, augment: bool,
                 depth_scale: float = 1.0, max_depth: float | None = None) -> None:
        self.sequences, self.samples = list(sequences), list(samples)
        self.frame_ids, self.stride, self.size = list(frame_ids), stride, size
        self.train, self.augment = train, augment
        self.depth_scale, self.max_depth = depth_scale, max_depth
        self.bad: set[int] = set()
        self.jitter = None
        if train and augment:
            import albumentations as A

            extra = {f"image{i}": "image" for i in range(1, len(self.frame_ids))}
            self.jitter = A.Compose([_color_jitter()], additional_targets=extra)

    def __len__(self) -> int:
        return len(self.samples)

    def key(self, index: int) -> str:
        seq, frame = self.samples[index]
        record = self.sequences[seq]
        return f"{record.name}/{record.frames[frame].name}"

    def _frames(self, record: SequenceRecord, index: int) -> list[np.ndarray]:
        number = record.frames[index].number
        wanted = [record.by_number[number + i * self.stride] for i in self.frame_ids]
        if record.video is not None:
            images = [np.asarray(im) for im in read_frames(record.video, wanted)]
        else:
            images = [read_rgb(record.frames[w].image) for w in wanted]
        for w, image in zip(wanted, images):
            if image.shape[:2] != record.size:
                raise DataError(f"frame {record.frames[w].name} of {record.name} is {image.shape[1]}x"
                                f"{image.shape[0]}, not the sequence's {record.size[1]}x{record.size[0]}")
        return images

    def _depth(self, record: SequenceRecord, frame: Frame, box) -> np.ndarray:
        if frame.depth is None:
            return np.zeros(self.size, np.float32)
        depth = read_depth_truth(frame.depth, record.depth_factor * self.depth_scale, record.depth_channel)
        depth = depth[: record.size[0]] if record.depth_channel is not None else depth  # SCARED: left view
        if depth.shape != record.size:
            raise DataError(f"depth {frame.depth} is {depth.shape[1]}x{depth.shape[0]} but its frame is "
                            f"{record.size[1]}x{record.size[0]}")
        if box is not None:
            depth = depth[box[0] : box[1], box[2] : box[3]]
        if self.max_depth is not None:
            depth = np.where(depth > self.max_depth, np.float32(0), depth)
        return resize_nearest(depth, self.size).astype(np.float32)

    def _load(self, index: int) -> dict[str, Any]:
        seq, frame_index = self.samples[index]
        record = self.sequences[seq]
        box = _crop_box(record.crop, record.size)
        frames = self._frames(record, frame_index)
        if box is not None:
            frames = [f[box[0] : box[1], box[2] : box[3]] for f in frames]
        cropped = frames[0].shape[:2]
        h, w = self.size
        frames = [resize_frame(f, (h, w)) for f in frames]
        depth = self._depth(record, record.frames[frame_index], box)
        K = np.full((3, 3), np.nan)
        if record.K is not None:
            K = np.array(record.K, dtype=np.float64)
            if box is not None:
                K[0, 2] -= box[2]
                K[1, 2] -= box[0]
            K = scale_intrinsics(K, cropped, self.size)
        if self.train and self.augment and bool(torch.rand(()) < 0.5):
            frames = [np.ascontiguousarray(f[:, ::-1]) for f in frames]
            depth = np.ascontiguousarray(depth[:, ::-1])
            K = flip_intrinsics(K, w)
        augmented = frames
        if self.jitter is not None and bool(torch.rand(()) < 0.5):
            from .augment import seed_transform

            seed_transform(self.jitter, int(torch.randint(0, 2**31 - 1, ())))
            out = self.jitter(image=frames[0], **{f"image{i}": f for i, f in enumerate(frames[1:], 1)})
            augmented = [out["image"]] + [out[f"image{i}"] for i in range(1, len(frames))]

        def stack(images: list[np.ndarray]) -> torch.Tensor:
            return torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy()).float().div_(255.0)

        plain = stack(frames)
        return {"frames": plain, "frames_aug": plain.clone() if augmented is frames else stack(augmented),
                "K": torch.from_numpy(K.astype(np.float32)), "depth": torch.from_numpy(depth[None].copy()),
                "key": self.key(index)}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return first_readable(index, len(self), self.bad, self._load, self.key, "sample")


# ---- the datamodule ----------------------------------------------------------------------------------------------
class MonocularVideoDataModule(L.LightningDataModule):
    """Monocular video sequences for self-supervised depth (module docstring: layouts, batches, conventions)."""

    def __init__(
        self,
        root: str,
        layout: Layout = "folders",
        size: tuple[int, int] = (128, 160),
        frame_ids: list[int] = [0, -1, 1],  # noqa: B006 - a YAML default, never mutated
        frame_stride: int = 1,
        val_sequences: list[str] | None = None,
        test_sequences: list[str] | None = None,
        val_fraction: float = 0.25,
        intrinsics: list[list[float]] | None = None,
        depth_scale: float = 1.0,
        max_depth: float | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        augment: bool = True,
        max_frames_per_sequence: int | None = None,
        seed: int = 0,
        make_if_missing: bool = False,
    ) -> None:
        """
        Args:
            root: the data folder (relative roots to the working dir).
            layout: how ``root`` is organised: ``folders`` (ours), ``scared``, ``hamlyn``, ``c3vd``, ``simcol``.
            size: ``[height, width]`` every frame (and truth) is resized to; K is scaled with it. EndoDAC: 256x320.
            frame_ids: frame offsets of a sample, the target ``0`` first (Monodepth2: ``[0, -1, 1]``).
            frame_stride: frames between neighbours (offset ``i`` reads frame ``t + i * frame_stride``).
            val_sequences: sequence names held out for validation; ``None``: ``val_fraction`` of the sequences.
            test_sequences: sequence names for testing (never in train or validation); ``None``: no test split.
            val_fraction: without ``val_sequences``, the share of sequences held out for validation (seeded, at
                least one; whole sequences, so validation sees unseen cameras and scenes). 0: no validation.
            intrinsics: one known ``K`` (3x3, pixels of the ORIGINAL frame size, before any crop) for every
                sequence; overrides the layout's files and fixed values.
            depth_scale: truth multiplier (``depth = value * depth_scale``; e.g. 0.001 for 16-bit PNGs in mm ->
                metres). Applied on top of the layout's own unit conversion.
            max_depth: truth above it is treated as no truth (0); ``None``: no limit.
            batch_size, num_workers: data loader settings.
            augment: training samples get Monodepth2's colour jitter (p = 0.5, same for all frames of a sample) in
                ``frames_aug`` and a horizontal flip (p = 0.5) of frames, truth and K.
            max_frames_per_sequence: use only the first this-many frames of each sequence (quick runs).
            seed: seed of the sequence split.
            make_if_missing: when ``root`` does not exist, write the synthetic endoscopy set there first
                (``vadapt make-endoscopy --output ROOT`` with its defaults: 8 videos of 40 frames, seconds; layout
                ``folders``): the offline quickstart runs with one command.
        """
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.root = Path(root).expanduser()
        if make_if_missing and layout != "folders":
            raise DataError(f"make_if_missing writes the 'folders' layout, but layout is {layout!r}")
        if not self.root.is_dir() and not (make_if_missing and not self.root.exists()):
            raise FileNotFoundError(f"data folder not found: root={str(root)!r} (resolved to {self.root.resolve()})")
        if layout not in LAYOUTS:
            raise DataError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
        if len(size) != 2 or min(int(s) for s in size) < 1:
            raise DataError(f"size must be [height, width] of positive ints, got {size!r}")
        self.size = (int(size[0]), int(size[1]))
        self.frame_ids = [int(i) for i in frame_ids]
        if not self.frame_ids or self.frame_ids[0] != 0 or len(set(self.frame_ids)) != len(self.frame_ids):
            raise DataError(f"frame_ids must start with 0 and not repeat, got {list(frame_ids)}")
        if frame_stride < 1:
            raise DataError(f"frame_stride must be >= 1, got {frame_stride}")
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if batch_size < 1 or num_workers < 0:
            raise DataError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
        if not (np.isfinite(depth_scale) and depth_scale > 0):
            raise DataError(f"depth_scale must be a positive number, got {depth_scale}")
        if max_frames_per_sequence is not None and max_frames_per_sequence < 1:
            raise DataError(f"max_frames_per_sequence must be >= 1, got {max_frames_per_sequence}")
        self.K = check_intrinsics(intrinsics, "intrinsics") if intrinsics is not None else None
        self.sequences: list[SequenceRecord] = []
        self.skipped: list[str] = []
        self.splits: dict[str, list[str]] = {}
        self.datasets: dict[str, DepthVideoDataset] = {}

    # -- discovery -------------------------------------------------------------------------------------------------
    def _prepare(self, record: SequenceRecord) -> str | None:
        """Fill in ``size`` / ``K`` / ``by_number`` of a found sequence; why it cannot be used, or None."""
        hp = self.hparams
        try:
            if record.video is not None:
                count = count_frames(record.video)
                record.frames = [Frame(i, None, None, f"{i:06d}") for i in range(count)]
                first = np.asarray(read_frames(record.video, [0])[0])
                record.size = first.shape[:2]
            elif record.frames:
                info = probe(record.frames[0].image, "image", want_rgb=True)
                record.size = (info.height, info.width)
        except Exception as exc:  # noqa: BLE001 - decoders raise many types
            return f"unreadable: {type(exc).__name__}: {exc}"
        if hp.max_frames_per_sequence is not None:
            record.frames = record.frames[: hp.max_frames_per_sequence]
        if self.K is not None:
            record.K = self.K
        elif hp.layout == "scared":
            h, w = record.size
            (fx, _, cx), (_, fy, cy) = SCARED_K_NORMALISED
            record.K = np.array([[fx * w, 0, cx * w - 0.5], [0, fy * h, cy * h - 0.5], [0, 0, 1]])
        record.by_number = {f.number: i for i, f in enumerate(record.frames)}
        if not self._targets(record):
            return (f"too short: {len(record.frames)} frame(s), no target has all neighbours "
                    f"{[i * hp.frame_stride for i in self.frame_ids]}")
        return None

    def _targets(self, record: SequenceRecord) -> list[int]:
        stride = self.hparams.frame_stride
        return [i for i, f in enumerate(record.frames)
                if all(f.number + o * stride in record.by_number for o in self.frame_ids)]

    def _split_names(self, names: list[str]) -> dict[str, list[str]]:
        hp = self.hparams
        chosen: dict[str, list[str]] = {}
        for split in ("test", "val"):
            given = hp[f"{split}_sequences"]
            if given is not None:
                unknown = [n for n in given if n not in names]
                if unknown:
                    raise DataError(f"{split}_sequences names {unknown}, not usable sequences of {self.root}; "
                                    f"usable: {names}")
                chosen[split] = list(given)
        both = set(chosen.get("test", [])) & set(chosen.get("val", []))
        if both:
            raise DataError(f"sequences {sorted(both)} are in both val_sequences and test_sequences")
        pool = [n for n in names if n not in chosen.get("test", [])]
        if "val" not in chosen:
            chosen["val"] = []
            if hp.val_fraction > 0 and len(pool) >= 2:
                n_val = min(max(1, int(round(len(pool) * hp.val_fraction))), len(pool) - 1)
                order = np.random.default_rng(hp.seed).permutation(len(pool))
                chosen["val"] = sorted(pool[i] for i in order[:n_val])
            elif hp.val_fraction > 0:
                warnings.warn(f"{self.root} has one training sequence: nothing is held out for validation (add "
                              "sequences or set val_sequences)", UserWarning, stacklevel=3)
        chosen["train"] = [n for n in pool if n not in chosen["val"]]
        if not chosen["train"]:
            raise DataError(f"no sequence of {self.root} is left for training (all are in val / test)")
        return chosen

    def prepare_data(self) -> None:
        """With ``make_if_missing``: write the synthetic set into a missing ``root``."""
        if self.hparams.make_if_missing and not self.root.exists():
            from vadapt.data.endoscopy import make_endoscopy

            print(f"{self.root} does not exist: writing the synthetic endoscopy set there (make_if_missing)")
            make_endoscopy(self.root)

    def setup(self, stage: str | None = None) -> None:
        """Find the sequences, drop unusable ones (one warning), split them by sequence and build the datasets."""
        if self.datasets:
            return
        self.prepare_data()
        hp = self.hparams
        found = FINDERS[hp.layout](self.root)
        if not found:
            raise DataError(f"{self.root} holds no {hp.layout!r} sequences (see the layouts in "
                            "vadapt.data.depth_video's docstring)")
        usable, bad = [], []
        for record in found:
            why = self._prepare(record)
            (bad.append(f"{record.name} ({why})") if why else usable.append(record))
        self.skipped = bad
        if not usable:
            raise DataError(f"none of the {len(found)} sequences in {self.root} can be used: {'; '.join(bad[:5])}")
        if bad:
            warnings.warn(f"{len(bad)} of {len(found)} sequences in {self.root} are skipped: {'; '.join(bad[:10])}",
                          CorruptImageWarning, stacklevel=2)
        self.sequences = usable
        self.splits = self._split_names([r.name for r in usable])
        index = {r.name: i for i, r in enumerate(usable)}
        for split, names in self.splits.items():
            records = [usable[index[n]] for n in names]
            samples = [(s, t) for s, record in enumerate(records) for t in self._targets(record)]
            if samples:
                self.datasets[split] = DepthVideoDataset(
                    records, samples, self.frame_ids, hp.frame_stride, self.size, train=split == "train",
                    augment=hp.augment, depth_scale=hp.depth_scale, max_depth=hp.max_depth)

    # -- loaders ---------------------------------------------------------------------------------------------------
    def _loader(self, split: str) -> DataLoader | list:
        self.setup()
        dataset = self.datasets.get(split)
        if dataset is None:
            return []
        hp = self.hparams
        return DataLoader(dataset, batch_size=hp.batch_size, shuffle=split == "train", num_workers=hp.num_workers,
                          persistent_workers=hp.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader | list:
        return self._loader("test" if "test" in self.datasets else "val")

    def preprocessing(self) -> Preprocessing:
        """8-bit frames scaled by 1/255, resized whole to ``size`` (from the median training frame size)."""
        self.setup()
        sizes = [r.size for r in self.sequences if r.name in self.splits["train"]]
        return Preprocessing(scale=1.0 / 255.0, offset=0.0, nodata=None, resize=self.size,
                             source_size=median_size(sizes))
