"""A synthetic, labelled point-cloud set of primitive and composed shapes, so point-cloud training runs offline.

``make_shapes`` writes the ModelNet folder layout that ``vadapt.data.points.PointFolderDataModule`` reads::

    output/
      classes.txt                 class names, one a line, sorted: the label order of the datamodule
      parts.json                  {"num_parts": P, "classes": {name: {"parts": [part names], "ids": [global ids]}}}
      sphere/train/0000.npy       (points, 3) float32 surface samples (or .ply with format="ply")
      sphere/train/0000_parts.npy (points,) int64 global part ids (with parts=True)
      sphere/test/0040.npy ...
      table/train/0000.npy ...

Classes (in this order; ``classes=N`` takes the first N): sphere, cube, cylinder, cone, torus, capsule,
pyramid, table (top, legs), mug (body, handle), lamp (base, pole, shade), chair (seat, back, legs), rocket
(body, nose, fins). Part ids are global over the chosen classes, as ShapeNetPart's 50 parts over its 16
categories; a primitive has a single part. Every sample gets a random anisotropic scale, shear, a small tilt
and a rotation about the up axis (``y``), Gaussian noise, and ``partial_fraction`` of them are partial views
(the points beyond a random plane cut away). Everything is drawn from ``numpy.random.default_rng`` seeded
with ``(seed, class index, sample index)``: the same seed writes the same arrays.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .io import DataError

Sampler = Callable[[int, np.random.Generator], np.ndarray]


# ---- surface samplers (all vectorised, y is up) ----------------------------------------------------------
def sample_triangles(triangles: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points uniform on the surface of ``triangles`` ``(T, 3, 3)`` (area-weighted); (points, face index)."""
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    areas = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    total = areas.sum()
    if not np.isfinite(total) or total <= 0:
        raise DataError("the mesh's faces have no area to sample points from (all faces are degenerate)")
    faces = rng.choice(len(triangles), size=n, p=areas / total)
    u, v = rng.random((2, n))
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    points = a[faces] + u[:, None] * (b - a)[faces] + v[:, None] * (c - a)[faces]
    return points, faces


@dataclass(frozen=True)
class Surface:
    """One part of a shape: a sampler of ``n`` surface points and the surface area (for area weighting)."""

    sample: Sampler
    area: float


def _disk(center: Sequence[float], radius: float) -> Surface:
    def sample(n: int, rng: np.random.Generator) -> np.ndarray:
        r = radius * np.sqrt(rng.random(n))
        t = rng.random(n) * 2 * np.pi
        return np.stack([r * np.cos(t), np.zeros(n), r * np.sin(t)], 1) + np.asarray(center)

    return Surface(sample, math.pi * radius**2)


def _frustum(base: Sequence[float], r_bottom: float, r_top: float, height: float) -> Surface:
    """Lateral surface of a (truncated) cone along +y from ``base``; ``r_top=0`` is a cone."""

    def sample(n: int, rng: np.random.Generator) -> np.ndarray:
        u = rng.random(n)
        if abs(r_top - r_bottom) < 1e-9:
            t = u
        else:  # density proportional to the radius at height t
            t = (np.sqrt(r_bottom**2 + u * (r_top**2 - r_bottom**2)) - r_bottom) / (r_top - r_bottom)
        r = r_bottom + (r_top - r_bottom) * t
        a = rng.random(n) * 2 * np.pi
        return np.stack([r * np.cos(a), t * height, r * np.sin(a)], 1) + np.asarray(base)

    slant = math.hypot(height, r_bottom - r_top)
    return Surface(sample, math.pi * (r_bottom + r_top) * slant)


def _sphere(center: Sequence[float], radius: float, hemisphere: int = 0) -> Surface:
    """Sphere; ``hemisphere`` +1 / -1 keeps the upper / lower half only."""

    def sample(n: int, rng: np.random.Generator) -> np.ndarray:
        d = rng.standard_normal((n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True) + 1e-12
        if hemisphere:
            d[:, 1] = hemisphere * np.abs(d[:, 1])
        return radius * d + np.asarray(center)

    return Surface(sample, 4 * math.pi * radius**2 / (2 if hemisphere else 1))


def _torus(center: Sequence[float], major: float, minor: float, vertical: bool = False,
           arc: tuple[float, float] = (0.0, 2 * math.pi)) -> Surface:
    """Torus around the y axis (or, ``vertical``, around z: a ring standing in the xy plane), ``arc`` of the ring."""

    def sample(n: int, rng: np.random.Generator) -> np.ndarray:
        out = np.empty((0, 2))
        while len(out) < n:  # rejection: the area element is proportional to (major + minor cos v)
            m = 2 * (n - len(out)) + 16
            u = arc[0] + rng.random(m) * (arc[1] - arc[0])
            v = rng.random(m) * 2 * np.pi
            keep = rng.random(m) < (major + minor * np.cos(v)) / (major + minor)
            out = np.concatenate([out, np.stack([u[keep], v[keep]], 1)])
        u, v = out[:n, 0], out[:n, 1]
        ring = major + minor * np.cos(v)
        x, y, z = ring * np.cos(u), minor * np.sin(v), ring * np.sin(u)
        points = np.stack([x, z, y], 1) if vertical else np.stack([x, y, z], 1)
        return points + np.asarray(center)

    return Surface(sample, 4 * math.pi**2 * major * minor * (arc[1] - arc[0]) / (2 * math.pi))


def _box_triangles(center: Sequence[float], size: Sequence[float]) -> np.ndarray:
    corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    corners = corners * np.asarray(size) + np.asarray(center)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    return np.array([[corners[a], corners[b], corners[c]] for q in quads for a, b, c in ((q[0], q[1], q[2]),
                                                                                         (q[0], q[2], q[3]))])


def _mesh(triangles: np.ndarray) -> Surface:
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    area = float(0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1).sum())
    return Surface(lambda n, rng: sample_triangles(triangles, n, rng)[0], area)


def _box(center: Sequence[float], size: Sequence[float]) -> Surface:
    return _mesh(_box_triangles(center, size))


def _cylinder(base: Sequence[float], radius: float, height: float, top: bool = True,
              bottom: bool = True) -> list[Surface]:
    out = [_frustum(base, radius, radius, height)]
    if top:
        out.append(_disk(np.asarray(base) + [0, height, 0], radius))
    if bottom:
        out.append(_disk(base, radius))
    return out


def _pyramid() -> Surface:
    b = np.array([[-0.5, 0, -0.5], [0.5, 0, -0.5], [0.5, 0, 0.5], [-0.5, 0, 0.5]])
    apex = np.array([0, 0.9, 0])
    sides = [[b[i], b[(i + 1) % 4], apex] for i in range(4)]
    return _mesh(np.array(sides + [[b[0], b[1], b[2]], [b[0], b[2], b[3]]], dtype=float))


def _legs(y_top: float, half_x: float, half_z: float, thick: float) -> list[Surface]:
    return [_box((sx * half_x, y_top / 2, sz * half_z), (thick, y_top, thick)) for sx in (-1, 1) for sz in (-1, 1)]


# ---- the classes: name -> list of (part name, surfaces) ----------------------------------------------------
def _shape_parts(name: str) -> list[tuple[str, list[Surface]]]:
    if name == "sphere":
        return [("sphere", [_sphere((0, 0, 0), 0.5)])]
    if name == "cube":
        return [("cube", [_box((0, 0, 0), (1, 1, 1))])]
    if name == "cylinder":
        return [("cylinder", _cylinder((0, -0.5, 0), 0.35, 1.0))]
    if name == "cone":
        return [("cone", [_frustum((0, -0.4, 0), 0.45, 0.0, 0.9), _disk((0, -0.4, 0), 0.45)])]
    if name == "torus":
        return [("torus", [_torus((0, 0, 0), 0.5, 0.17)])]
    if name == "capsule":
        return [("capsule", [_frustum((0, -0.4, 0), 0.25, 0.25, 0.8), _sphere((0, 0.4, 0), 0.25, 1),
                             _sphere((0, -0.4, 0), 0.25, -1)])]
    if name == "pyramid":
        return [("pyramid", [_pyramid()])]
    if name == "table":
        return [("top", [_box((0, 0.76, 0), (1.6, 0.08, 1.0))]), ("legs", _legs(0.72, 0.7, 0.4, 0.08))]
    if name == "mug":
        return [("body", _cylinder((0, -0.5, 0), 0.4, 1.0, top=False)),
                ("handle", [_torus((0.4, 0.0, 0), 0.25, 0.05, vertical=True, arc=(-math.pi / 2, math.pi / 2))])]
    if name == "lamp":
        return [("base", _cylinder((0, 0, 0), 0.3, 0.06)), ("pole", _cylinder((0, 0.06, 0), 0.03, 0.9, bottom=False)),
                ("shade", [_frustum((0, 0.75, 0), 0.4, 0.15, 0.4)])]
    if name == "chair":
        return [("seat", [_box((0, 0.45, 0), (0.8, 0.08, 0.8))]), ("back", [_box((0, 0.9, -0.36), (0.8, 0.82, 0.08))]),
                ("legs", _legs(0.41, 0.34, 0.34, 0.07))]
    if name == "rocket":
        fins = [_mesh(np.array([[[0.2 * c, -0.8, 0.2 * s], [0.5 * c, -0.9, 0.5 * s], [0.2 * c, -0.4, 0.2 * s]]]))
                for c, s in ((math.cos(a), math.sin(a)) for a in (0, 2 * math.pi / 3, 4 * math.pi / 3))]
        return [("body", _cylinder((0, -0.9, 0), 0.2, 1.3, top=False)), ("nose", [_frustum((0, 0.4, 0), 0.2, 0, 0.5)]),
                ("fins", fins)]
    raise DataError(f"unknown shape class {name!r}; choose from {list(SHAPE_CLASSES)}")


SHAPE_CLASSES = ("sphere", "cube", "cylinder", "cone", "torus", "capsule", "pyramid", "table", "mug", "lamp",
                 "chair", "rocket")


def part_names(name: str) -> list[str]:
    """Part names of a class, in local part order (a primitive has one part, named as the class)."""
    return [part for part, _ in _shape_parts(name)]


def sample_shape(name: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points on the surface of an undeformed shape (area-weighted over its parts); (points, local part)."""
    parts = _shape_parts(name)
    surfaces = [(i, s) for i, (_, group) in enumerate(parts) for s in group]
    areas = np.array([s.area for _, s in surfaces])
    counts = rng.multinomial(n, areas / areas.sum())
    points = np.concatenate([s.sample(int(k), rng) for (_, s), k in zip(surfaces, counts)])
    labels = np.concatenate([np.full(int(k), i, dtype=np.int64) for (i, _), k in zip(surfaces, counts)])
    return points, labels


def axis_rotation(axis: int, angle: float) -> np.ndarray:
    """The ``(3, 3)`` rotation by ``angle`` (radians) about coordinate axis ``axis`` (0 x, 1 y, 2 z)."""
    c, s = math.cos(angle), math.sin(angle)
    i, j = [k for k in range(3) if k != axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def random_deformation(rng: np.random.Generator) -> np.ndarray:
    """A 3x3 map: anisotropic scale [0.75, 1.25], shear up to 0.15, tilt up to 10 degrees, any turn about y."""
    scale = np.diag(rng.uniform(0.75, 1.25, 3))
    shear = np.eye(3)
    shear[np.triu_indices(3, 1)] = rng.uniform(-0.15, 0.15, 3)
    tilt_x = axis_rotation(0, rng.uniform(-1, 1) * math.radians(10))  # drawn first, as before (same shapes per seed)
    tilt = tilt_x @ axis_rotation(2, rng.uniform(-1, 1) * math.radians(10))
    return axis_rotation(1, rng.uniform(0, 2 * math.pi)) @ tilt @ shear @ scale


def make_sample(name: str, points: int, rng: np.random.Generator, partial: bool = False,
                noise: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """One deformed, noisy (optionally partial) sample: ``(points, 3)`` float32 and local part ids int64."""
    xyz, labels = sample_shape(name, 2 * points if partial else points, rng)
    xyz = xyz @ random_deformation(rng).T
    xyz += noise * rng.standard_normal(xyz.shape)
    if partial:  # cut away everything beyond a random plane: 15 to 40 % of the surface
        d = rng.standard_normal(3)
        d /= np.linalg.norm(d)
        proj = xyz @ d
        keep = np.flatnonzero(proj <= np.quantile(proj, rng.uniform(0.6, 0.85)))
        keep = rng.choice(keep, points, replace=len(keep) < points)
        xyz, labels = xyz[keep], labels[keep]
    else:
        order = rng.permutation(points)
        xyz, labels = xyz[order], labels[order]
    return xyz.astype(np.float32), labels


def write_ply(path: str | Path, points: np.ndarray) -> None:
    """A binary little-endian PLY point cloud of ``(N, 3)`` float32 vertices."""
    points = np.ascontiguousarray(points, dtype="<f4")
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {len(points)}\nproperty float x\nproperty float y\nproperty float z\nend_header\n")
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(points.tobytes())


def make_shapes(output: str | Path, classes: int | Sequence[str] = 10, per_class: int = 50, points: int = 2048,
                seed: int = 0, parts: bool = True, test_fraction: float = 0.2, partial_fraction: float = 0.2,
                noise: float = 0.01, format: Literal["npy", "ply"] = "npy") -> dict:
    """Write the synthetic set (module docs) to ``output``; returns a summary dict.

    Args:
        output: folder to write (created; files of the same names are overwritten).
        classes: how many of ``SHAPE_CLASSES`` (the first N, 1 to 12) or a list of their names.
        per_class: samples per class; the last ``round(per_class * test_fraction)`` (at least 1) go to ``test``.
        points: points per sample.
        seed: seed of everything; the same seed gives the same files.
        parts: also write ``NNNN_parts.npy`` with global part ids (and ``parts.json``).
        test_fraction: share of each class written to ``test``.
        partial_fraction: share of samples that are partial views (a random half-space cut away).
        noise: standard deviation of the Gaussian noise added to the points (the shapes are about 1 across).
        format: ``npy`` or ``ply`` (binary point cloud) point files.
    """
    if isinstance(classes, (int, np.integer)):
        if not 1 <= int(classes) <= len(SHAPE_CLASSES):
            raise DataError(f"classes must be between 1 and {len(SHAPE_CLASSES)}, got {classes}")
        names = list(SHAPE_CLASSES[: int(classes)])
    else:
        names = list(classes)
        unknown = [c for c in names if c not in SHAPE_CLASSES]
        if unknown or not names or len(set(names)) != len(names):
            raise DataError(f"classes must be distinct names from {list(SHAPE_CLASSES)}, got {names}")
    if per_class < 2 or points < 1:
        raise DataError(f"per_class must be at least 2 and points at least 1, got {per_class} and {points}")
    if not 0 < test_fraction < 1 or not 0 <= partial_fraction <= 1:
        raise DataError("test_fraction must be in (0, 1) and partial_fraction in [0, 1]")
    if format not in ("npy", "ply"):
        raise DataError(f"format must be 'npy' or 'ply', got {format!r}")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    n_test = min(max(1, round(per_class * test_fraction)), per_class - 1)
    table, first = {}, 0
    for name in names:
        local = part_names(name)
        table[name] = {"parts": local, "ids": list(range(first, first + len(local)))}
        first += len(local)
    for name in names:
        class_index = SHAPE_CLASSES.index(name)  # files do not depend on which other classes are chosen
        for split in ("train", "test"):
            (out / name / split).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rng = np.random.default_rng([seed, class_index, i])
            xyz, local = make_sample(name, points, rng, partial=rng.random() < partial_fraction, noise=noise)
            stem = out / name / ("train" if i < per_class - n_test else "test") / f"{i:04d}"
            if format == "npy":
                np.save(stem.with_suffix(".npy"), xyz)
            else:
                write_ply(stem.with_suffix(".ply"), xyz)
            if parts:
                np.save(stem.parent / f"{stem.name}_parts.npy", local + table[name]["ids"][0])
    (out / "classes.txt").write_text("".join(f"{n}\n" for n in sorted(names)))
    if parts:
        (out / "parts.json").write_text(json.dumps({"num_parts": first, "classes": table}, indent=1) + "\n")
    return {"output": str(out), "classes": sorted(names), "train": per_class - n_test, "test": n_test,
            "num_parts": first if parts else 0, "points": points}
