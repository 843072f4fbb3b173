"""The 3D tab's work without Gradio: read an uploaded cloud or mesh, run a point checkpoint, and write what the
page shows: class probabilities for ``gr.Label`` and a ``.glb`` for ``gr.Model3D``.

``gr.Model3D`` takes ``.obj``, ``.glb``, ``.gltf``, ``.stl``, ``.splat`` and ``.ply``, but treats a ``.ply`` as
a Gaussian splat when it looks like one and draws plain point clouds as one-pixel dots. The tab therefore shows
a ``.glb`` in which every point is a small octahedron with a vertex colour (grey for classification, the part's
colour for part segmentation), which any glTF viewer draws; part segmentation also offers the coloured
``.ply`` (x y z, part, RGB) that ``vadapt predict-points`` writes, as a download.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoints import CheckpointInfo
from .limits import AppError, Limits

UPLOAD_TYPES = [".ply", ".obj", ".off", ".npy", ".xyz", ".txt", ".pts"]
GREY = (150, 150, 160)
MARKER_RADIUS = 0.015  # of the unit-sphere-normalised cloud


@dataclass
class PointResult:
    """What the 3D tab shows after a run."""

    scores: dict[str, float]  # class probabilities (classification) or shares of points per part
    model_path: Path  # .glb for gr.Model3D
    download: Path | None  # coloured .ply (part segmentation)
    summary: str


def is_point_checkpoint(info: CheckpointInfo) -> bool:
    """Whether a checkpoint is a point classification or part segmentation model (the 3D tab's)."""
    return "points" in info.kinds


def check_upload(path: str | Path, limits: Limits) -> Path:
    """The uploaded file, if its suffix is a point or mesh format and its size within the limits."""
    path = Path(path)
    if path.suffix.lower() not in UPLOAD_TYPES:
        raise AppError(f"{path.name}: upload a point cloud or mesh ({', '.join(UPLOAD_TYPES)})")
    if not path.is_file():
        raise AppError(f"{path.name} is no longer on the server: upload it again")
    limits.check_file_size(path.stat().st_size, path.name)
    return path


def marker_mesh(xyz: np.ndarray, colours: np.ndarray, radius: float = MARKER_RADIUS) -> Any:
    """A ``trimesh.Trimesh`` with an octahedron of ``radius`` at each point ``(N, 3)``, coloured ``(N, 3)`` uint8."""
    import trimesh

    xyz = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
    corners = radius * np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
                                dtype=np.float32)
    faces = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    vertices = (xyz[:, None, :] + corners[None]).reshape(-1, 3)
    all_faces = (faces[None] + 6 * np.arange(len(xyz))[:, None, None]).reshape(-1, 3)
    rgba = np.concatenate([np.repeat(np.asarray(colours, dtype=np.uint8).reshape(-1, 3), 6, axis=0),
                           np.full((len(vertices), 1), 255, np.uint8)], axis=1)
    return trimesh.Trimesh(vertices, all_faces, vertex_colors=rgba, process=False)


def write_glb(xyz: np.ndarray, colours: np.ndarray, path: Path, radius: float = MARKER_RADIUS) -> Path:
    """Write the coloured markers of a cloud as a binary glTF ``.glb`` (what ``gr.Model3D`` shows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(marker_mesh(xyz, colours, radius).export(file_type="glb"))
    return path


def predict_cloud(task: Any, path: str | Path, folder: Path, num_points: int = 1024) -> PointResult:
    """Run a loaded point task on one file and write the page's files under ``folder``.

    Classification: class probabilities and the grey cloud. Part segmentation: the shares of points per part
    (the object category chosen by the model when it takes one), the cloud coloured by part, and the ``.ply``.
    """
    from vadapt.data.io import DataError
    from vadapt.inference import points as vp

    path = Path(path)
    kind = vp.task_kind(task)
    try:
        cloud = vp.read_cloud(path, num_points)
    except (DataError, FileNotFoundError, ValueError) as exc:
        raise AppError(str(exc).replace(str(path), path.name).splitlines()[0]) from None
    shown = cloud.points[cloud.keep]
    stem = path.stem
    if kind == "classification":
        probs = vp.classify(task, cloud.points[None])[0]
        names = vp.class_names(task)
        scores = {name: float(p) for name, p in zip(names, probs)}
        best = int(probs.argmax())
        colours = np.tile(np.array(GREY, np.uint8), (len(shown), 1))
        glb = write_glb(shown, colours, folder / f"{stem}.glb")
        summary = f"{path.name}: **{names[best]}** ({100 * probs[best]:.1f} %), {len(shown)} points"
        return PointResult(scores, glb, None, summary)
    parts, _, cats = vp.segment_parts(task, cloud.points[None])
    labels = parts[0][cloud.keep]
    ids, counts = np.unique(labels, return_counts=True)
    scores = {f"part {int(i)}": float(c / len(labels)) for i, c in zip(ids, counts)}
    glb = write_glb(shown, vp.part_colours(labels), folder / f"{stem}_parts.glb")
    ply = folder / f"{stem}_parts.ply"
    vp.write_atomic(ply, vp.parts_ply(cloud.original[cloud.keep], labels, f"vadapt part segmentation of {path.name}"))
    category = "" if int(cats[0]) < 0 else f", category {int(cats[0])}"
    summary = f"{path.name}: {len(ids)} part(s) over {len(labels)} points{category}"
    return PointResult(scores, glb, ply, summary)


def show_cloud(path: str | Path, folder: Path, num_points: int = 1024) -> Path:
    """The uploaded cloud, uncoloured, as a ``.glb`` (before any model runs)."""
    from vadapt.data.io import DataError
    from vadapt.inference.points import read_cloud

    path = Path(path)
    try:
        cloud = read_cloud(path, num_points)
    except (DataError, FileNotFoundError, ValueError) as exc:
        raise AppError(str(exc).replace(str(path), path.name).splitlines()[0]) from None
    shown = cloud.points[cloud.keep]
    return write_glb(shown, np.tile(np.array(GREY, np.uint8), (len(shown), 1)), folder / f"{path.stem}.glb")
