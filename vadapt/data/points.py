"""Point-cloud classification and part-segmentation data: readers, Point-MAE augmentation, datamodules.

Readers (``read_points``), by file suffix:

* meshes ``.off`` (own parser; also ModelNet40's broken ``OFF490 518 0`` headers), ``.obj`` and ``.ply`` with
  faces (trimesh): ``num_points`` points sampled on the surface, area-weighted (a fresh sample every epoch in
  training, a fixed one in evaluation). A ``.off`` / ``.obj`` with vertices but no faces is an error (save
  point clouds as ``.ply``, ``.npy`` or ``.xyz``);
* point files: ``.ply`` without faces, ``.npy`` ``(N, 3+)`` and whitespace (or comma) separated columns
  ``.xyz`` / ``.txt`` / ``.pts``; the first three columns are x, y, z.

Clouds are centred at their mean and divided by their largest norm (unit sphere, as Point-MAE / PointNet++),
then ``num_points`` are taken: a random subset (``sampling: random``) or farthest-point sampling (``fps``); a
cloud with fewer points is resampled with replacement, with one warning per dataset.

Datamodules (batches ``{"points": float32 (B, N, 3), "label": int64 (B,)}``; part segmentation adds ``"parts":
int64 (B, N)`` global part ids and ``"category": int64 (B,)``, the object's category):

* ``PointFolderDataModule`` -- ModelNet40 folders ``root/<class>/{train,test}/*.off`` (any readable suffix;
  ``vadapt make-shapes`` writes this layout), ``parts: true`` for per-point labels ``<stem>_parts.npy``;
* ``ScanObjectNNDataModule`` -- ScanObjectNN ``.h5`` files with ``data`` ``(N, P, 3)`` and ``label`` ``(N,)``;
* ``ShapeNetPartDataModule`` -- ShapeNetPart (``shapenetcore_partanno_segmentation_benchmark_v0_normal``):
  16 categories, 50 parts.

Training clouds get Point-MAE's ``PointcloudScaleAndTranslate`` (a random scale in [2/3, 3/2] and shift in
[-0.2, 0.2] per axis) and optionally a random rotation about the up axis; validation and test clouds none.
Example::

    data:
      class_path: vadapt.data.points.PointFolderDataModule
      init_args:
        root: ../shared/data/modelnet40      # root/airplane/train/airplane_0001.off ...
        num_points: 1024
        val_fraction: 0.1
        batch_size: 32
"""

from __future__ import annotations

import importlib.util
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .base import resolve_root, run_parallel
from .io import DataError
from .safe_open import load_npy
from .shapes import sample_triangles

MESH_SUFFIXES = (".off", ".obj")
POINT_SUFFIXES = (".npy", ".xyz", ".txt", ".pts")
KNOWN_SUFFIXES = (".ply", *MESH_SUFFIXES, *POINT_SUFFIXES)
PARTS_SUFFIX = "_parts.npy"
SPLITS = ("train", "val", "test")
Sampling = Literal["random", "fps"]
Axis = Literal["x", "y", "z"]

SCANOBJECTNN_CLASSES = ("bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table", "bed",
                        "pillow", "sink", "sofa", "toilet")
# ShapeNetPart: category -> its global part ids (the 50 parts), as in PointNet++ / Point-MAE
SHAPENETPART_PARTS = {
    "Airplane": [0, 1, 2, 3], "Bag": [4, 5], "Cap": [6, 7], "Car": [8, 9, 10, 11], "Chair": [12, 13, 14, 15],
    "Earphone": [16, 17, 18], "Guitar": [19, 20, 21], "Knife": [22, 23], "Lamp": [24, 25, 26, 27],
    "Laptop": [28, 29], "Motorbike": [30, 31, 32, 33, 34, 35], "Mug": [36, 37], "Pistol": [38, 39, 40],
    "Rocket": [41, 42, 43], "Skateboard": [44, 45, 46], "Table": [47, 48, 49],
}


class PointCountWarning(UserWarning):
    """A cloud has fewer points than requested and is resampled with replacement."""


# ---- reading -------------------------------------------------------------------------------------------------
def _check_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in KNOWN_SUFFIXES:
        raise DataError(f"{path} has an unknown extension {path.suffix!r}; known: {', '.join(KNOWN_SUFFIXES)}")
    return suffix


def read_columns(path: str | Path) -> np.ndarray:
    """A whitespace- or comma-separated text table (``.xyz``, ``.txt``, ``.pts``) as float32 ``(rows, columns)``."""
    text = Path(path).read_text().replace(",", " ")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        return np.zeros((0, 3), np.float32)
    cols = len(lines[0].split())
    try:
        values = np.array(" ".join(lines).split(), dtype=np.float32)
    except ValueError:
        raise DataError(f"{path} has a value that is not a number; expected columns x y z ...") from None
    if values.size % cols:
        raise DataError(f"{path} has rows of different lengths (the first has {cols} columns)")
    return values.reshape(-1, cols)


def read_off(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices ``(V, 3)`` and triangles (polygons fan-split) ``(F, 3)`` of an OFF file, including ModelNet40's
    headers glued to the counts (``OFF490 518 0``)."""
    tokens = Path(path).read_text().split()
    if not tokens or not tokens[0].upper().startswith("OFF"):
        raise DataError(f"{path} is not an OFF file: it does not start with 'OFF'")
    rest = tokens[0][3:]
    tokens = ([rest] if rest else []) + tokens[1:]
    try:
        nv, nf = int(tokens[0]), int(tokens[1])
        verts = np.array(tokens[3: 3 + 3 * nv], dtype=np.float64).reshape(nv, 3)
        body = np.array(tokens[3 + 3 * nv:], dtype=np.float64)
    except (IndexError, ValueError):
        raise DataError(f"{path} is a malformed OFF file: its vertex / face counts do not match its contents") from None
    faces: list[np.ndarray] = []
    if nf and body.size >= 4 * nf and np.all(body[: 4 * nf: 4] == 3):  # all triangles: one reshape
        faces.append(body[: 4 * nf].reshape(nf, 4)[:, 1:])
    else:
        pos = 0
        for _ in range(nf):
            if pos >= body.size:
                raise DataError(f"{path} is a malformed OFF file: it lists fewer faces than its header's {nf}")
            k = int(body[pos])
            poly = body[pos + 1: pos + 1 + k]
            if k >= 3:  # a fan of triangles around the first corner
                faces.append(np.stack([np.full(k - 2, poly[0]), poly[1:-1], poly[2:]], 1))
            pos += 1 + k
    tris = np.concatenate(faces).astype(np.int64) if faces else np.zeros((0, 3), np.int64)
    if tris.size and (tris.min() < 0 or tris.max() >= nv):
        raise DataError(f"{path} is a malformed OFF file: a face uses a vertex index outside 0..{nv - 1}")
    return verts, tris


def _read_trimesh(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import trimesh

    try:
        loaded = trimesh.load(str(path), process=False)
    except Exception as exc:  # trimesh raises many types for unreadable files
        raise DataError(f"{path} could not be read as a mesh or point cloud ({type(exc).__name__}: {exc})") from None
    if isinstance(loaded, trimesh.Scene):
        geoms = list(loaded.dump()) if loaded.geometry else []
        meshes = [g for g in geoms if isinstance(g, trimesh.Trimesh)]
        if meshes:
            loaded = trimesh.util.concatenate(meshes)
        elif geoms:
            loaded = trimesh.PointCloud(np.concatenate([np.asarray(g.vertices) for g in geoms]))
        else:
            return np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    faces = np.asarray(getattr(loaded, "faces", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
    return np.asarray(loaded.vertices, dtype=np.float64).reshape(-1, 3), faces


def load_cloud(path: str | Path, num_points: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """The raw points of a file, un-normalised, and whether they were sampled on a mesh surface (then exactly
    ``num_points``). Bad files raise ``DataError`` naming the file."""
    path = Path(path)
    suffix = _check_suffix(path)
    if not path.is_file():
        raise FileNotFoundError(f"point file not found: {path}")
    if suffix == ".npy":
        try:
            array = load_npy(path)
        except ValueError as exc:
            raise DataError(f"{path} could not be read as a .npy array ({exc})") from None
        if array.ndim != 2 or array.shape[1] < 3:
            raise DataError(f"{path} holds an array of shape {array.shape}; expected (points, 3 or more) columns")
        xyz, mesh = array[:, :3], False
    elif suffix in (".xyz", ".txt", ".pts"):
        array = read_columns(path)
        if array.shape[1] < 3:
            raise DataError(f"{path} has {array.shape[1]} columns; expected at least x y z")
        xyz, mesh = array[:, :3], False
    else:
        verts, faces = read_off(path) if suffix == ".off" else _read_trimesh(path)
        if len(faces) == 0 and len(verts) and suffix in MESH_SUFFIXES:
            raise DataError(f"mesh {path} has {len(verts)} vertices but no faces, so there is no surface to sample; "
                            "save point clouds as .ply, .npy or .xyz")
        if len(faces):
            tris = verts[faces]
            if not np.isfinite(tris).all():
                raise DataError(f"{path} has NaN or infinite vertex coordinates")
            try:
                xyz, _ = sample_triangles(tris, num_points, rng)
            except DataError:
                raise DataError(f"mesh {path} has {len(faces)} faces but all of them have zero area") from None
            mesh = True
        else:
            xyz, mesh = verts, False
    xyz = np.asarray(xyz, dtype=np.float32)
    if len(xyz) == 0:
        raise DataError(f"{path} has no points")
    if not np.isfinite(xyz).all():
        bad = int((~np.isfinite(xyz).all(1)).sum())
        raise DataError(f"{path} has {bad} point(s) with NaN or infinite coordinates")
    return xyz, mesh


def normalize_points(xyz: np.ndarray, source: str | Path = "the cloud") -> np.ndarray:
    """Centre at the mean and scale into the unit sphere (largest norm 1); float32."""
    xyz = np.asarray(xyz, dtype=np.float32)
    centred = xyz - xyz.mean(0, keepdims=True)
    radius = float(np.sqrt((centred**2).sum(1)).max())
    if not radius > 0:
        raise DataError(f"{source} has all its {len(xyz)} point(s) at one position, so it cannot be normalised")
    return centred / radius


def farthest_point_indices(xyz: np.ndarray, k: int, start: int = 0) -> np.ndarray:
    """Indices of ``k`` farthest-point samples of ``xyz`` ``(N, 3)`` (``k <= N``), starting at ``start``."""
    n = len(xyz)
    out = np.empty(k, dtype=np.int64)
    dist = np.full(n, np.inf, dtype=np.float32)
    current = start
    for i in range(k):
        out[i] = current
        np.minimum(dist, ((xyz - xyz[current]) ** 2).sum(1), out=dist)
        current = int(dist.argmax())
    return out


def choose_points(xyz: np.ndarray, num_points: int, rng: np.random.Generator,
                  sampling: Sampling = "random") -> np.ndarray:
    """Indices of ``num_points`` of ``xyz``: all of them (shuffled) and the rest drawn with replacement when
    there are fewer; else a random subset or farthest-point samples."""
    n = len(xyz)
    if n < num_points:
        return np.concatenate([rng.permutation(n), rng.integers(0, n, num_points - n)])
    if sampling == "fps":
        return farthest_point_indices(xyz, num_points, int(rng.integers(n)))
    if sampling != "random":
        raise DataError(f"sampling must be 'random' or 'fps', got {sampling!r}")
    return rng.permutation(n)[:num_points] if n > num_points else rng.permutation(n)


def read_points(path: str | Path, num_points: int, rng: np.random.Generator | None = None, normalize: bool = True,
                sampling: Sampling = "random", warn: bool = True) -> np.ndarray:
    """``num_points`` points of a mesh or point file as float32 ``(num_points, 3)``, unit-sphere normalised.

    A point file with fewer points is resampled with replacement (a ``PointCountWarning`` unless ``warn`` is
    false; the datamodules warn once per dataset instead).
    """
    rng = rng if rng is not None else np.random.default_rng()
    xyz, _ = load_cloud(path, num_points, rng)
    if normalize:
        xyz = normalize_points(xyz, path)
    if warn and len(xyz) < num_points:
        warnings.warn(f"{path} has {len(xyz)} points, fewer than the {num_points} requested: resampled with "
                      "replacement", PointCountWarning, stacklevel=2)
    return xyz[choose_points(xyz, num_points, rng, sampling)]


def bundled_meshes() -> dict[str, Path]:
    """Real meshes shipped inside the pyvista wheel (``airplane``, ``ant``, ``nut``, ``sphere`` ``.ply``), by
    name; empty when pyvista is not installed. pyvista itself is not imported (no VTK load, no download)."""
    spec = importlib.util.find_spec("pyvista")
    if spec is None or not spec.submodule_search_locations:
        return {}
    folder = Path(next(iter(spec.submodule_search_locations))) / "examples"
    return {p.stem: p for p in sorted(folder.glob("*.ply"))}


# ---- augmentation ----------------------------------------------------------------------------------------------
class PointAugment:
    """Point-MAE's ``PointcloudScaleAndTranslate`` (per-axis scale in ``scale`` and shift in ``[-translate,
    translate]``), optionally first a random rotation about ``up_axis``; on a ``(N, 3)`` tensor, drawn from
    torch's generator (seeded per DataLoader worker and by ``seed_everything``)."""

    def __init__(self, scale: Sequence[float] = (2 / 3, 3 / 2), translate: float = 0.2, rotate: bool = False,
                 up_axis: Axis = "y") -> None:
        lo, hi = (float(v) for v in scale)
        if not 0 < lo <= hi:
            raise DataError(f"scale_range must be [low, high] with 0 < low <= high, got {list(scale)}")
        if translate < 0:
            raise DataError(f"translate must be >= 0, got {translate}")
        if up_axis not in ("x", "y", "z"):
            raise DataError(f"up_axis must be 'x', 'y' or 'z', got {up_axis!r}")
        self.scale, self.translate, self.rotate = (lo, hi), float(translate), rotate
        self.axis = "xyz".index(up_axis)

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        if self.rotate:
            angle = float(torch.rand(())) * 2 * math.pi
            c, s = math.cos(angle), math.sin(angle)
            i, j = [k for k in range(3) if k != self.axis]
            rot = torch.eye(3, dtype=points.dtype)
            rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
            points = points @ rot.T
        lo, hi = self.scale
        scale = lo + (hi - lo) * torch.rand(3, dtype=points.dtype)
        shift = (torch.rand(3, dtype=points.dtype) * 2 - 1) * self.translate
        return points * scale + shift


# ---- datasets ----------------------------------------------------------------------------------------------
class PointDataset(Dataset):
    """Items ``{"points", "label"}`` (+ ``"parts"``, ``"category"``) from a list of sources.

    A source is a file path (``read`` by suffix, part labels from ``parts_files``) or an index into ``arrays``
    ``(N, P, 3)``; ``parts`` are per-point global part ids aligned with the raw points. Training items draw
    their points (and mesh samples) from torch's generator; evaluation items from ``seed`` and the index, so
    they are the same every epoch.
    """

    def __init__(self, name: str, labels: Sequence[int], num_points: int, files: Sequence[Path] | None = None,
                 arrays: np.ndarray | None = None, parts_files: Sequence[Path] | None = None,
                 text_parts: bool = False, normalize: bool = True, sampling: Sampling = "random",
                 augment: PointAugment | None = None, seed: int = 0, num_parts: int | None = None) -> None:
        self.name, self.labels, self.num_points = name, [int(v) for v in labels], num_points
        self.files, self.arrays, self.parts_files = files, arrays, parts_files
        self.text_parts, self.normalize, self.sampling = text_parts, normalize, sampling
        self.augment, self.seed, self.num_parts = augment, seed, num_parts
        self.with_parts = parts_files is not None or text_parts
        self.warned = False

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self, index: int) -> str:
        return str(self.files[index]) if self.files is not None else f"{self.name} cloud {index}"

    def raw(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None, bool]:
        """(points (M, 3), parts (M,) or None, sampled on a mesh)."""
        if self.arrays is not None:
            xyz = np.asarray(self.arrays[index], dtype=np.float32)
            if not np.isfinite(xyz).all():
                raise DataError(f"{self.describe(index)} has NaN or infinite coordinates")
            return xyz, None, False
        path = self.files[index]
        if self.text_parts:  # ShapeNetPart: x y z nx ny nz part
            table = read_columns(path)
            if table.shape[1] < 4 or len(table) == 0:
                raise DataError(f"{path} has {table.shape[1]} columns and {len(table)} rows; expected rows of "
                                "x y z nx ny nz part")
            xyz, parts = table[:, :3], table[:, -1]
            if not np.isfinite(xyz).all():
                raise DataError(f"{path} has NaN or infinite coordinates")
            return xyz, self._check_parts(parts, path), False
        xyz, mesh = load_cloud(path, self.num_points, rng)
        if self.parts_files is None:
            return xyz, None, mesh
        if mesh:
            raise DataError(f"{path} is a mesh, so per-point part labels cannot apply; use point files (.npy ...)")
        pfile = self.parts_files[index]
        if not pfile.is_file():
            raise DataError(f"{path} has no part labels: {pfile} does not exist")
        parts = load_npy(pfile).reshape(-1)
        if len(parts) != len(xyz):
            raise DataError(f"{pfile} has {len(parts)} part labels but {path} has {len(xyz)} points")
        return xyz, self._check_parts(parts, pfile), False

    def _check_parts(self, parts: np.ndarray, source: Path) -> np.ndarray:
        if not np.isfinite(parts).all() or (parts != np.round(parts)).any():
            raise DataError(f"{source} has part labels that are not whole numbers")
        parts = parts.astype(np.int64)
        if self.num_parts is not None:
            bad = parts[(parts < 0) | (parts >= self.num_parts)]
            if len(bad):
                raise DataError(f"{source} has part label {int(bad[0])} outside 0..{self.num_parts - 1}")
        return parts

    def _warn_short(self, index: int, have: int, short: int = 1) -> None:
        if not self.warned:
            self.warned = True
            warnings.warn(f"{short} {self.name} cloud(s) have fewer than {self.num_points} points (the first: "
                          f"{self.describe(index)}, {have} points); they are resampled with replacement "
                          "(this warning is shown once per dataset)", PointCountWarning, stacklevel=2)

    def check(self) -> None:
        """Read every item once (threads): bad files raise here, and short clouds give the one warning."""
        rng = np.random.default_rng(self.seed)

        def count(i: int) -> int:
            xyz = self.raw(i, rng)[0]
            if self.normalize:
                normalize_points(xyz, self.describe(i))
            return len(xyz)

        counts = run_parallel(count, range(len(self)))
        short = [i for i, c in enumerate(counts) if c < self.num_points]
        if short:
            self._warn_short(short[0], counts[short[0]], len(short))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        train = self.augment is not None
        rng = np.random.default_rng(int(torch.randint(0, 2**63 - 1, ())) if train else [self.seed, index])
        xyz, parts, _ = self.raw(index, rng)
        if len(xyz) < self.num_points:
            self._warn_short(index, len(xyz))
        if self.normalize:
            xyz = normalize_points(xyz, self.describe(index))
        choice = choose_points(xyz, self.num_points, rng, self.sampling)
        points = torch.from_numpy(np.ascontiguousarray(xyz[choice], dtype=np.float32))
        if train:
            points = self.augment(points)
        label = torch.tensor(self.labels[index], dtype=torch.int64)
        item = {"points": points, "label": label}
        if self.with_parts:
            item["parts"] = torch.from_numpy(np.ascontiguousarray(parts[choice], dtype=np.int64))
            item["category"] = label.clone()
        return item


# ---- datamodules --------------------------------------------------------------------------------------------
class PointDataModule(L.LightningDataModule):
    """Shared base: subclasses implement ``has_split`` and ``make_dataset(split, augment)``; batches are
    stacked by the default collate (every cloud has ``num_points`` points)."""

    class_names: list[str]

    def __init__(self) -> None:
        super().__init__()
        self.datasets: dict[str, PointDataset] = {}

    def has_split(self, split: str) -> bool:
        raise NotImplementedError

    def make_dataset(self, split: str, augment: PointAugment | None) -> PointDataset:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _augment(self) -> PointAugment | None:
        hp = self.hparams
        if not hp.augment:
            return None
        return PointAugment(hp.scale_range, hp.translate, hp.rotate, hp.up_axis)

    def setup(self, stage: str | None = None) -> None:
        """Find (and with ``check_files`` read) the clouds of the splits ``stage`` needs; bad input stops here."""
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",),
                  "predict": ("test",) if self.has_split("test") else ("val",)}.get(stage or "", SPLITS)
        for split in wanted:
            if split in self.datasets or not self.has_split(split):
                continue
            dataset = self.make_dataset(split, self._augment() if split == "train" else None)
            if self.hparams.check_files:
                dataset.check()
            self.datasets[split] = dataset

    def _loader(self, split: str) -> DataLoader | list:
        if split not in self.datasets:
            if not self.has_split(split):
                return []
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        hp = self.hparams
        batch = hp.batch_size if split == "train" else (hp.val_batch_size or hp.batch_size)
        return DataLoader(self.datasets[split], batch_size=batch, shuffle=split == "train",
                          num_workers=hp.num_workers, persistent_workers=hp.num_workers > 0,
                          drop_last=split == "train" and hp.drop_last)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader | list:
        return self._loader("test" if self.has_split("test") else "val")


def stratified_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (kept, held out): ``fraction`` of each class held out (at least one of a class with 2+ items)."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    held: list[int] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) >= 2:
            n = min(max(1, int(round(len(idx) * fraction))), len(idx) - 1)
            held.extend(rng.permutation(idx)[:n].tolist())
    held_set = set(held)
    return [i for i in range(len(labels)) if i not in held_set], sorted(held_set)


_COMMON_DOC = """
            num_points: points per cloud (ModelNet / ScanObjectNN 1024 or 2048 in Point-MAE, ShapeNetPart 2048).
            sampling: ``random`` subset or ``fps`` (farthest-point sampling, slower) when a cloud has more points.
            normalize: centre each cloud and scale it into the unit sphere (before taking ``num_points``).
            augment: Point-MAE's training augmentation (scale and translate, see ``PointAugment``); never at
                validation / test.
            scale_range, translate: per-axis random scale ``[low, high]`` and shift ``[-translate, translate]``.
            rotate: also rotate training clouds by a random angle about ``up_axis`` (``y`` in ModelNet40
                resampled, ScanObjectNN and ShapeNetPart; ``z`` in the raw ModelNet40 ``.off`` meshes).
            batch_size, val_batch_size, num_workers: data loader settings.
            drop_last: drop the last incomplete training batch (Point-MAE does).
            check_files: in ``setup``, read every cloud once, so bad files stop the run before training.
            seed: seed of the validation hold-out and of the fixed evaluation samples."""


class PointFolderDataModule(PointDataModule):
    """ModelNet40-style folders: ``root/<class>/train/*`` and ``root/<class>/test/*`` (``val/`` optional).

    Class names are the sorted names of the folders that hold a ``train``, ``val`` or ``test`` folder; labels
    are their indexes. Files are any of ``KNOWN_SUFFIXES`` (hidden files and ``*_parts.npy`` are skipped).
    Without ``val`` folders, ``val_fraction`` of each training class is held out (seeded). With ``parts``, every
    point file ``NNNN.npy`` needs ``NNNN_parts.npy`` (global part ids) and ``parts.json`` in ``root`` (as
    ``make_shapes`` writes) or ``num_parts`` gives the number of parts.
    """

    def __init__(
        self,
        root: str,
        num_points: int = 1024,
        val_fraction: float = 0.1,
        parts: bool = False,
        num_parts: int | None = None,
        sampling: Sampling = "random",
        normalize: bool = True,
        augment: bool = True,
        scale_range: tuple[float, float] = (2 / 3, 3 / 2),
        translate: float = 0.2,
        rotate: bool = False,
        up_axis: Axis = "y",
        batch_size: int = 32,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        drop_last: bool = True,
        check_files: bool = True,
        seed: int = 0,
    ) -> None:
        """
        Args:
            root: the folder of class folders (relative roots to the working dir).
            val_fraction: share of each class's training files held out for validation when there are no
                ``val`` folders (0: no validation).
            parts: yield per-point ``parts`` and ``category`` for part segmentation (point files only).
            num_parts: number of global part ids (default: ``num_parts`` of ``root/parts.json``)."""
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.root = resolve_root(root)
        if num_points < 1:
            raise DataError(f"num_points must be at least 1, got {num_points}")
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self._augment()  # bad augmentation settings fail here
        folders = sorted(p for p in self.root.iterdir() if p.is_dir() and any((p / s).is_dir() for s in SPLITS))
        if not folders:
            raise DataError(f"{self.root} has no class folders with a train/ or test/ folder inside "
                            "(expected root/<class>/train/*.off)")
        self.class_names = [p.name for p in folders]
        self.part_table: dict = {}
        self.num_parts: int | None = None
        if parts:
            table_file = self.root / "parts.json"
            if table_file.is_file():
                self.part_table = json.loads(table_file.read_text()).get("classes", {})
                self.num_parts = int(json.loads(table_file.read_text())["num_parts"])
            if num_parts is not None:
                self.num_parts = num_parts
            if self.num_parts is None:
                raise DataError(f"parts is set but num_parts is not, and {table_file} does not exist to give it")
        self.has_val_folders = any((p / "val").is_dir() for p in folders)
        self._files: dict[str, tuple[list[Path], list[int]]] = {}

    @property
    def category_parts(self) -> list[list[int]]:
        """Global part ids of each class (from ``parts.json``; empty lists when unknown)."""
        return [list(self.part_table.get(name, {}).get("ids", [])) for name in self.class_names]

    def has_split(self, split: str) -> bool:
        if split == "val":
            return self.has_val_folders or self.hparams.val_fraction > 0
        return split == "train" or any((self.root / c / split).is_dir() for c in self.class_names)

    def _find(self, split: str) -> tuple[list[Path], list[int]]:
        files, labels = [], []
        for label, name in enumerate(self.class_names):
            folder = self.root / name / split
            if not folder.is_dir():
                if split == "train":
                    raise DataError(f"class folder {self.root / name} has no train/ folder")
                continue
            found = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                           and not p.name.endswith(PARTS_SUFFIX))
            for p in found:
                _check_suffix(p)
            if not found:
                raise DataError(f"class folder {folder} has no point or mesh files (known extensions: "
                                f"{', '.join(KNOWN_SUFFIXES)})")
            files += found
            labels += [label] * len(found)
        return files, labels

    def files(self, split: str) -> tuple[list[Path], list[int]]:
        """(files, labels) of a split."""
        if split not in self._files:
            hp = self.hparams
            if split in ("train", "val") and not self.has_val_folders and hp.val_fraction > 0:
                files, labels = self._find("train")
                keep, held = stratified_split(labels, hp.val_fraction, hp.seed)
                self._files["train"] = ([files[i] for i in keep], [labels[i] for i in keep])
                self._files["val"] = ([files[i] for i in held], [labels[i] for i in held])
            else:
                self._files[split] = self._find(split)
        return self._files[split]

    def make_dataset(self, split: str, augment: PointAugment | None) -> PointDataset:
        hp = self.hparams
        files, labels = self.files(split)
        parts_files = [p.with_name(p.stem + PARTS_SUFFIX) for p in files] if hp.parts else None
        return PointDataset(split, labels, hp.num_points, files=files, parts_files=parts_files,
                            normalize=hp.normalize, sampling=hp.sampling, augment=augment, seed=hp.seed,
                            num_parts=self.num_parts)


class ScanObjectNNDataModule(PointDataModule):
    """ScanObjectNN ``.h5`` files (``data`` ``(N, P, 3+)`` float, ``label`` ``(N,)``), e.g. the hardest variant
    ``main_split/training_objectdataset_augmentedrot_scale75.h5`` and ``test_objectdataset_augmentedrot_scale75.h5``.

    The arrays are loaded into memory. Validation: ``val_file``, else ``val_fraction`` of the training file
    (Point-MAE validates on the test file; set ``val_fraction: 0`` and run ``test`` for that protocol).
    """

    def __init__(
        self,
        root: str,
        train_file: str = "training_objectdataset_augmentedrot_scale75.h5",
        test_file: str | None = "test_objectdataset_augmentedrot_scale75.h5",
        val_file: str | None = None,
        val_fraction: float = 0.1,
        class_names: list[str] | None = None,
        num_points: int = 2048,
        sampling: Sampling = "random",
        normalize: bool = True,
        augment: bool = True,
        scale_range: tuple[float, float] = (2 / 3, 3 / 2),
        translate: float = 0.2,
        rotate: bool = False,
        up_axis: Axis = "y",
        batch_size: int = 32,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        drop_last: bool = True,
        check_files: bool = True,
        seed: int = 0,
    ) -> None:
        """
        Args:
            root: folder of the ``.h5`` files (e.g. ``ScanObjectNN/main_split``).
            train_file, test_file, val_file: file names relative to ``root`` (``test_file`` null: no test split).
            val_fraction: share of each training class held out when there is no ``val_file`` (0: none).
            class_names: names of the labels (default: ScanObjectNN's 15 classes)."""
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.root = resolve_root(root)
        if num_points < 1:
            raise DataError(f"num_points must be at least 1, got {num_points}")
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if val_file is not None and val_fraction:
            raise DataError("set either val_file or val_fraction, not both")
        self._augment()
        self.class_names = list(class_names or SCANOBJECTNN_CLASSES)
        for key in ("train_file", "test_file", "val_file"):
            name = self.hparams[key]
            if name is not None and not (self.root / name).is_file():
                raise FileNotFoundError(f"h5 file not found: {self.root / name} (from {key})")
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def has_split(self, split: str) -> bool:
        hp = self.hparams
        if split == "val":
            return hp.val_file is not None or hp.val_fraction > 0
        return split == "train" or hp.test_file is not None

    def _read(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        import h5py

        path = self.root / self.hparams[key]
        try:
            with h5py.File(path, "r") as f:
                missing = [k for k in ("data", "label") if k not in f]
                if missing:
                    raise DataError(f"h5 file {path} has no {missing[0]!r} dataset (it has: {sorted(f.keys())})")
                data, label = np.asarray(f["data"]), np.asarray(f["label"])
        except OSError as exc:
            raise DataError(f"{path} could not be read as an HDF5 file ({exc})") from None
        if data.ndim != 3 or data.shape[2] < 3 or data.shape[1] == 0:
            raise DataError(f"h5 file {path}: 'data' has shape {data.shape}; expected (clouds, points, 3)")
        label = label.reshape(-1)
        if len(label) != len(data):
            raise DataError(f"h5 file {path} has {len(data)} clouds but {len(label)} labels")
        if len(label) and (label.min() < 0 or label.max() >= len(self.class_names)):
            raise DataError(f"h5 file {path} has label {int(label.max())} outside 0..{len(self.class_names) - 1} "
                            "(set class_names)")
        return np.ascontiguousarray(data[:, :, :3], dtype=np.float32), label.astype(np.int64)

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(points (N, P, 3), labels (N,)) of a split."""
        if split not in self._arrays:
            hp = self.hparams
            if split in ("train", "val") and hp.val_file is None and hp.val_fraction > 0:
                data, label = self._read("train_file")
                keep, held = stratified_split(label, hp.val_fraction, hp.seed)
                self._arrays["train"] = (data[keep], label[keep])
                self._arrays["val"] = (data[held], label[held])
            else:
                self._arrays[split] = self._read(f"{split}_file")
        return self._arrays[split]

    def make_dataset(self, split: str, augment: PointAugment | None) -> PointDataset:
        hp = self.hparams
        data, label = self.arrays(split)
        return PointDataset(split, label, hp.num_points, arrays=data, normalize=hp.normalize, sampling=hp.sampling,
                            augment=augment, seed=hp.seed)


class ShapeNetPartDataModule(PointDataModule):
    """ShapeNetPart, the layout of ``shapenetcore_partanno_segmentation_benchmark_v0_normal``::

        root/synsetoffset2category.txt        "Airplane 02691156" per line: category name, folder
        root/02691156/1a04e3eab45ca15dd86060f189eb133.txt   rows "x y z nx ny nz part" (part: global id 0..49)
        root/train_test_split/shuffled_{train,val,test}_file_list.json
            ["shape_data/02691156/1a04e3eab45ca15dd86060f189eb133", ...]

    Labels (``label`` and ``category``) are the categories' indexes in ``synsetoffset2category.txt`` (the 16
    categories, alphabetical); ``parts`` the global part ids of ``SHAPENETPART_PARTS`` (``category_parts`` gives
    each category's ids, for the per-category mIoU). ``train_on: trainval`` trains on train + val (as Point-MAE)
    and has no validation split. Normals are not used.
    """

    def __init__(
        self,
        root: str,
        categories: list[str] | None = None,
        train_on: Literal["train", "trainval"] = "train",
        part_ids: dict[str, list[int]] | None = None,
        num_points: int = 2048,
        sampling: Sampling = "random",
        normalize: bool = True,
        augment: bool = True,
        scale_range: tuple[float, float] = (2 / 3, 3 / 2),
        translate: float = 0.2,
        rotate: bool = False,
        up_axis: Axis = "y",
        batch_size: int = 16,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        drop_last: bool = True,
        check_files: bool = True,
        seed: int = 0,
    ) -> None:
        """
        Args:
            root: the dataset folder (holding ``synsetoffset2category.txt``).
            categories: only these categories (names as in ``synsetoffset2category.txt``); labels stay the
                indexes among all categories, so part ids and category ids match the full data set.
            train_on: ``train`` (validate on ``val``) or ``trainval`` (no validation split).
            part_ids: category name -> its global part ids, for data other than the 16 ShapeNetPart
                categories (default ``SHAPENETPART_PARTS``)."""
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.root = resolve_root(root)
        if num_points < 1:
            raise DataError(f"num_points must be at least 1, got {num_points}")
        if train_on not in ("train", "trainval"):
            raise DataError(f"train_on must be 'train' or 'trainval', got {train_on!r}")
        self._augment()
        catfile = self.root / "synsetoffset2category.txt"
        if not catfile.is_file():
            raise FileNotFoundError(f"ShapeNetPart category file not found: {catfile}")
        self.synsets: dict[str, str] = {}
        for line in catfile.read_text().splitlines():
            fields = line.split()
            if len(fields) == 2:
                self.synsets[fields[0]] = fields[1]
            elif fields:
                raise DataError(f"{catfile} has a line {line!r}; expected 'Category synset' (two words)")
        if not self.synsets:
            raise DataError(f"{catfile} lists no categories")
        self.class_names = list(self.synsets)
        table = part_ids if part_ids is not None else SHAPENETPART_PARTS
        unknown = [c for c in self.class_names if c not in table]
        if unknown:
            raise DataError(f"category {unknown[0]!r} of {catfile} has no part ids; give part_ids for it "
                            f"(known: {sorted(table)})")
        self.part_table = {c: list(table[c]) for c in self.class_names}
        self.num_parts = max(max(ids) for ids in self.part_table.values()) + 1
        wrong = [c for c in categories or [] if c not in self.synsets]
        if wrong:
            raise DataError(f"categories has {wrong[0]!r}, not in {catfile}: choose from {self.class_names}")
        self._files: dict[str, tuple[list[Path], list[int]]] = {}

    @property
    def category_parts(self) -> list[list[int]]:
        """Global part ids of each category, by category index."""
        return [self.part_table[c] for c in self.class_names]

    def has_split(self, split: str) -> bool:
        return split != "val" or self.hparams.train_on == "train"

    def _list(self, name: str) -> tuple[list[Path], list[int]]:
        path = self.root / "train_test_split" / f"shuffled_{name}_file_list.json"
        if not path.is_file():
            raise FileNotFoundError(f"ShapeNetPart split file not found: {path}")
        try:
            entries = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not valid JSON ({exc})") from None
        label_of = {synset: i for i, synset in enumerate(self.synsets.values())}
        wanted = {self.synsets[c] for c in self.hparams.categories or self.class_names}
        files, labels = [], []
        for entry in entries:
            bits = str(entry).strip("/").split("/")
            if len(bits) < 2:
                raise DataError(f"{path} has an entry {entry!r}; expected 'shape_data/<synset>/<name>'")
            synset, token = bits[-2], bits[-1]
            if synset not in label_of:
                raise DataError(f"{path} names synset {synset!r} (in {entry!r}), which synsetoffset2category.txt "
                                "does not list")
            if synset not in wanted:
                continue
            file = self.root / synset / f"{token}.txt"
            if not file.is_file():
                raise DataError(f"{path} lists {entry!r} but {file} does not exist")
            files.append(file)
            labels.append(label_of[synset])
        if not files:
            raise DataError(f"{path} lists no shapes of the chosen categories")
        return files, labels

    def files(self, split: str) -> tuple[list[Path], list[int]]:
        """(files, category labels) of a split."""
        if split not in self._files:
            if split == "train" and self.hparams.train_on == "trainval":
                (f1, l1), (f2, l2) = self._list("train"), self._list("val")
                self._files[split] = (f1 + f2, l1 + l2)
            else:
                self._files[split] = self._list(split)
        return self._files[split]

    def make_dataset(self, split: str, augment: PointAugment | None) -> PointDataset:
        hp = self.hparams
        files, labels = self.files(split)
        return PointDataset(split, labels, hp.num_points, files=files, text_parts=True, normalize=hp.normalize,
                            sampling=hp.sampling, augment=augment, seed=hp.seed, num_parts=self.num_parts)


# the options every point datamodule shares, documented once (jsonargparse reads ``__init__.__doc__``)
for _cls in (PointFolderDataModule, ScanObjectNNDataModule, ShapeNetPartDataModule):
    _cls.__init__.__doc__ = (_cls.__init__.__doc__ or "").rstrip() + _COMMON_DOC + "\n"
