"""Renderers of the synthetic generation data (the shapes datamodules of ``vadapt.data.generation``).

* the palette: named colours (``COLOURS``) and backgrounds (``BACKGROUNDS``), and ``_colour``, which reads a colour
  option (a name or ``[r, g, b]``);
* 2D: one filled shape (circle, square, triangle, diamond) on a plain background (``shape_polygon``,
  ``draw_shape``);
* 3D: orthographic, Lambert-shaded views of one primitive (sphere, cube, cylinder, cone) by sphere tracing of its
  signed distance (``primitive_sdf``, ``render_primitive``) from MV-Adapter's cameras (``multiview_cameras``, built
  on ``vadapt.geometry.cameras``).

Not to be confused with ``vadapt.data.shapes``, the synthetic point-cloud set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from .buckets import Bucket
from .io import DataError

#: named colours (RGB 0-255) of the synthetic data; distinct in hue, so shaded versions keep their name
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 70, 235),
    "yellow": (235, 215, 25),
    "magenta": (215, 35, 215),
    "cyan": (25, 205, 215),
    "orange": (240, 135, 20),
    "white": (240, 240, 240),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "white": (255, 255, 255), "grey": (128, 128, 128)}
SHAPES_2D = ("circle", "square", "triangle", "diamond")
SHAPES_3D = ("sphere", "cube", "cylinder", "cone")


# ---- palette ---------------------------------------------------------------------------------------------------
def _colour(name: str | Sequence[int], key: str) -> tuple[int, int, int]:
    if isinstance(name, str):
        table = {**COLOURS, **BACKGROUNDS}
        if name not in table:
            raise DataError(f"{key} {name!r} is not a known colour; choose from {sorted(table)} or give [r, g, b]")
        return table[name]
    rgb = tuple(int(v) for v in name)
    if len(rgb) != 3 or min(rgb) < 0 or max(rgb) > 255:
        raise DataError(f"{key} must be a colour name or [r, g, b] in 0..255, got {name!r}")
    return rgb  # type: ignore[return-value]


# ---- 2D shapes -------------------------------------------------------------------------------------------------
def shape_polygon(shape: str, cx: float, cy: float, radius: float) -> list[tuple[float, float]] | None:
    """Corners of a polygonal shape centred at ``(cx, cy)`` (pixels) inside a circle of ``radius``; ``None`` for
    a circle."""
    if shape == "circle":
        return None
    if shape == "square":
        r = radius / math.sqrt(2)
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":  # pointing up
        return [(cx + radius * math.cos(a), cy - radius * math.sin(a)) for a in (math.pi / 2, 7 * math.pi / 6,
                                                                                  11 * math.pi / 6)]
    if shape == "diamond":
        return [(cx, cy - radius), (cx + radius, cy), (cx, cy + radius), (cx - radius, cy)]
    raise DataError(f"shape {shape!r} is not known; choose from {', '.join(SHAPES_2D)}")


def draw_shape(size: Bucket, shape: str, colour: Sequence[int], centre: tuple[float, float], radius: float,
               background: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """One filled ``shape`` of ``colour`` at ``centre`` = ``(x, y)`` pixels on a plain background: uint8
    ``(h, w, 3)``; ``size`` = ``(h, w)``."""
    h, w = size
    image = Image.new("RGB", (w, h), tuple(int(v) for v in background))
    draw = ImageDraw.Draw(image)
    cx, cy = centre
    corners = shape_polygon(shape, cx, cy, radius)
    fill = tuple(int(v) for v in colour)
    if corners is None:
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    else:
        draw.polygon(corners, fill=fill)
    return np.asarray(image, dtype=np.uint8).copy()


# ---- 3D primitives, seen from several views --------------------------------------------------------------------
def primitive_sdf(shape: str, p: np.ndarray, size: float) -> np.ndarray:
    """Signed distance of points ``p`` ``(..., 3)`` (z up) to a primitive of ``size`` centred at the origin: the
    sphere (radius 0.45 size), cube (half side 0.32 size), cylinder and cone (radius 0.36 / 0.42 size, half
    height 0.38 / 0.4 size, axis z)."""
    if shape == "sphere":
        return np.linalg.norm(p, axis=-1) - 0.45 * size
    if shape == "cube":
        q = np.abs(p) - 0.32 * size
        return np.linalg.norm(np.maximum(q, 0.0), axis=-1) + np.minimum(q.max(-1), 0.0)
    radial = np.linalg.norm(p[..., :2], axis=-1)
    if shape == "cylinder":
        d = np.stack([radial - 0.36 * size, np.abs(p[..., 2]) - 0.38 * size], -1)
        return np.minimum(d.max(-1), 0.0) + np.linalg.norm(np.maximum(d, 0.0), axis=-1)
    if shape == "cone":  # capped cone (Quilez) with the top radius 0: base radius r1 at z = -h, apex at z = h
        h, r1 = 0.4 * size, 0.42 * size
        qx, qy = radial, p[..., 2]
        ca_x = qx - np.minimum(qx, np.where(qy < 0, r1, 0.0))
        ca_y = np.abs(qy) - h
        k2x, k2y = -r1, 2 * h
        t = np.clip(((0.0 - qx) * k2x + (h - qy) * k2y) / (k2x**2 + k2y**2), 0.0, 1.0)
        cb_x, cb_y = qx + k2x * t, qy - h + k2y * t
        sign = np.where((cb_x < 0) & (ca_y < 0), -1.0, 1.0)
        return sign * np.sqrt(np.minimum(ca_x**2 + ca_y**2, cb_x**2 + cb_y**2))
    raise DataError(f"shape {shape!r} is not known; choose from {', '.join(SHAPES_3D)}")


def render_primitive(shape: str, c2w: torch.Tensor | np.ndarray, size: Bucket, colour: Sequence[int],
                     background: Sequence[int] = (0, 0, 0), object_size: float = 1.0, yaw_deg: float = 0.0,
                     half_extent: float = 0.6,
                     lights: Sequence[Sequence[float]] = ((0.45, -0.6, 0.65, 0.6), (-0.7, 0.6, 0.15, 0.3)),
                     ambient: float = 0.25, steps: int = 64) -> np.ndarray:
    """Orthographic renderings of a flat-coloured, Lambert-shaded primitive (sphere tracing of its SDF): uint8
    ``(N, h, w, 3)`` for cameras ``c2w`` ``(N, 4, 4)`` (``vadapt.geometry.cameras`` convention: world z
    up, camera looks along -z). The views span ``[-half_extent, half_extent]`` vertically; the object turns by
    ``yaw_deg`` about z. ``lights`` are ``(x, y, z, strength)`` directional lights fixed in the world (a key and a
    weaker fill from the other side), so views from different sides differ, even of a sphere or a cylinder."""
    c2w = np.asarray(c2w, dtype=np.float64).reshape(-1, 4, 4)
    h, w = size
    half_w = half_extent * w / h
    ys = (1.0 - 2.0 * (np.arange(h) + 0.5) / h) * half_extent
    xs = (2.0 * (np.arange(w) + 0.5) / w - 1.0) * half_w
    yaw = math.radians(yaw_deg)
    rot = np.array([[math.cos(yaw), -math.sin(yaw), 0.0], [math.sin(yaw), math.cos(yaw), 0.0], [0.0, 0.0, 1.0]])
    light_arr = np.asarray(lights, dtype=np.float64).reshape(-1, 4)
    light_dirs = light_arr[:, :3] / np.linalg.norm(light_arr[:, :3], axis=1, keepdims=True)

    def sdf(points: np.ndarray) -> np.ndarray:  # world -> object frame (rotate by -yaw)
        return primitive_sdf(shape, points @ rot, object_size)

    out = np.empty((len(c2w), h, w, 3), dtype=np.uint8)
    for v, cam in enumerate(c2w):
        right, up, forward, pos = cam[:3, 0], cam[:3, 1], -cam[:3, 2], cam[:3, 3]
        origins = pos + xs[None, :, None] * right + ys[:, None, None] * up  # (h, w, 3)
        dist = float(np.linalg.norm(pos))
        t = np.full((h, w), max(dist - 1.0, 0.0))
        for _ in range(steps):
            d = sdf(origins + t[..., None] * forward)
            t = t + np.where(d > 1e-4, d, 0.0)
        points = origins + t[..., None] * forward
        hit = (np.abs(sdf(points)) < 2e-3) & (t < dist + 1.0)
        eps = 1e-3
        normal = np.stack([sdf(points + eps * e) - sdf(points - eps * e) for e in np.eye(3)], -1)
        normal /= np.linalg.norm(normal, axis=-1, keepdims=True) + 1e-12
        shade = np.minimum(ambient + np.clip(normal @ light_dirs.T, 0.0, None) @ light_arr[:, 3], 1.0)
        colour_px = np.asarray(colour, dtype=np.float64) * shade[..., None]
        image = np.where(hit[..., None], colour_px, np.asarray(background, dtype=np.float64))
        out[v] = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return out


def multiview_cameras(num_views: int = 6) -> torch.Tensor:
    """``c2w`` ``(N, 4, 4)``: MV-Adapter's official six views for ``num_views == 6``, else ``num_views`` views at
    elevation 0 and evenly spaced azimuths (starting at the official front view)."""
    from vadapt.geometry.cameras import official_six_view_cameras, orbit_cameras

    if num_views == 6:
        return official_six_view_cameras()
    return orbit_cameras([0.0] * num_views, [360.0 * k / num_views - 90.0 for k in range(num_views)])
