"""Camera / geometry condition maps for MV-Adapter (Huang et al., 2024, arXiv:2412.03632).

Cameras are camera-to-world matrices ``c2w`` ``(N, 4, 4)`` in the Blender / OpenGL convention the official code
uses (world z up; camera looks along its -z axis, y up). Maps are ``(N, 6, H, W)`` in ``[0, 1]`` (the T2IAdapter
input of the official pipelines, ``VaeImageProcessor(do_normalize=False)``).

* :func:`ortho_camera_maps`: the official "plucker" condition for orthographic views: per view a CONSTANT map
  ``[view direction, normalised camera position]`` (the official ``R^T (0, 0, 1)`` and ``normalize(-R^T T)`` of the
  OpenCV extrinsics, i.e. the camera's forward axis and position), mapped ``((x + 1) / 2).clamp(0, 1)``.
* :func:`ray_maps`: per-pixel Plücker rays ``(d, o x d)`` of perspective cameras (official code, unused by configs).
* :func:`position_normal_maps`: geometry guidance (tg2mv / ig2mv): ``(p + 0.5).clamp`` ++ ``(n / 2 + 0.5).clamp``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

#: official text/image-to-multiview views: elevation 0, these azimuths minus 90 degrees, distance 1.8
OFFICIAL_AZIMUTHS = (0.0, 45.0, 90.0, 180.0, 270.0, 315.0)
OFFICIAL_DISTANCE = 1.8


def orbit_cameras(elevation_deg: Sequence[float] | torch.Tensor, azimuth_deg: Sequence[float] | torch.Tensor,
                  distance: float | Sequence[float] | torch.Tensor = OFFICIAL_DISTANCE) -> torch.Tensor:
    """Cameras on a sphere looking at the origin (world z up): ``c2w`` ``(N, 4, 4)``.

    Position ``dist * (cos e cos a, cos e sin a, sin e)``; columns of the rotation are ``right``, ``up`` and
    ``-forward`` (camera looks along -z), as the official ``get_c2w``. Elevations of exactly +-90 degrees are
    degenerate (forward parallel to the up axis).
    """
    azim = torch.as_tensor(azimuth_deg, dtype=torch.float32).reshape(-1)
    elev = torch.as_tensor(elevation_deg, dtype=torch.float32).reshape(-1).expand_as(azim)
    dist = torch.as_tensor(distance, dtype=torch.float32).reshape(-1).expand_as(azim)
    e, a = torch.deg2rad(elev), torch.deg2rad(azim)
    pos = torch.stack([dist * e.cos() * a.cos(), dist * e.cos() * a.sin(), dist * e.sin()], dim=-1)  # (N, 3)
    forward = F.normalize(-pos, dim=-1)
    world_up = torch.tensor([0.0, 0.0, 1.0]).expand_as(forward)
    right = F.normalize(torch.linalg.cross(forward, world_up, dim=-1), dim=-1)
    up = F.normalize(torch.linalg.cross(right, forward, dim=-1), dim=-1)
    c2w = torch.zeros(len(azim), 4, 4)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, up, -forward, pos
    c2w[:, 3, 3] = 1.0
    return c2w


def official_six_view_cameras(distance: float = OFFICIAL_DISTANCE) -> torch.Tensor:
    """The official 6 views (front, front-right, right, back, left, front-left): ``c2w`` ``(6, 4, 4)``.

    Elevation 0, azimuths ``[0, 45, 90, 180, 270, 315] - 90`` degrees, distance 1.8 (``scripts/inference_t2mv_*``).
    """
    return orbit_cameras([0.0] * 6, [a - 90.0 for a in OFFICIAL_AZIMUTHS], distance)


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """The official plucker normalisation ``((x + 1) / 2).clamp(0, 1)`` (plucker_offset 1, plucker_scale 2)."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def ortho_camera_maps(c2w: torch.Tensor, height: int, width: int | None = None, normalize: bool = True
                      ) -> torch.Tensor:
    """Official orthographic camera condition: ``c2w`` ``(N, 4, 4)`` -> ``(N, 6, H, W)``, constant per view.

    Channels 0-2: the view direction (camera forward axis in world coordinates); 3-5: the camera position
    normalised to unit length. The official orthographic scale does not enter the map. ``normalize`` maps the
    values into ``[0, 1]`` with :func:`to_unit_range` (official); ``False`` returns the raw ``[-1, 1]`` values.
    """
    width = height if width is None else width
    c2w = c2w.float()
    forward = F.normalize(-c2w[:, :3, 2], dim=-1)
    pos = F.normalize(c2w[:, :3, 3], dim=-1)
    emb = torch.cat([forward, pos], dim=-1)  # (N, 6)
    maps = emb[:, :, None, None].expand(-1, -1, height, width).contiguous()
    return to_unit_range(maps) if normalize else maps


def ray_maps(c2w: torch.Tensor, height: int, width: int | None = None, fov_deg: float | None = None,
             focal: float | None = None, normalize: bool = True) -> torch.Tensor:
    """Per-pixel Plücker ray maps of perspective cameras: ``c2w`` ``(N, 4, 4)`` -> ``(N, 6, H, W)`` = ``(d, o x d)``.

    ``d`` is the unit world direction through each pixel centre (camera looks along -z, image y down), ``o`` the
    camera centre. Give the horizontal field of view ``fov_deg`` or the ``focal`` length in pixels (official
    ``focal = 0.5 W / tan(fov / 2)``). ``normalize`` applies :func:`to_unit_range` (as the official dataset does
    for every plucker modality; moments larger than 1 are clamped there).
    """
    width = height if width is None else width
    if (fov_deg is None) == (focal is None):
        raise ValueError("ray_maps needs exactly one of fov_deg or focal")
    if focal is None:
        focal = 0.5 * width / math.tan(0.5 * math.radians(fov_deg))
    c2w = c2w.float()
    jj, ii = torch.meshgrid(torch.arange(height, dtype=torch.float32) + 0.5,
                            torch.arange(width, dtype=torch.float32) + 0.5, indexing="ij")
    dirs = torch.stack([(ii - width / 2) / focal, -(jj - height / 2) / focal, -torch.ones_like(ii)], dim=-1)
    dirs = F.normalize(dirs, dim=-1)  # (H, W, 3) camera frame
    rays_d = torch.einsum("hwj,nij->nhwi", dirs, c2w[:, :3, :3])  # (N, H, W, 3)
    rays_o = c2w[:, None, None, :3, 3].expand_as(rays_d)
    maps = torch.cat([rays_d, torch.linalg.cross(rays_o, rays_d, dim=-1)], dim=-1).permute(0, 3, 1, 2)
    return to_unit_range(maps) if normalize else maps.contiguous()


def position_normal_maps(position: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """Geometry-guidance condition (official tg2mv / ig2mv): position ``(N, 3, H, W)`` in the object's
    ``[-0.5, 0.5]`` box and unit normals ``(N, 3, H, W)`` -> ``(N, 6, H, W)`` in ``[0, 1]``."""
    return torch.cat([(position + 0.5).clamp(0.0, 1.0), (normal * 0.5 + 0.5).clamp(0.0, 1.0)], dim=1)
