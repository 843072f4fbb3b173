"""Point-cloud data: readers, normalisation, bad input, the synthetic shapes, the three datamodules.

All data is tiny and written by the tests into tmp_path (meshes, point files, an .h5, a ShapeNetPart-layout
folder); the pyvista meshes are the ones inside its wheel and the test skips without pyvista.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from vadapt.data.io import DataError
from vadapt.data.points import (
    KNOWN_SUFFIXES,
    PointAugment,
    PointCountWarning,
    PointFolderDataModule,
    ScanObjectNNDataModule,
    ShapeNetPartDataModule,
    bundled_meshes,
    normalize_points,
    read_off,
    read_points,
)
from vadapt.data.shapes import SHAPE_CLASSES, make_shapes, write_ply

RNG = np.random.default_rng

# a unit cube: 8 vertices, 6 quads (the OFF file's faces are quads, split into triangles by the reader)
CUBE_V = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=float) * 2 + 3
CUBE_Q = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
CUBE_T = [(q[0], q[1], q[2]) for q in CUBE_Q] + [(q[0], q[2], q[3]) for q in CUBE_Q]


def write_off(path: Path, glued: bool = False) -> Path:
    head = "OFF8 6 0\n" if glued else "OFF\n8 6 0\n"  # ModelNet40 has glued headers
    body = "".join(f"{x} {y} {z}\n" for x, y, z in CUBE_V) + "".join(f"4 {a} {b} {c} {d}\n" for a, b, c, d in CUBE_Q)
    path.write_text(head + body)
    return path


def write_obj(path: Path, faces: bool = True) -> Path:
    text = "".join(f"v {x} {y} {z}\n" for x, y, z in CUBE_V)
    if faces:
        text += "".join(f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in CUBE_T)
    path.write_text(text)
    return path


def write_mesh_ply(path: Path) -> Path:
    header = (f"ply\nformat ascii 1.0\nelement vertex {len(CUBE_V)}\nproperty float x\nproperty float y\n"
              f"property float z\nelement face {len(CUBE_T)}\nproperty list uchar int vertex_indices\nend_header\n")
    body = "".join(f"{x} {y} {z}\n" for x, y, z in CUBE_V) + "".join(f"3 {a} {b} {c}\n" for a, b, c in CUBE_T)
    path.write_text(header + body)
    return path


def on_cube_surface(points: np.ndarray) -> bool:
    """Points (in the cube's own coordinates 3..5) lie on a face: one coordinate at 3 or 5."""
    at_face = (np.abs(points - 3) < 1e-4) | (np.abs(points - 5) < 1e-4)
    return bool(at_face.any(1).all() and (points > 3 - 1e-4).all() and (points < 5 + 1e-4).all())


def check_normalised(points: np.ndarray, n: int) -> None:
    assert points.shape == (n, 3) and points.dtype == np.float32
    assert np.abs(points.mean(0)).max() < 0.05
    assert np.linalg.norm(points, axis=1).max() == pytest.approx(1.0, abs=1e-5)


# ---- readers ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["off", "off_glued", "obj", "ply_mesh"])
def test_mesh_readers_sample_the_surface(tmp_path, kind):
    path = {"off": lambda: write_off(tmp_path / "c.off"), "off_glued": lambda: write_off(tmp_path / "c.off", True),
            "obj": lambda: write_obj(tmp_path / "c.obj"),
            "ply_mesh": lambda: write_mesh_ply(tmp_path / "c.ply")}[kind]()
    raw = read_points(path, 500, RNG(0), normalize=False)
    assert raw.shape == (500, 3) and on_cube_surface(raw)
    # every face is hit about equally (area-weighted): each of the 6 faces gets ~1/6
    faces = np.concatenate([np.abs(raw - 3) < 1e-4, np.abs(raw - 5) < 1e-4], 1).argmax(1)
    assert np.bincount(faces, minlength=6).min() > 40
    check_normalised(read_points(path, 300, RNG(1)), 300)
    assert np.array_equal(read_points(path, 64, RNG(5)), read_points(path, 64, RNG(5)))


def test_off_quads_are_split_into_triangles(tmp_path):
    verts, tris = read_off(write_off(tmp_path / "c.off"))
    assert verts.shape == (8, 3) and tris.shape == (12, 3)


def test_point_file_readers(tmp_path):
    cloud = RNG(0).normal(size=(300, 3)).astype(np.float32) * [1, 2, 3] + 7
    np.save(tmp_path / "a.npy", np.concatenate([cloud, np.ones((300, 3), np.float32)], 1))  # extra columns
    np.savetxt(tmp_path / "a.xyz", cloud)
    np.savetxt(tmp_path / "a.txt", np.concatenate([cloud, np.zeros((300, 3))], 1), delimiter=",")  # ModelNet .txt
    write_ply(tmp_path / "a.ply", cloud)
    expected = normalize_points(cloud)
    for name in ("a.npy", "a.xyz", "a.txt", "a.ply"):
        out = read_points(tmp_path / name, 300, RNG(0))
        check_normalised(out, 300)
        # all 300 points, shuffled: the same set as the normalised input
        assert np.allclose(np.sort(out, 0), np.sort(expected, 0), atol=1e-4), name
        sub = read_points(tmp_path / name, 100, RNG(0), normalize=False)
        assert sub.shape == (100, 3) and len(np.unique(sub, axis=0)) == 100


def test_normalisation_centres_and_scales():
    pts = np.array([[10, 0, 0], [12, 0, 0], [11, 4, 0]], dtype=np.float32)
    out = normalize_points(pts)
    assert np.allclose(out.mean(0), 0, atol=1e-6)
    assert np.linalg.norm(out, axis=1).max() == pytest.approx(1.0)


def test_fps_sampling_spreads_points(tmp_path):
    cloud = np.concatenate([RNG(0).normal(size=(900, 3)) * 0.01, [[1, 0, 0], [-1, 0, 0], [0, 1, 0]]])
    np.save(tmp_path / "a.npy", cloud)
    out = read_points(tmp_path / "a.npy", 4, RNG(0), sampling="fps", normalize=False)
    assert sum(np.linalg.norm(out, axis=1) > 0.5) == 3  # the three outliers are always picked


@pytest.mark.parametrize("case, match", [
    ("empty_npy", "has no points"),
    ("empty_xyz", "has no points"),
    ("nan", "NaN or infinite"),
    ("one_point", "at one position"),
    ("obj_no_faces", "8 vertices but no faces"),
    ("unknown", "unknown extension '.stl'; known: .ply, .off, .obj"),
    ("bad_shape", "expected \\(points, 3 or more\\)"),
    ("ragged", "rows of different lengths"),
])
def test_bad_files_say_why(tmp_path, case, match):
    path = {
        "empty_npy": lambda: _save(tmp_path / "e.npy", np.zeros((0, 3), np.float32)),
        "empty_xyz": lambda: _text(tmp_path / "e.xyz", "\n# nothing\n"),
        "nan": lambda: _save(tmp_path / "n.npy", np.array([[0, 0, 0], [np.nan, 1, 1]], np.float32)),
        "one_point": lambda: _save(tmp_path / "o.npy", np.ones((5, 3), np.float32)),
        "obj_no_faces": lambda: write_obj(tmp_path / "v.obj", faces=False),
        "unknown": lambda: _text(tmp_path / "m.stl", "solid"),
        "bad_shape": lambda: _save(tmp_path / "b.npy", np.zeros((4, 2), np.float32)),
        "ragged": lambda: _text(tmp_path / "r.xyz", "0 0 0\n1 1 1 1\n"),
    }[case]()
    with pytest.raises(DataError, match=match) as info:
        read_points(path, 16, RNG(0))
    assert str(path) in str(info.value)


def test_fewer_points_resampled_with_replacement(tmp_path):
    np.save(tmp_path / "s.npy", RNG(0).normal(size=(10, 3)).astype(np.float32))
    with pytest.warns(PointCountWarning, match="10 points, fewer than the 32"):
        out = read_points(tmp_path / "s.npy", 32, RNG(0))
    assert out.shape == (32, 3) and len(np.unique(out, axis=0)) == 10


def test_bundled_pyvista_meshes():
    pytest.importorskip("pyvista")
    meshes = bundled_meshes()
    assert {"airplane", "ant"} <= set(meshes)
    for path in meshes.values():
        check_normalised(read_points(path, 256, RNG(0)), 256)


# ---- synthetic shapes ------------------------------------------------------------------------------------
def test_make_shapes_layout_determinism_and_parts(tmp_path):
    summary = make_shapes(tmp_path / "a", classes=10, per_class=5, points=128, seed=3)
    make_shapes(tmp_path / "b", classes=10, per_class=5, points=128, seed=3)
    make_shapes(tmp_path / "c", classes=["table", "mug"], per_class=5, points=128, seed=4)
    root = tmp_path / "a"
    names = (root / "classes.txt").read_text().split()
    assert names == sorted(SHAPE_CLASSES[:10]) == summary["classes"] and len(names) >= 10
    assert summary["train"] == 4 and summary["test"] == 1
    files = sorted(p.relative_to(root) for p in root.rglob("*.npy"))
    assert len(files) == 10 * 5 * 2
    for rel in files:  # same seed, same arrays
        assert np.array_equal(np.load(root / rel), np.load(tmp_path / "b" / rel))
    assert not np.array_equal(np.load(root / "table/train/0000.npy"), np.load(tmp_path / "c/table/train/0000.npy"))
    table = json.loads((root / "parts.json").read_text())
    for name, n_parts in (("table", 2), ("mug", 2), ("lamp", 3), ("sphere", 1)):
        ids = table["classes"][name]["ids"]
        assert len(ids) == n_parts
        parts = np.load(root / name / "train" / "0001_parts.npy")
        assert parts.shape == (128,) and set(parts.tolist()) <= set(ids)
        if n_parts > 1:
            assert len(set(parts.tolist())) >= 2  # e.g. table top and legs both present
    pts = np.load(root / "cube/train/0000.npy")
    assert pts.shape == (128, 3) and pts.dtype == np.float32
    with pytest.raises(DataError, match="classes must be between 1 and"):
        make_shapes(tmp_path / "d", classes=99)


def test_table_parts_are_top_and_legs(tmp_path):
    from vadapt.data.shapes import sample_shape

    pts, parts = sample_shape("table", 2000, RNG(0))
    assert pts[parts == 0, 1].min() > pts[parts == 1, 1].mean()  # the top is above the legs


# ---- datamodules -------------------------------------------------------------------------------------------
def _batch_ok(batch: dict, b: int, n: int, parts: bool = False) -> None:
    assert batch["points"].shape == (b, n, 3) and batch["points"].dtype == torch.float32
    assert batch["label"].shape == (b,) and batch["label"].dtype == torch.int64
    if parts:
        assert batch["parts"].shape == (b, n) and batch["parts"].dtype == torch.int64
        assert batch["category"].shape == (b,) and torch.equal(batch["category"], batch["label"])


def test_point_folder_datamodule_on_shapes(tmp_path):
    make_shapes(tmp_path, classes=10, per_class=5, points=64, seed=0)
    dm = PointFolderDataModule(str(tmp_path), num_points=48, val_fraction=0.25, parts=True, batch_size=4,
                               drop_last=False)
    dm.setup("fit")
    assert dm.num_classes == 10 and dm.class_names == sorted(SHAPE_CLASSES[:10]) and dm.num_parts == 14
    assert len(dm.datasets["train"]) == 30 and len(dm.datasets["val"]) == 10  # 1 of 4 training files per class
    batch = next(iter(dm.train_dataloader()))
    _batch_ok(batch, 4, 48, parts=True)
    val = next(iter(dm.val_dataloader()))
    _batch_ok(val, 4, 48, parts=True)
    for i in range(4):  # part labels belong to the item's class
        allowed = dm.category_parts[int(val["label"][i])]
        assert set(val["parts"][i].tolist()) <= set(allowed)
    assert val["points"].norm(dim=-1).max() <= 1 + 1e-5  # unaugmented: inside the unit sphere
    _batch_ok(next(iter(dm.test_dataloader())), 4, 48, parts=True)


def test_point_folder_reads_ply_shapes_with_parts(tmp_path):
    make_shapes(tmp_path, classes=["table", "mug"], per_class=3, points=40, format="ply")
    dm = PointFolderDataModule(str(tmp_path), num_points=40, val_fraction=0.0, parts=True, batch_size=2)
    batch = next(iter(dm.test_dataloader()))
    _batch_ok(batch, 2, 40, parts=True)
    assert sorted(torch.unique(batch["parts"]).tolist()) == [0, 1, 2, 3]  # mug body/handle, table top/legs


def test_point_folder_modelnet_layout_and_errors(tmp_path):
    for cls in ("chair", "airplane"):
        for split in ("train", "test"):
            (tmp_path / cls / split).mkdir(parents=True)
            for i in range(2):
                write_off(tmp_path / cls / split / f"{cls}_{i:04d}.off", glued=i == 1)
    dm = PointFolderDataModule(str(tmp_path), num_points=32, val_fraction=0.0, batch_size=2)
    assert dm.class_names == ["airplane", "chair"] and not dm.has_split("val")
    batch = next(iter(dm.train_dataloader()))
    _batch_ok(batch, 2, 32)
    assert dm.val_dataloader() == []
    (tmp_path / "chair" / "train" / "notes.stl").write_text("x")
    with pytest.raises(DataError, match="unknown extension '.stl'; known: .ply"):
        PointFolderDataModule(str(tmp_path), val_fraction=0.0).setup("fit")
    (tmp_path / "chair" / "train" / "notes.stl").unlink()
    (tmp_path / "lamp" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="class folder .*lamp.train has no point or mesh files"):
        PointFolderDataModule(str(tmp_path), val_fraction=0.0).setup("fit")


def test_fewer_points_warn_once_per_dataset(tmp_path):
    for i in range(3):
        (tmp_path / "a" / "train").mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / "a" / "train" / f"{i}.npy", RNG(i).normal(size=(8, 3)).astype(np.float32))
    for check in (True, False):
        dm = PointFolderDataModule(str(tmp_path), num_points=16, val_fraction=0.0, batch_size=3, check_files=check)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dm.setup("fit")
            for _ in range(2):
                batch = next(iter(dm.train_dataloader()))
        short = [w for w in caught if issubclass(w.category, PointCountWarning)]
        assert len(short) == 1, check
        assert "fewer than 16 points" in str(short[0].message) and "once per dataset" in str(short[0].message)
        if check:
            assert "3 train cloud(s)" in str(short[0].message)
        _batch_ok(batch, 3, 16)


def test_augmentation_only_in_training(tmp_path):
    make_shapes(tmp_path, classes=2, per_class=4, points=64, seed=0, parts=False)
    dm = PointFolderDataModule(str(tmp_path), num_points=64, val_fraction=0.0, batch_size=8, drop_last=False)
    dm.setup("fit")
    dm.setup("test")
    train, test = dm.datasets["train"], dm.datasets["test"]
    assert train.augment is not None and test.augment is None
    a, b = test[0]["points"], test[0]["points"]
    assert torch.equal(a, b)  # evaluation: fixed sample, no augmentation
    assert a.norm(dim=1).max() == pytest.approx(1.0, abs=1e-5)
    torch.manual_seed(0)
    radii = torch.stack([train[0]["points"].norm(dim=1).max() for _ in range(8)])
    assert radii.std() > 0.01  # training: random scale / shift each time
    dm_off = PointFolderDataModule(str(tmp_path), num_points=64, val_fraction=0.0, augment=False)
    dm_off.setup("fit")
    assert dm_off.datasets["train"].augment is None


def test_point_augment_scale_translate_rotate():
    torch.manual_seed(0)
    pts = torch.randn(200, 3)
    aug = PointAugment(translate=0.0)
    out = aug(pts)
    ratio = out / pts
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), atol=1e-4)  # one scale per axis
    assert ((ratio[0] >= 2 / 3 - 1e-5) & (ratio[0] <= 1.5 + 1e-5)).all()
    rot = PointAugment(scale=(1, 1), translate=0.0, rotate=True, up_axis="y")(pts)
    assert torch.allclose(rot[:, 1], pts[:, 1]) and torch.allclose(rot.norm(dim=1), pts.norm(dim=1), atol=1e-5)
    with pytest.raises(DataError, match="scale_range"):
        PointAugment(scale=(2, 1))


def test_scanobjectnn_datamodule(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = RNG(0)
    for name, n in (("train.h5", 30), ("test.h5", 6)):
        with h5py.File(tmp_path / name, "w") as f:
            f["data"] = rng.normal(size=(n, 40, 3)).astype(np.float32)
            f["label"] = (np.arange(n) % 15).astype(np.int64)[:, None]  # (N, 1) as in some releases
    dm = ScanObjectNNDataModule(str(tmp_path), train_file="train.h5", test_file="test.h5", num_points=32,
                                val_fraction=0.2, batch_size=4)
    dm.setup("fit")
    assert dm.num_classes == 15 and dm.class_names[0] == "bag"
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 30 and len(dm.datasets["val"]) >= 1
    _batch_ok(next(iter(dm.train_dataloader())), 4, 32)
    _batch_ok(next(iter(dm.test_dataloader())), 4, 32)
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["points"] = np.zeros((2, 4, 3), np.float32)
    bad = ScanObjectNNDataModule(str(tmp_path), train_file="bad.h5", test_file=None, val_fraction=0.0)
    with pytest.raises(DataError, match="has no 'data' dataset \\(it has: \\['points'\\]\\)"):
        bad.setup("fit")
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        ScanObjectNNDataModule(str(tmp_path), train_file="missing.h5")


def _shapenetpart(root: Path) -> Path:
    """A tiny ShapeNetPart folder: Airplane (parts 0-3) and Mug (36-37), 3 shapes each, 50-80 points."""
    cats = {"Airplane": "02691156", "Mug": "03797390"}
    (root / "synsetoffset2category.txt").write_text("".join(f"{c}\t{s}\n" for c, s in cats.items()))
    rng = RNG(0)
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for cat, synset in cats.items():
        (root / synset).mkdir(parents=True)
        ids = {"Airplane": [0, 1, 2, 3], "Mug": [36, 37]}[cat]
        for i, split in enumerate(("train", "train", "val", "test")):
            token = f"{synset[-3:]}shape{i}"
            n = 50 + 10 * i
            table = np.concatenate([rng.normal(size=(n, 6)), rng.choice(ids, (n, 1))], 1)
            np.savetxt(root / synset / f"{token}.txt", table, fmt="%.6f")
            lists[split].append(f"shape_data/{synset}/{token}")
    (root / "train_test_split").mkdir()
    for split, entries in lists.items():
        (root / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(json.dumps(entries))
    return root


def test_shapenetpart_datamodule(tmp_path):
    root = _shapenetpart(tmp_path)
    dm = ShapeNetPartDataModule(str(root), num_points=48, batch_size=4)
    dm.setup("fit")
    assert dm.class_names == ["Airplane", "Mug"] and dm.num_parts == 38
    assert dm.category_parts == [[0, 1, 2, 3], [36, 37]]
    assert len(dm.datasets["train"]) == 4 and len(dm.datasets["val"]) == 2
    batch = next(iter(dm.train_dataloader()))
    _batch_ok(batch, 4, 48, parts=True)
    for i in range(4):
        assert set(batch["parts"][i].tolist()) <= set(dm.category_parts[int(batch["category"][i])])
    _batch_ok(next(iter(dm.val_dataloader())), 2, 48, parts=True)
    mugs = ShapeNetPartDataModule(str(root), categories=["Mug"], train_on="trainval", num_points=48, batch_size=3)
    mugs.setup("fit")
    assert not mugs.has_split("val") and mugs.val_dataloader() == []
    assert mugs.datasets["train"].labels == [1, 1, 1]  # the category index among all categories
    with pytest.raises(DataError, match="categories has 'Boat'"):
        ShapeNetPartDataModule(str(root), categories=["Boat"])
    (root / "02691156" / "156shape3.txt").unlink()
    with pytest.raises(DataError, match="lists .shape_data/02691156/156shape3. but .* does not exist"):
        ShapeNetPartDataModule(str(root)).setup("test")


def test_known_suffixes_documented():
    assert set(KNOWN_SUFFIXES) == {".ply", ".obj", ".off", ".npy", ".xyz", ".txt", ".pts"}


def _save(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
