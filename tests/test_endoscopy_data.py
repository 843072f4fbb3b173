"""The synthetic endoscopy generator (vadapt.data.endoscopy): shapes, determinism, geometric consistency of depth,
poses and intrinsics across frames, brightness constancy without shading, the written folder layout."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vadapt.data.endoscopy import EndoscopySequence, Tube, make_endoscopy, render_sequence

SIZE = (48, 64)


@pytest.fixture(scope="module")
def shaded() -> EndoscopySequence:
    return render_sequence(num_frames=6, size=SIZE, seed=3)


@pytest.fixture(scope="module")
def albedo() -> EndoscopySequence:
    return render_sequence(num_frames=6, size=SIZE, seed=3, shading=False)


def bilinear(image: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``image`` ``(H, W)`` or ``(H, W, C)`` sampled at float pixel coordinates (centres at integers)."""
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    fu, fv = u - u0, v - v0
    if image.ndim == 3:
        fu, fv = fu[:, None], fv[:, None]
    h, w = image.shape[:2]
    u1, v1 = np.minimum(u0 + 1, w - 1), np.minimum(v0 + 1, h - 1)
    return ((1 - fv) * ((1 - fu) * image[v0, u0] + fu * image[v0, u1])
            + fv * ((1 - fu) * image[v1, u0] + fu * image[v1, u1]))


def project(seq: EndoscopySequence, src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Frame ``src``'s pixels lifted with its depth and projected into frame ``dst``: (u, v, z in dst, inside)."""
    h, w = seq.depth.shape[1:]
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.linalg.inv(seq.K) @ np.stack([u.ravel(), v.ravel(), np.ones(h * w)])
    cam = rays * seq.depth[src].ravel().astype(np.float64)
    world = seq.poses[src][:3, :3] @ cam + seq.poses[src][:3, 3:]
    to_dst = np.linalg.inv(seq.poses[dst])
    cam_dst = to_dst[:3, :3] @ world + to_dst[:3, 3:]
    pix = seq.K @ cam_dst
    pu, pv, z = pix[0] / pix[2], pix[1] / pix[2], cam_dst[2]
    inside = (z > 0) & (pu >= 0) & (pu <= w - 1) & (pv >= 0) & (pv <= h - 1)
    return pu, pv, z, inside


def test_shapes_dtypes_ranges(shaded):
    t, (h, w) = 6, SIZE
    assert shaded.frames.shape == (t, h, w, 3) and shaded.frames.dtype == np.float32
    assert shaded.depth.shape == (t, h, w) and shaded.depth.dtype == np.float32
    assert shaded.poses.shape == (t, 4, 4) and shaded.poses.dtype == np.float64
    assert shaded.K.shape == (3, 3) and shaded.K.dtype == np.float64
    assert 0.0 <= shaded.frames.min() and shaded.frames.max() <= 1.0
    assert shaded.frames.std() > 0.05  # not a flat image
    assert np.isfinite(shaded.depth).all() and shaded.depth.min() > 0
    rotations = shaded.poses[:, :3, :3]
    np.testing.assert_allclose(rotations @ rotations.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (t, 3, 3)),
                               atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-12)
    np.testing.assert_array_equal(shaded.poses[:, 3], np.broadcast_to([0, 0, 0, 1.0], (t, 4)))
    assert 0.55 * w <= shaded.K[0, 0] == shaded.K[1, 1] <= 1.1 * w
    assert abs(shaded.K[0, 2] - (w - 1) / 2) <= 0.05 * w and abs(shaded.K[1, 2] - (h - 1) / 2) <= 0.05 * h
    assert np.all(np.diff(shaded.poses[:, 2, 3]) > 0)  # moving forward along the tube


def test_focal_option_and_bad_input():
    seq = render_sequence(num_frames=1, size=(16, 20), seed=0, focal=30.0, antialias=False)
    assert seq.K[0, 0] == seq.K[1, 1] == 30.0
    with pytest.raises(ValueError, match="focal"):
        render_sequence(num_frames=1, size=(16, 20), focal=-1.0)
    with pytest.raises(ValueError, match="num_frames"):
        render_sequence(num_frames=0)


def test_deterministic_per_seed_and_different_between_seeds(shaded):
    again = render_sequence(num_frames=6, size=SIZE, seed=3)
    for name in ("frames", "depth", "poses", "K"):
        np.testing.assert_array_equal(getattr(again, name), getattr(shaded, name))
    other = render_sequence(num_frames=6, size=SIZE, seed=4)
    assert np.abs(other.frames - shaded.frames).mean() > 0.02
    assert not np.allclose(other.K, shaded.K) and not np.allclose(other.poses, shaded.poses)


def test_depth_poses_and_intrinsics_are_consistent(shaded):
    """Frame t's points, lifted with its depth and moved with the poses, land inside frame t + 1 at the depth
    frame t + 1 was rendered with (the property self-supervised depth learning rests on)."""
    for src, dst in ((0, 1), (2, 3), (5, 4)):
        pu, pv, z, inside = project(shaded, src, dst)
        assert inside.mean() > 0.8  # the scope pans up to 20 degrees: most of a frame stays in view
        rendered = bilinear(shaded.depth[dst].astype(np.float64), pu[inside], pv[inside])
        rel = np.abs(rendered - z[inside]) / z[inside]
        assert np.median(rel) < 2e-3 and np.mean(rel < 0.02) > 0.95, (np.median(rel), np.mean(rel < 0.02))


def test_wall_hits_are_first_hits():
    """Ray casting against brute force: the wall function sampled densely along each ray changes sign first
    where the renderer says the ray hits (or never before the cap)."""
    rng = np.random.default_rng(0)
    tube = Tube(r0=1.5, a1=0.08, k1=0.9, p1=0.3, a2=0.06, k2=0.4, p2=1.0, cap_z=30.0)
    origin = np.array([0.15, -0.1, 0.2])
    angle = rng.uniform(0, 2 * np.pi, 300)
    slope = np.concatenate([rng.uniform(0.3, 1.5, 150), rng.uniform(0.02, 0.12, 150)])  # the second half grazes
    dirs = np.stack([slope * np.cos(angle), slope * np.sin(angle), np.ones(300)], 1)
    t, wall = tube.cast(origin, dirs)
    assert 20 < (wall[150:]).sum() < 140  # grazing rays hit both the far wall and the cap
    t_cap = (tube.cap_z - origin[2]) / dirs[:, 2]
    for rows in np.array_split(np.arange(300), 6):
        samples = np.linspace(0, 1, 20001)[None, :] * t_cap[rows, None]
        points = origin[None, None, :] + samples[..., None] * dirs[rows, None, :]
        f = np.hypot(points[..., 0], points[..., 1]) - tube.radius(points[..., 2],
                                                                    np.arctan2(points[..., 1], points[..., 0]))
        crossed = f >= 0
        hit = crossed.any(1)
        np.testing.assert_array_equal(wall[rows], hit)
        brute = samples[np.arange(len(rows)), crossed.argmax(1)]
        assert np.all(np.abs(t[rows][hit] - brute[hit]) <= 1.01 * samples[hit, 1])
        np.testing.assert_allclose(t[rows][~hit], t_cap[rows][~hit])
    p = origin + t[wall, None] * dirs[wall]  # and the hits lie on the wall
    np.testing.assert_allclose(np.hypot(p[:, 0], p[:, 1]), tube.radius(p[:, 2], np.arctan2(p[:, 1], p[:, 0])),
                               atol=1e-6)


def test_colour_of_a_surface_point_is_the_same_in_both_frames_without_shading(albedo):
    pu, pv, _, inside = project(albedo, 0, 2)
    inside &= albedo.depth[0].ravel() < np.percentile(albedo.depth[0], 90)  # away from the cap's rim
    source = albedo.frames[0].reshape(-1, 3)[inside]
    error = np.abs(bilinear(albedo.frames[2].astype(np.float64), pu[inside], pv[inside]) - source)
    # what is left is bilinear interpolation of texture finer than a pixel (it shrinks with the image size)
    assert np.median(error) < 0.005 and error.mean() < 0.015, (np.median(error), error.mean())
    still = np.abs(albedo.frames[2].reshape(-1, 3)[inside] - source)  # the check has teeth: no motion is worse
    assert np.median(still) > 4 * np.median(error), (np.median(still), np.median(error))


def test_shading_darkens_with_depth(shaded, albedo):
    depth, lum = shaded.depth.ravel(), shaded.frames.mean(-1).ravel()
    near, far = depth < np.percentile(depth, 25), depth > np.percentile(depth, 75)
    assert lum[far].mean() < 0.6 * lum[near].mean()
    assert not np.allclose(shaded.frames, albedo.frames)
    np.testing.assert_array_equal(shaded.depth, albedo.depth)  # the same scene, lit or not


def test_intrinsics_differ_between_written_sequences_and_layout_round_trips(tmp_path):
    out = tmp_path / "endo"
    folders = make_endoscopy(out, sequences=3, frames=3, size=(24, 32), seed=1, progress=False)
    assert folders == [out / f"seq_{i:03d}" for i in range(3)]
    readme = (out / "README.txt").read_text()
    assert "seed=1" in readme and "centimetres" in readme
    focals = []
    for i, folder in enumerate(folders):
        seq = render_sequence(3, (24, 32), seed=1000 + i)
        assert sorted(p.name for p in (folder / "images").iterdir()) == ["000000.png", "000001.png", "000002.png"]
        for t in range(3):
            image = np.asarray(Image.open(folder / "images" / f"{t:06d}.png"))
            assert image.dtype == np.uint8 and image.shape == (24, 32, 3)
            assert np.abs(image / 255.0 - seq.frames[t]).max() <= 0.5 / 255 + 1e-6
            depth = np.load(folder / "depth" / f"{t:06d}.npy")
            assert depth.dtype == np.float32
            np.testing.assert_array_equal(depth, seq.depth[t])
        K = np.loadtxt(folder / "intrinsics.txt")
        np.testing.assert_allclose(K, seq.K, rtol=1e-9)
        poses = np.loadtxt(folder / "poses.txt")
        assert poses.shape == (3, 12)
        np.testing.assert_allclose(poses.reshape(3, 3, 4), seq.poses[:, :3], rtol=1e-10, atol=1e-12)
        focals.append(K[0, 0])
        assert not list(folder.rglob(".*"))  # no temporary files left behind
    assert len(set(focals)) == 3


def test_rewrites_its_own_output_and_refuses_a_foreign_folder(tmp_path):
    out = tmp_path / "endo"
    make_endoscopy(out, sequences=2, frames=2, size=(12, 16), progress=False)
    make_endoscopy(out, sequences=1, frames=2, size=(12, 16), progress=False)  # a previous output: replaced
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "seq_000"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a previous make_endoscopy output"):
        make_endoscopy(foreign, sequences=1, frames=2, size=(12, 16), progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me" and len(list(foreign.iterdir())) == 1
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError):
        make_endoscopy(tmp_path / "file", sequences=1, frames=1, size=(8, 8), progress=False)
