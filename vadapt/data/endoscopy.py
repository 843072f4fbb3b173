"""Synthetic endoscopy videos with exact depth, poses and intrinsics, so EndoDAC-style self-supervised depth
(Cui et al., 2024, "EndoDAC: Efficient Adapting Foundation Model for Self-Supervised Depth Estimation from Any
Endoscopic Camera", arXiv:2405.08672) trains and is scored offline, in seconds, without downloads.

The scene is a textured tube along the world ``z`` axis (a colon / bronchus stand-in) whose wall radius varies
smoothly with depth and angle, ``r(z, phi) = r0 (1 + a1 sin(k1 z / r0 + p1) + a2 cos(2 phi + k2 z / r0 + p2))``,
closed by a flat cap ``z = cap_z`` six radii beyond the last camera (so depth is bounded). Lengths are in
centimetres (``r0`` in [1.3, 1.7]). A camera moves forward along the tube (3 to 6 % of ``r0`` per frame, so
consecutive frames overlap strongly) with a smooth random lateral offset (at most 30 % of ``r0``) and smooth
yaw / pitch (at most 20 degrees each: the scope looks around, so the lumen moves in the picture and depth is not the
same radial pattern in every frame) and roll (at most 12 degrees), all sums of low-frequency sines with random
phases; its pinhole intrinsics are random per sequence: ``fx = fy`` in ``[0.55, 1.1] * W`` and the principal point
within 5 % of the image centre ("any endoscopic camera", unknown to the model).

Rendering is analytic ray casting in float64 (vectorised numpy): a ray's first wall hit is bracketed by the hits
of the cylinders of the smallest and largest radius, found by safeguarded Newton iterations (bisection when a
Newton step leaves the bracket); rays nearly parallel to the axis, where the wall function along the ray need not
be monotone, first march the bracket to its first sign change (24 samples: a bump thinner than a sample step
could be missed). The 2x colour rays start plain Newton from their pixel's depth ray and fall back to the full
path where that does not converge. Sines and cosines are evaluated in float32 after a float64 range reduction
(numpy's float64 ones have no SIMD path here and are ~20x slower): the wall is defined to ~1e-7 cm, below the
float32 depth that is stored; the texture is evaluated in float32 too. The wall's albedo is a deterministic function of
the surface coordinates ``(z, phi)`` (the cap's of ``(x, y)``): sines for tone and mottling and thin dark vessels
(level curves of warped sines) in a pink-red palette, so every point of the wall has the same colour in every
frame. ``shading=True`` lights it from a point light at the camera centre (the endoscope's light):
``4 * albedo * max(cos theta, 0) * (r0 / d)^2`` plus a Blinn-Phong highlight (light = view direction, so the
half vector is the light direction), then gamma 1/2.2 and clipping to [0, 1]; ``shading=False`` is the albedo
alone (with the same gamma), for which brightness constancy holds exactly. Colours are rendered at 2x and
box-downsampled (``antialias``); depth is the z-depth (along the optical axis) cast exactly at the pixel centres.

Conventions (OpenCV, as :mod:`vadapt.geometry.reprojection`): camera x right, y down, z forward; pixel ``(u, v)``
is column ``u``, row ``v`` with its centre at integer coordinates; ``K`` maps camera points to
``(fx X / Z + cx, fy Y / Z + cy)``; poses are camera-to-world.

``make_endoscopy`` writes the vadapt depth-video folder layout::

    out/
      README.txt                 what this is, units, layout, seed and options (its first line marks the folder)
      seq_000/
        images/000000.png ...    8-bit RGB
        depth/000000.npy ...     float32 (H, W) z-depth in centimetres
        intrinsics.txt           3 lines of 3 numbers: K in pixels for the image size
        poses.txt                T lines of 12 numbers: row-major 3x4 camera-to-world [R | t] (KITTI odometry style)
      seq_001/ ...

Deviation: EndoDAC trains and evaluates on real endoscopy (SCARED, Hamlyn); this is a synthetic stand-in with
known truth, not a reproduction of those data.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .io import DataError
from .shapes import axis_rotation

README_MARKER = "vadapt synthetic endoscopy"
_NEWTON_STEPS = 10  # safeguarded Newton iterations per ray (~1e-7 cm; most converge in 4 to 5, a few bisect)
_GUESS_STEPS = 2  # plain Newton iterations from a neighbouring ray's hit
_MARCH_STEPS = 24  # samples along grazing rays to find the first sign change of the wall function


@dataclass(frozen=True)
class EndoscopySequence:
    """One rendered sequence of ``T`` frames of ``H x W`` pixels.

    Attributes:
        frames: ``(T, H, W, 3)`` float32 RGB in [0, 1].
        depth: ``(T, H, W)`` float32 z-depth (centimetres), finite and > 0 everywhere (the cap bounds it).
        poses: ``(T, 4, 4)`` float64 camera-to-world (x right, y down, z forward: OpenCV).
        K: ``(3, 3)`` float64 pixel intrinsics for ``(H, W)``.
    """

    frames: np.ndarray
    depth: np.ndarray
    poses: np.ndarray
    K: np.ndarray


# ---- the scene: tube geometry and texture -----------------------------------------------------------------------
def _sin_cos(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sin x`` and ``cos x`` evaluated in float32 after reducing ``x`` to ``[-pi, pi]`` in float64 (error ~1e-7).

    numpy's float32 sine has a SIMD path and its float64 one here does not (about 20x slower), and the sines
    dominate the cost of the renderer; 1e-7 on a radius of 1.5 cm is below the float32 depth that is stored.
    """
    x32 = (x - 2 * np.pi * np.round(x / (2 * np.pi))).astype(np.float32)
    return np.sin(x32), np.cos(x32)


@dataclass(frozen=True)
class Tube:
    """The cavity: wall ``r(z, phi)`` (module docs) and the cap plane ``z = cap_z``; lengths in centimetres."""

    r0: float
    a1: float
    k1: float
    p1: float
    a2: float
    k2: float
    p2: float
    cap_z: float

    @property
    def r_min(self) -> float:
        return self.r0 * (1 - self.a1 - self.a2)

    @property
    def r_max(self) -> float:
        return self.r0 * (1 + self.a1 + self.a2)

    @property
    def max_slope(self) -> float:
        """Bound of ``|dr/dz|`` over the wall."""
        return self.a1 * self.k1 + self.a2 * self.k2

    def radius(self, z: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """Wall radius at ``z`` and angle ``phi`` (any equal shapes)."""
        return self.r0 * (1 + self.a1 * np.sin(self.k1 * z / self.r0 + self.p1)
                          + self.a2 * np.cos(2 * phi + self.k2 * z / self.r0 + self.p2))

    def _terms(self, x: np.ndarray, y: np.ndarray, z: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``rho``, ``rho^2``, ``r``, ``dr/dz`` and ``dr/dphi`` at points ``(x, y, z)`` (without calling atan2)."""
        rho2 = np.maximum(x * x + y * y, 1e-300)
        rho = np.sqrt(rho2)
        cos2, sin2 = (x * x - y * y) / rho2, 2 * x * y / rho2  # cos 2 phi, sin 2 phi
        sin_a, cos_a = _sin_cos(self.k1 * z / self.r0 + self.p1)
        sin_b, cos_b = _sin_cos(self.k2 * z / self.r0 + self.p2)
        cos_w, sin_w = cos2 * cos_b - sin2 * sin_b, sin2 * cos_b + cos2 * sin_b  # of 2 phi + b
        r = self.r0 * (1 + self.a1 * sin_a + self.a2 * cos_w)
        r_z = self.a1 * self.k1 * cos_a - self.a2 * self.k2 * sin_w
        r_phi = -2 * self.r0 * self.a2 * sin_w
        return rho, rho2, r, r_z, r_phi

    def _wall(self, o: np.ndarray, d: np.ndarray, t: np.ndarray, derivative: bool = True
              ) -> tuple[np.ndarray, np.ndarray | None]:
        """``f(t) = rho - r`` along rays ``o + t d`` (``d`` ``(N, 3)``) and its derivative ``df/dt``."""
        x, y, z = o[0] + t * d[:, 0], o[1] + t * d[:, 1], o[2] + t * d[:, 2]
        rho, rho2, r, r_z, r_phi = self._terms(x, y, z)
        if not derivative:
            return rho - r, None
        drho = (x * d[:, 0] + y * d[:, 1]) / rho
        dphi = (x * d[:, 1] - y * d[:, 0]) / rho2
        return rho - r, drho - r_z * d[:, 2] - r_phi * dphi

    def normal(self, p: np.ndarray) -> np.ndarray:
        """Unit wall normals ``(N, 3)`` pointing into the tube at wall points ``p`` ``(N, 3)``."""
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        rho, rho2, _, r_z, r_phi = self._terms(x, y, z)
        g = np.stack([x / rho + r_phi * y / rho2, y / rho - r_phi * x / rho2, -r_z], 1)  # grad(rho - r)
        return g / -np.sqrt((g * g).sum(1, keepdims=True))

    def cast(self, origin: np.ndarray, dirs: np.ndarray, guess: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        """First hits of rays ``origin + t dirs`` (``origin`` ``(3,)`` inside the tube, ``dirs`` ``(N, 3)`` with
        ``dirs[:, 2] > 0``): ``t`` ``(N,)`` and whether the hit is on the wall (else on the cap).

        ``guess`` ``(N,)``: approximate wall hits (e.g. a neighbouring ray's; ``inf`` for none). Rays where the wall
        function is monotone start plain Newton there and keep the result when it converges inside the bracket;
        the others take the full path (march if grazing, then safeguarded Newton from the mean-radius cylinder).
        """
        if np.any(dirs[:, 2] <= 0):
            raise ValueError("every ray must point forward along the tube (dirs[:, 2] > 0)")
        offset = math.hypot(origin[0], origin[1])
        if offset >= self.r_min:
            raise ValueError(f"the camera at {origin} is not inside the tube (minimum radius {self.r_min:.3f})")
        t_cap = (self.cap_z - origin[2]) / dirs[:, 2]
        a = np.maximum(dirs[:, 0] ** 2 + dirs[:, 1] ** 2, 1e-300)
        b = origin[0] * dirs[:, 0] + origin[1] * dirs[:, 1]

        def cylinder(radius: float) -> np.ndarray:  # positive root of |o_xy + t d_xy| = radius (o inside)
            return (-b + np.sqrt(b * b + a * (radius * radius - offset * offset))) / a

        lo = np.minimum(cylinder(self.r_min), t_cap)
        hi = np.minimum(cylinder(self.r_max), t_cap)
        # f(t) = rho - r has df/dt >= |d_xy| margin - max_slope d_z on the bracket: monotone unless the ray is
        # grazing, where a wall bump may be crossed twice; there march to the first crossing
        sine = offset / self.r_min
        margin = math.sqrt(1 - sine * sine) - 2 * self.r0 * self.a2 * offset / self.r_min ** 2
        grazing = np.sqrt(a) / dirs[:, 2] < 1.25 * self.max_slope / max(margin, 1e-3)
        t = np.empty_like(t_cap)
        wall = np.zeros(len(t), dtype=bool)
        todo = np.arange(len(t))
        if guess is not None:
            idx = np.flatnonzero(~grazing & np.isfinite(guess) & (guess < t_cap))
            t_idx, d_idx = np.clip(guess[idx], lo[idx], hi[idx]), dirs[idx]
            for _ in range(_GUESS_STEPS):
                f, df = self._wall(origin, d_idx, t_idx)
                t_idx = t_idx - f / np.where(np.abs(df) > 1e-12, df, 1e-12)
            f = self._wall(origin, d_idx, t_idx, derivative=False)[0]
            ok = (np.abs(f) < 1e-6) & (t_idx >= lo[idx]) & (t_idx <= hi[idx])
            t[idx[ok]], wall[idx[ok]] = t_idx[ok], True
            todo = np.flatnonzero(~wall)
        t[todo], wall[todo] = self._solve(origin, dirs[todo], lo[todo], hi[todo], grazing[todo],
                                          np.clip(cylinder(self.r0)[todo], lo[todo], hi[todo]))
        return np.where(wall, t, t_cap), wall

    def _solve(self, origin: np.ndarray, dirs: np.ndarray, lo: np.ndarray, hi: np.ndarray, grazing: np.ndarray,
               t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The full path of :meth:`cast` on its bracket ``[lo, hi]`` (``f(lo) <= 0``); returns (t, wall hit)."""
        g = np.flatnonzero(grazing & (hi > lo))
        if len(g):
            steps = lo[g, None] + (hi - lo)[g, None] * np.linspace(0, 1, _MARCH_STEPS + 1)[None, 1:]
            values = np.stack([self._wall(origin, dirs[g], steps[:, i], derivative=False)[0]
                               for i in range(_MARCH_STEPS)], 1)
            crossed = values >= 0
            first = np.where(crossed.any(1), crossed.argmax(1), _MARCH_STEPS - 1)
            rows = np.arange(len(g))
            lo[g] = np.where(first > 0, steps[rows, np.maximum(first - 1, 0)], lo[g])
            hi[g] = steps[rows, first]
            t[g] = 0.5 * (lo[g] + hi[g])
        wall = self._wall(origin, dirs, hi, derivative=False)[0] >= 0  # else no wall crossing before the cap
        for _ in range(_NEWTON_STEPS):
            f, df = self._wall(origin, dirs, t)
            below = f < 0
            lo, hi = np.where(below, t, lo), np.where(below, hi, t)
            step = t - f / np.where(np.abs(df) > 1e-12, df, 1e-12)
            t = np.where((step >= lo) & (step <= hi), step, 0.5 * (lo + hi))
        return t, wall


def _random_tube(rng: np.random.Generator, r0: float, cap_z: float) -> Tube:
    return Tube(r0=r0, a1=rng.uniform(0.04, 0.08), k1=rng.uniform(0.4, 0.9),
                p1=rng.uniform(0, 2 * np.pi), a2=rng.uniform(0.02, 0.06), k2=rng.uniform(0.1, 0.4),
                p2=rng.uniform(0, 2 * np.pi), cap_z=cap_z)


@dataclass(frozen=True)
class Texture:
    """Procedural albedo: per-sequence random frequencies and phases; a deterministic function of the surface."""

    r0: float
    tone: np.ndarray     # (4, 4): amplitude, angular frequency m, axial frequency k, phase
    mottle: np.ndarray   # (6, 5): amplitude, m, k, phase, channel tint
    vessels: np.ndarray  # (3, 9): m, k, phase, warp amplitude, warp m, warp k, warp phase, mask k, mask phase
    base: np.ndarray     # (3,) RGB of the mucosa
    vessel_rgb: np.ndarray  # (3,) RGB of the vessels

    def wall(self, z: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """Albedo ``(N, 3)`` in [0, 1] at wall coordinates ``z`` (cm) and ``phi`` (radians), both ``(N,)``.

        Evaluated in float32 (its sines are 20x faster than float64 ones; the colour error is ~1e-6).
        """
        u, phi = (z / self.r0).astype(np.float32), phi.astype(np.float32)
        tone = np.ones_like(u)
        for amp, m, k, p in self.tone.astype(np.float32):
            tone += amp * np.sin(m * phi + k * u + p)
        mottle, tinted = np.zeros_like(u), np.zeros_like(u)
        for amp, m, k, p, tint in self.mottle.astype(np.float32):
            wave = amp * np.sin(m * phi + k * u + p)
            mottle += wave
            tinted += tint * wave
        channel = np.arange(3, dtype=np.float32)[None, :]  # green and blue mottle more than red
        rgb = tone[:, None] * self.base.astype(np.float32)[None, :] * (1 + mottle[:, None] + channel * tinted[:, None])
        keep = np.ones_like(u)  # product of (1 - vessel) over the vessel fields
        for m, k, p, warp, wm, wk, wp, mk, mp in self.vessels.astype(np.float32):
            g = np.sin(m * phi + k * u + p + warp * np.sin(wm * phi + wk * u + wp))
            mask = np.clip(0.3 + np.sin(mk * u + mp + phi), 0.0, 1.0)
            keep *= 1 - 0.85 * mask * np.exp(-((g / 0.12) ** 2))
        vessel = (1 - keep) * tone
        rgb = rgb * keep[:, None] + vessel[:, None] * self.vessel_rgb.astype(np.float32)[None, :]
        return np.clip(rgb, 0.0, 1.0).astype(np.float64)

    def cap(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Albedo ``(N, 3)`` of the end cap at ``(x, y)`` (cm): a darker mottled version of the mucosa."""
        u, v = (x / self.r0).astype(np.float32), (y / self.r0).astype(np.float32)
        shade = np.full_like(u, 0.3)
        for amp, m, k, p, _ in self.mottle.astype(np.float32):
            shade *= 1 + amp * np.sin(0.5 * m * u + k * v + p)
        return np.clip(shade[:, None] * self.base[None, :], 0.0, 1.0)


def _random_texture(rng: np.random.Generator, r0: float) -> Texture:
    tone = np.stack([rng.uniform(0.02, 0.05, 4), rng.integers(1, 4, 4), rng.uniform(0.3, 1.5, 4),
                     rng.uniform(0, 2 * np.pi, 4)], 1)
    mottle = np.stack([rng.uniform(0.03, 0.07, 6), rng.integers(5, 17, 6) * rng.choice([-1, 1], 6),
                       rng.uniform(2.0, 8.0, 6), rng.uniform(0, 2 * np.pi, 6), rng.uniform(-0.5, 0.5, 6)], 1)
    vessels = np.stack([rng.integers(3, 8, 3) * rng.choice([-1, 1], 3), rng.uniform(2.0, 5.0, 3),
                        rng.uniform(0, 2 * np.pi, 3), rng.uniform(0.8, 2.0, 3), rng.integers(1, 5, 3),
                        rng.uniform(0.5, 2.0, 3), rng.uniform(0, 2 * np.pi, 3), rng.uniform(0.5, 1.5, 3),
                        rng.uniform(0, 2 * np.pi, 3)], 1)
    base = np.array([0.72, 0.26, 0.22]) + rng.uniform(-0.04, 0.04, 3)  # linear RGB (before gamma)
    vessel_rgb = np.array([0.25, 0.02, 0.03]) + rng.uniform(-0.02, 0.02, 3)
    return Texture(r0=r0, tone=tone, mottle=mottle, vessels=vessels, base=base, vessel_rgb=vessel_rgb)


# ---- camera -----------------------------------------------------------------------------------------------------
def _smooth(rng: np.random.Generator, frames: np.ndarray, amplitude: float) -> np.ndarray:
    """A smooth random curve over ``frames``: two sines of 0.005 to 0.03 cycles a frame, ``|.| <= amplitude``."""
    weights = rng.dirichlet([2.0, 2.0]) * amplitude
    freqs = rng.uniform(0.005, 0.03, 2) * 2 * np.pi
    phases = rng.uniform(0, 2 * np.pi, 2)
    return (weights[:, None] * np.sin(freqs[:, None] * frames[None, :] + phases[:, None])).sum(0)


def _trajectory(rng: np.random.Generator, num_frames: int, r0: float) -> np.ndarray:
    """Camera-to-world poses ``(T, 4, 4)``: forward along ``z`` with smooth lateral offset and rotation."""
    s = np.arange(num_frames, dtype=np.float64)
    speed = rng.uniform(0.03, 0.06) * r0
    x, y = _smooth(rng, s, 0.3 * r0 / math.sqrt(2)), _smooth(rng, s, 0.3 * r0 / math.sqrt(2))
    yaw, pitch, roll = (_smooth(rng, s, math.radians(a)) for a in (20.0, 20.0, 12.0))
    poses = np.tile(np.eye(4), (num_frames, 1, 1))
    for i in range(num_frames):
        poses[i, :3, :3] = axis_rotation(2, roll[i]) @ axis_rotation(1, yaw[i]) @ axis_rotation(0, pitch[i])
        poses[i, :3, 3] = (x[i], y[i], speed * s[i])
    return poses


def random_intrinsics(rng: np.random.Generator, size: tuple[int, int], focal: float | None = None) -> np.ndarray:
    """Pinhole ``K`` ``(3, 3)`` for ``size = (H, W)``: ``fx = fy = focal`` (``None``: uniform in ``[0.55, 1.1] W``),
    principal point within 5 % of the image centre."""
    h, w = size
    f = rng.uniform(0.55, 1.1) * w if focal is None else float(focal)
    cx = (w - 1) / 2 + rng.uniform(-0.05, 0.05) * w
    cy = (h - 1) / 2 + rng.uniform(-0.05, 0.05) * h
    return np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])


# ---- rendering --------------------------------------------------------------------------------------------------
def _shade(tube: Tube, texture: Texture, origin: np.ndarray, dirs: np.ndarray, shading: bool,
           guess: np.ndarray | None = None) -> np.ndarray:
    """Colours ``(N, 3)`` in [0, 1] seen along rays ``origin + t dirs`` (``guess``: as :meth:`Tube.cast`)."""
    t, wall = tube.cast(origin, dirs, guess)
    p = origin[None, :] + t[:, None] * dirs
    cap = np.flatnonzero(~wall)
    phi = np.arctan2(p[:, 1].astype(np.float32), p[:, 0].astype(np.float32))
    albedo = texture.wall(p[:, 2], phi)  # everywhere (the cap is a small part of the image), then the cap's
    albedo[cap] = texture.cap(p[cap, 0], p[cap, 1])
    if not shading:
        return albedo ** (1 / 2.2)
    normal = tube.normal(p)
    normal[cap] = (0.0, 0.0, -1.0)
    to_light = origin[None, :] - p
    dist2 = (to_light * to_light).sum(1)
    cos = np.maximum((normal * to_light).sum(1) / np.sqrt(dist2), 0.0)
    falloff = 4.0 * tube.r0**2 / dist2  # gain 4: walls a radius away at grazing light are well exposed
    light = albedo * (cos * falloff)[:, None] + (0.3 * cos**12 * falloff)[:, None]
    return np.clip(light, 0.0, 1.0) ** (1 / 2.2)


def _pixel_rays(K: np.ndarray, size: tuple[int, int], factor: int) -> np.ndarray:
    """Camera-frame rays ``(H * factor * W * factor, 3)`` with ``z = 1`` through the centres of a ``factor`` x
    ``factor`` subpixel grid (row-major), in the pixel coordinates of ``K``."""
    h, w = size
    offsets = (np.arange(factor) + 0.5) / factor - 0.5
    u = (np.arange(w)[:, None] + offsets[None, :]).ravel()
    v = (np.arange(h)[:, None] + offsets[None, :]).ravel()
    vv, uu = np.meshgrid(v, u, indexing="ij")
    return np.stack([(uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1], np.ones_like(uu)], -1).reshape(-1, 3)


def render_sequence(num_frames: int = 40, size: tuple[int, int] = (128, 160), seed: int = 0, shading: bool = True,
                    focal: float | None = None, antialias: bool = True) -> EndoscopySequence:
    """Render one random sequence (module docs) from ``numpy.random.default_rng(seed)``.

    Args:
        num_frames: frames ``T`` (at least 1).
        size: ``(H, W)`` in pixels.
        seed: everything (tube, texture, trajectory, intrinsics) follows from it.
        shading: light at the camera with inverse-square falloff and highlights; ``False``: the albedo alone.
        focal: ``fx = fy`` in pixels (``None``: random in ``[0.55, 1.1] * W``).
        antialias: render colours at 2x and box-downsample (depth is always cast at the pixel centres).
    """
    h, w = (int(v) for v in size)
    if num_frames < 1 or h < 1 or w < 1:
        raise DataError(f"num_frames and size must be positive, got num_frames={num_frames}, size={size}")
    if focal is not None and not (math.isfinite(focal) and focal > 0):
        raise DataError(f"focal must be a positive number of pixels, got {focal}")
    rng = np.random.default_rng(seed)
    K = random_intrinsics(rng, (h, w), focal)
    r0 = rng.uniform(1.3, 1.7)
    poses = _trajectory(rng, num_frames, r0)
    tube = _random_tube(rng, r0, cap_z=float(poses[-1, 2, 3]) + 6 * r0)
    texture = _random_texture(rng, r0)
    factor = 2 if antialias else 1
    centre_rays, colour_rays = _pixel_rays(K, (h, w), 1), _pixel_rays(K, (h, w), factor)
    frames = np.empty((num_frames, h, w, 3), dtype=np.float32)
    depth = np.empty((num_frames, h, w), dtype=np.float32)
    for i, pose in enumerate(poses):
        rotation, origin = pose[:3, :3], pose[:3, 3]
        t, wall = tube.cast(origin, centre_rays @ rotation.T)
        depth[i] = t.reshape(h, w)  # rays have camera z = 1, so the ray parameter is the z-depth
        guess = np.where(wall, t, np.inf).reshape(h, 1, w, 1).repeat(factor, 1).repeat(factor, 3).ravel()
        colour = _shade(tube, texture, origin, colour_rays @ rotation.T, shading, guess).reshape(h, factor, w,
                                                                                                 factor, 3)
        frames[i] = sum(colour[:, j, :, k] for j in range(factor) for k in range(factor)) / factor**2
    return EndoscopySequence(frames=frames, depth=depth, poses=poses, K=K)


# ---- writing the folder layout ----------------------------------------------------------------------------------
def _atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file next to ``path`` and move it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _prepare(out: Path) -> None:
    """Create ``out`` or clear a previous output of this generator; refuse anything else that is not empty."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    entries = sorted(out.iterdir())
    if not entries:
        return
    readme = out / "README.txt"
    ours = readme.is_file() and readme.read_text(errors="replace").startswith(README_MARKER)
    if not ours:
        shown = ", ".join(e.name for e in entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise FileExistsError(f"{out} is not empty ({shown}) and is not a previous make_endoscopy output (no "
                              f"README.txt starting with {README_MARKER!r}); choose an empty or new folder")
    for entry in entries:  # a previous output: drop its sequences so none of a longer run is left behind
        if entry.is_dir() and entry.name.startswith("seq_"):
            shutil.rmtree(entry)


def _readme(sequences: int, frames: int, size: tuple[int, int], seed: int, shading: bool) -> str:
    return (f"{README_MARKER} (vadapt.data.endoscopy.make_endoscopy). {sequences} sequences of {frames} frames of "
            f"{size[0]}x{size[1]} pixels rendered by ray casting a textured tube with a closed far end, seen from a "
            f"camera moving along it{' with a light at the camera' if shading else ' (albedo only, no lighting)'}; "
            f"every sequence has its own random pinhole intrinsics. Lengths are in centimetres. Layout: "
            f"seq_NNN/images/NNNNNN.png (8-bit RGB), seq_NNN/depth/NNNNNN.npy (float32 (H, W) z-depth along the "
            f"optical axis), seq_NNN/intrinsics.txt (3x3 K in pixels, pixel centres at integer coordinates), "
            f"seq_NNN/poses.txt (one line per frame: row-major 3x4 camera-to-world [R|t], camera x right, y down, "
            f"z forward). Options: seed={seed} (sequence i uses seed {seed}*1000+i), sequences={sequences}, "
            f"frames={frames}, size={list(size)}, shading={shading}.\n")


def write_sequence(folder: str | Path, sequence: EndoscopySequence) -> Path:
    """Write one sequence in the depth-video layout (module docs) to ``folder`` (created); returns it."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "depth").mkdir(exist_ok=True)
    images = np.round(np.clip(sequence.frames, 0, 1) * 255).astype(np.uint8)
    for i, (image, depth) in enumerate(zip(images, sequence.depth)):
        _atomic_write(folder / "images" / f"{i:06d}.png",
                      lambda f, a=image: Image.fromarray(a, "RGB").save(f, format="PNG", compress_level=1))
        _atomic_write(folder / "depth" / f"{i:06d}.npy", lambda f, a=depth: np.save(f, a.astype(np.float32)))
    _atomic_write(folder / "intrinsics.txt",
                  lambda f: f.write("".join(" ".join(f"{v:.10g}" for v in row) + "\n" for row in sequence.K).encode()))
    _atomic_write(folder / "poses.txt", lambda f: f.write("".join(
        " ".join(f"{v:.12g}" for v in pose[:3].ravel()) + "\n" for pose in sequence.poses).encode()))
    return folder


def make_endoscopy(out: str | Path, sequences: int = 8, frames: int = 40, size: tuple[int, int] = (128, 160),
                   seed: int = 0, shading: bool = True, progress: bool = True) -> list[Path]:
    """Render ``sequences`` sequences (sequence ``i`` from seed ``seed * 1000 + i``) into ``out`` and return their
    folders ``out/seq_000``, ... (layout in the module docs).

    ``out`` must be missing, empty, or a previous output of this function (recognised by its ``README.txt``),
    whose sequence folders are then replaced; anything else raises ``FileExistsError``. Files are written to a
    temporary name in their folder and renamed into place.
    """
    size = (int(size[0]), int(size[1]))
    if sequences < 1 or frames < 1 or min(size) < 1:
        raise DataError(f"sequences, frames and size must be positive, got {sequences}, {frames}, {size}")
    out = Path(out)
    _prepare(out)
    _atomic_write(out / "README.txt", lambda f: f.write(_readme(sequences, frames, size, seed, shading).encode()))
    folders = []
    for i in tqdm(range(sequences), desc="endoscopy", unit="seq", disable=not progress):
        sequence = render_sequence(frames, size, seed=seed * 1000 + i, shading=shading)
        folders.append(write_sequence(out / f"seq_{i:03d}", sequence))
    return folders
