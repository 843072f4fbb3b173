"""MonocularVideoDataModule: every layout on tiny synthetic folders, K under resize / crop / flip, identical colour
jitter across a sample's frames, split by sequence, missing neighbours, bad files, truth units, MP4 sequences."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vadapt.data.captioned import CorruptImageWarning
from vadapt.data.depth_video import (
    DepthVideoDataset,
    MonocularVideoDataModule,
    read_depth_truth,
    read_intrinsics,
    scale_intrinsics,
)
from vadapt.data.io import DataError

H0, W0 = 24, 32


def texture(i: int, h: int = H0, w: int = W0) -> np.ndarray:
    """A seeded RGB uint8 frame (frame ``i`` differs from the others)."""
    return np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))
    return path


def write_u16(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), values.astype(np.uint16))
    return path


def write_tiff(path: Path, bands: np.ndarray) -> Path:
    """A float32 GeoTIFF-less TIFF of ``(C, H, W)`` bands in this order."""
    import rasterio

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NotGeoreferencedWarning
        with rasterio.open(path, "w", driver="GTiff", width=bands.shape[2], height=bands.shape[1],
                           count=bands.shape[0], dtype="float32") as dst:
            dst.write(bands.astype(np.float32))
    return path


def make_folders(root: Path, names=("a", "b", "c", "d"), count: int = 5, K: np.ndarray | None = None,
                 depth: bool = True) -> Path:
    for s, name in enumerate(names):
        for i in range(count):
            write_rgb(root / name / "images" / f"{i:06d}.png", texture(100 * s + i))
            if depth:
                (root / name / "depth").mkdir(exist_ok=True)
                np.save(root / name / "depth" / f"{i:06d}.npy", np.full((H0, W0), 1.0 + i, np.float32))
        if K is not None:
            np.savetxt(root / name / "intrinsics.txt", K)
    return root


def make_scared(root: Path) -> Path:
    for d, k in ((1, 1), (2, 1)):
        kf = root / "train" / f"dataset{d}" / f"keyframe{k}" / "data"
        for m in range(4):
            write_rgb(kf / "left" / f"frame_data{m:06d}.png", texture(10 * d + m))
            xyz = np.stack([np.full((2 * H0, W0), 7.0), np.full((2 * H0, W0), 8.0), np.full((2 * H0, W0), 50.0 + m)])
            xyz[2, H0:] = 999.0  # the right view, stacked below: must not be read
            write_tiff(kf / "scene_points" / f"scene_points{m:06d}.tiff", xyz)
    return root


def make_hamlyn(root: Path) -> Path:
    for name in ("rectified01", "rectified02"):
        for i in range(4):
            write_rgb(root / name / "image01" / f"{i:010d}.png", texture(i + len(name)))
            write_u16(root / name / "depth01" / f"{i:010d}.png", np.full((H0, W0), 40 + i))
    return root


def make_c3vd(root: Path, numbers=(0, 1, 2, 3), seqs=("cecum_t1_a", "sigmoid_t2_b")) -> Path:
    for s, name in enumerate(seqs):
        for i in numbers:
            write_rgb(root / name / f"{i}_color.png", texture(50 * s + i))
            write_u16(root / name / f"{i}_depth.tiff", np.full((H0, W0), 65535))
        (root / name / "pose.txt").write_text("1,0,0,0,0,1,0,0,0,0,1,0,0,0,0,1\n")
    return root


def make_simcol(root: Path) -> Path:
    for name in ("Frames_S1", "Frames_S2"):
        folder = root / "SyntheticColon_I" / name
        for i in range(4):
            write_rgb(folder / f"FrameBuffer_{i:04d}.png", texture(i + len(name)))
            write_u16(folder / f"Depth_{i:04d}.png", np.full((H0, W0), 65535 // 2))
    (root / "SyntheticColon_I" / "cam.txt").write_text("30 0 15.5\n0 30 11.5\n0 0 1\n")
    return root


MAKERS = {"folders": make_folders, "scared": make_scared, "hamlyn": make_hamlyn, "c3vd": make_c3vd,
          "simcol": make_simcol}
# truth of the first target frame (frame number 1) in each layout's unit, and whether K is known
EXPECTED = {"folders": (2.0, False), "scared": (51.0, True), "hamlyn": (41.0, False), "c3vd": (100.0, False),
            "simcol": (200.0 * (65535 // 2) / 65535, True)}


def first_batch(dm: MonocularVideoDataModule, split: str = "train") -> dict:
    dm.setup("fit")
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}[split]()
    return next(iter(loader))


@pytest.mark.parametrize("layout", sorted(MAKERS))
def test_batch_of_every_layout(tmp_path, layout):
    MAKERS[layout](tmp_path)
    dm = MonocularVideoDataModule(str(tmp_path), layout=layout, size=(12, 16), batch_size=2, val_fraction=0.25)
    batch = first_batch(dm, "val")  # no augmentation: truth values are exact
    assert batch["frames"].shape == (2, 3, 3, 12, 16) and batch["frames"].dtype == torch.float32
    assert batch["frames_aug"].shape == batch["frames"].shape
    assert torch.equal(batch["frames_aug"], batch["frames"])
    assert 0.0 <= float(batch["frames"].min()) and float(batch["frames"].max()) <= 1.0
    assert batch["K"].shape == (2, 3, 3) and batch["K"].dtype == torch.float32
    assert batch["depth"].shape == (2, 1, 12, 16) and batch["depth"].dtype == torch.float32
    assert len(batch["key"]) == 2 and all(isinstance(k, str) and "/" in k for k in batch["key"])
    value, known = EXPECTED[layout]
    assert batch["depth"][0].unique().tolist() == pytest.approx([value], rel=1e-5)
    assert bool(torch.isfinite(batch["K"]).all()) == known
    train = set(dm.splits["train"])
    assert train and not train & set(dm.splits["val"])
    assert len(dm.train_dataloader().dataset) > 0


def test_scared_intrinsics_follow_the_official_normalised_K(tmp_path):
    make_scared(tmp_path)
    dm = MonocularVideoDataModule(str(tmp_path), layout="scared", size=(12, 16), val_fraction=0.5)
    K = first_batch(dm, "val")["K"][0].double()
    # official: fx = 0.82 W, fy = 1.02 H, principal point at the image centre (W/2 - 0.5 with pixel centres)
    np.testing.assert_allclose(K.numpy(), [[0.82 * 16, 0, 7.5], [0, 1.02 * 12, 5.5], [0, 0, 1]], atol=1e-5)


def test_k_scaled_on_resize_hand_example(tmp_path):
    K = np.array([[40.0, 0, 10.0], [0, 30.0, 11.5], [0, 0, 1]])
    make_folders(tmp_path, names=("a", "b"), K=K)
    dm = MonocularVideoDataModule(str(tmp_path), size=(12, 16), val_sequences=["b"])
    got = first_batch(dm, "val")["K"][0].double().numpy()
    # 32 -> 16 and 24 -> 12 (factor 1/2): f halves; c' = (c + 0.5) / 2 - 0.5: 10 -> 4.75, 11.5 (centre) -> 5.5
    np.testing.assert_allclose(got, [[20.0, 0, 4.75], [0, 15.0, 5.5], [0, 0, 1]], atol=1e-6)
    np.testing.assert_allclose(scale_intrinsics(K, (H0, W0), (H0, W0)), K)  # same size: unchanged


def test_flip_moves_frames_depth_and_k_consistently(tmp_path):
    """A bright column at u0 with truth z there: after a flip it is at W - 1 - u0, and back-projecting it with the
    flipped K gives the mirrored point (-X, Y, Z)."""
    u0, z, fx, cx = 5, 2.0, 20.0, 12.0
    for s in ("a", "b"):
        for i in range(3):
            frame = np.zeros((H0, W0, 3), np.uint8)
            frame[:, u0] = 255
            depth = np.zeros((H0, W0), np.float32)
            depth[:, u0] = z
            write_rgb(tmp_path / s / "images" / f"{i:06d}.png", frame)
            (tmp_path / s / "depth").mkdir(exist_ok=True)
            np.save(tmp_path / s / "depth" / f"{i:06d}.npy", depth)
    K = [[fx, 0.0, cx], [0.0, fx, 11.5], [0.0, 0.0, 1.0]]
    dm = MonocularVideoDataModule(str(tmp_path), size=(H0, W0), intrinsics=K, val_sequences=["b"])
    dm.setup("fit")
    dataset = dm.datasets["train"]
    seen = set()
    for seed in range(40):
        torch.manual_seed(seed)
        item = dataset[0]
        flipped = float(item["K"][0, 2]) != cx
        seen.add(flipped)
        col = int(item["frames"][0, 0, 0].argmax())
        dcol = int(item["depth"][0, 0].argmax())
        kx = item["K"].double()
        if flipped:
            assert col == dcol == W0 - 1 - u0
            assert float(kx[0, 2]) == pytest.approx(W0 - 1 - cx)
        else:
            assert col == dcol == u0
        X = (col - float(kx[0, 2])) * float(item["depth"][0, 0, dcol]) / float(kx[0, 0])
        X_true = (u0 - cx) * z / fx
        assert X == pytest.approx(-X_true if flipped else X_true)
    assert seen == {True, False}


def test_colour_jitter_identical_across_frames(tmp_path):
    for s in ("a", "b"):
        for i in range(3):
            write_rgb(tmp_path / s / "images" / f"{i:06d}.png", texture(7))  # all frames equal
    dm = MonocularVideoDataModule(str(tmp_path), size=(H0, W0), val_sequences=["b"])
    dm.setup("fit")
    jittered = 0
    for seed in range(12):
        torch.manual_seed(seed)
        item = dm.datasets["train"][0]
        aug = item["frames_aug"]
        assert torch.equal(aug[1], aug[0]) and torch.equal(aug[2], aug[0])  # same draw for every frame
        jittered += not torch.equal(aug, item["frames"])
    assert jittered > 0
    val = dm.datasets["val"][0]
    assert torch.equal(val["frames_aug"], val["frames"])


def test_split_by_sequence_is_deterministic_and_disjoint(tmp_path):
    make_folders(tmp_path, names=("a", "b", "c", "d", "e", "f", "g", "h"), count=3, depth=False)
    dm = MonocularVideoDataModule(str(tmp_path), val_fraction=0.25, test_sequences=["h"], batch_size=64)
    dm.setup("fit")
    assert len(dm.splits["val"]) == 2 and dm.splits["test"] == ["h"]
    assert not set(dm.splits["train"]) & set(dm.splits["val"])
    val_seqs = {k.split("/")[0] for k in next(iter(dm.val_dataloader()))["key"]}
    train_seqs = {k.split("/")[0] for k in next(iter(dm.train_dataloader()))["key"]}
    assert val_seqs == set(dm.splits["val"]) and not val_seqs & train_seqs and "h" not in train_seqs | val_seqs
    again = MonocularVideoDataModule(str(tmp_path), val_fraction=0.25, test_sequences=["h"])
    again.setup("fit")
    assert again.splits == dm.splits
    with pytest.raises(DataError, match="usable"):
        MonocularVideoDataModule(str(tmp_path), val_sequences=["nope"]).setup("fit")


def test_missing_neighbours_drop_samples(tmp_path):
    make_c3vd(tmp_path, numbers=(0, 1, 2, 4, 5, 6), seqs=("s1", "s2"))  # frame 3 missing
    dm = MonocularVideoDataModule(str(tmp_path), layout="c3vd", val_sequences=["s2"])
    dm.setup("fit")
    keys = [dm.datasets["train"].key(i) for i in range(len(dm.datasets["train"]))]
    assert keys == ["s1/1_color", "s1/5_color"]
    dm2 = MonocularVideoDataModule(str(tmp_path), layout="c3vd", val_sequences=["s2"], frame_stride=2)
    dm2.setup("fit")
    assert [dm2.datasets["train"].key(i) for i in range(len(dm2.datasets["train"]))] == ["s1/2_color", "s1/4_color"]


def test_too_short_sequence_warns_once(tmp_path):
    make_folders(tmp_path, names=("a", "b"), count=4, depth=False)
    make_folders(tmp_path, names=("short",), count=2, depth=False)
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    dm = MonocularVideoDataModule(str(tmp_path), val_sequences=["b"])
    with pytest.warns(CorruptImageWarning, match=r"2 of 4 sequences.*short \(too short.*broken \(unreadable") as rec:
        dm.setup("fit")
    assert len([w for w in rec if issubclass(w.category, CorruptImageWarning)]) == 1
    assert [r.name for r in dm.sequences] == ["a", "b"]


def test_corrupt_frame_warns_and_skips(tmp_path):
    make_folders(tmp_path, names=("a", "b"), count=7, depth=False)
    bad = tmp_path / "a" / "images" / "000002.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated PNG: the header is fine, the pixels are not
    dm = MonocularVideoDataModule(str(tmp_path), val_sequences=["b"], batch_size=1, augment=False)
    dm.setup("fit")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keys = [b["key"][0] for b in dm.train_dataloader()]
    messages = [str(w.message) for w in caught if issubclass(w.category, CorruptImageWarning)]
    assert len(messages) == 3  # the three samples that read frame 2 (targets 1, 2, 3), one warning each
    assert all("could not be read" in m for m in messages)
    assert len(keys) == 5  # targets 1..5; the bad ones replaced by readable ones; no crash
    assert set(keys) <= {"a/000004", "a/000005"}


def test_unknown_intrinsics_are_nan_and_option_overrides(tmp_path):
    make_folders(tmp_path / "plain", names=("a", "b"), count=3)
    batch = first_batch(MonocularVideoDataModule(str(tmp_path / "plain"), val_sequences=["b"]), "val")
    assert torch.isnan(batch["K"]).all()
    K_file = np.array([[40.0, 0, 10.0], [0, 30.0, 11.5], [0, 0, 1]])
    make_folders(tmp_path / "withk", names=("a", "b"), count=3, K=K_file)
    option = [[64.0, 0.0, 15.5], [0.0, 64.0, 11.5], [0.0, 0.0, 1.0]]
    dm = MonocularVideoDataModule(str(tmp_path / "withk"), size=(H0, W0), val_sequences=["b"], intrinsics=option)
    np.testing.assert_allclose(first_batch(dm, "val")["K"][0].numpy(), option)
    with pytest.raises(DataError, match="pinhole"):
        MonocularVideoDataModule(str(tmp_path / "withk"), intrinsics=[[1, 0, 0], [0, 1, 0], [0, 1, 1]])


def test_depth_scale_and_max_depth(tmp_path):
    for s in ("a", "b"):
        for i in range(3):
            write_rgb(tmp_path / s / "images" / f"{i:06d}.png", texture(i))
            depth = np.zeros((H0, W0), np.uint16)
            depth[:, : W0 // 2] = 1000
            depth[:, W0 // 2 :] = 5000
            depth[0, 0] = 0
            write_u16(tmp_path / s / "depth" / f"{i:06d}.png", depth)
    base = dict(size=(H0, W0), val_sequences=["b"], depth_scale=0.001)
    d = first_batch(MonocularVideoDataModule(str(tmp_path), **base), "val")["depth"][0, 0]
    assert float(d[1, 0]) == pytest.approx(1.0) and float(d[1, -1]) == pytest.approx(5.0) and float(d[0, 0]) == 0
    d = first_batch(MonocularVideoDataModule(str(tmp_path), max_depth=2.0, **base), "val")["depth"][0, 0]
    assert float(d[1, 0]) == pytest.approx(1.0) and float(d[1, -1]) == 0.0
    small = first_batch(MonocularVideoDataModule(str(tmp_path), size=(6, 8), val_sequences=["b"]), "val")["depth"]
    assert set(small.unique().tolist()) <= {0.0, 1000.0, 5000.0}  # nearest: never a mixed value


def test_read_helpers(tmp_path):
    np.save(tmp_path / "d.npy", np.array([[1.0, np.nan], [-2.0, 3.0]], np.float32))
    np.testing.assert_array_equal(read_depth_truth(tmp_path / "d.npy", 2.0), [[2.0, 0.0], [0.0, 6.0]])
    write_tiff(tmp_path / "f.tiff", np.array([[[0.5, 1.5], [np.inf, 2.0]]]))
    np.testing.assert_array_equal(read_depth_truth(tmp_path / "f.tiff"), [[0.5, 1.5], [0.0, 2.0]])
    write_u16(tmp_path / "p.png", np.array([[0, 65535], [1000, 2]]))
    np.testing.assert_allclose(read_depth_truth(tmp_path / "p.png", 0.001), [[0, 65.535], [1.0, 0.002]], rtol=1e-6)
    write_tiff(tmp_path / "xyz.tiff", np.stack([np.ones((2, 2)), 2 * np.ones((2, 2)), 3 * np.ones((2, 2))]))
    with pytest.raises(DataError, match="3 bands"):
        read_depth_truth(tmp_path / "xyz.tiff")
    assert read_depth_truth(tmp_path / "xyz.tiff", channel=2).tolist() == [[3.0, 3.0], [3.0, 3.0]]
    (tmp_path / "k4.txt").write_text("100 110 50 40\n")
    np.testing.assert_array_equal(read_intrinsics(tmp_path / "k4.txt"), [[100, 0, 50], [0, 110, 40], [0, 0, 1]])
    (tmp_path / "k9.txt").write_text("1,0,2\n0,1,3\n0,0,1\n")
    np.testing.assert_array_equal(read_intrinsics(tmp_path / "k9.txt"), [[1, 0, 2], [0, 1, 3], [0, 0, 1]])
    (tmp_path / "bad.txt").write_text("1 2 3\n")
    with pytest.raises(DataError, match="3 numbers"):
        read_intrinsics(tmp_path / "bad.txt")


def test_preprocessing_record(tmp_path):
    make_folders(tmp_path, names=("a", "b"), count=3, depth=False)
    record = MonocularVideoDataModule(str(tmp_path), size=(12, 16)).preprocessing()
    assert record.scale == pytest.approx(1 / 255) and record.resize == (12, 16) and record.source_size == (H0, W0)


def test_mp4_sequence(tmp_path):
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8, (W0, H0))
    if not writer.isOpened():
        pytest.skip("OpenCV has no mp4v encoder here")
    for i in range(5):
        writer.write(np.full((H0, W0, 3), 40 * i, np.uint8))
    writer.release()
    if cv2.VideoCapture(str(path)).read()[0] is False:
        pytest.skip("OpenCV cannot decode the mp4v file it wrote")
    make_folders(tmp_path, names=("a",), count=3, depth=False)
    dm = MonocularVideoDataModule(str(tmp_path), size=(12, 16), val_sequences=["clip"], batch_size=8)
    batch = first_batch(dm, "val")
    assert batch["key"] == ["clip/000001", "clip/000002", "clip/000003"]
    means = batch["frames"][0].mean(dim=(1, 2, 3)) * 255  # frame_ids [0, -1, 1] of target 1: grey 40, 0, 80
    assert means.tolist() == pytest.approx([40, 0, 80], abs=4)
    assert torch.isnan(batch["K"]).all() and not batch["depth"].any()


def test_bad_options(tmp_path):
    make_folders(tmp_path, names=("a", "b"), count=3)
    with pytest.raises(DataError, match="frame_ids"):
        MonocularVideoDataModule(str(tmp_path), frame_ids=[-1, 0, 1])
    with pytest.raises(DataError, match="layout"):
        MonocularVideoDataModule(str(tmp_path), layout="kitti")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        MonocularVideoDataModule(str(tmp_path / "missing"))
    with pytest.raises(DataError, match="no 'scared' sequences"):
        MonocularVideoDataModule(str(tmp_path), layout="scared").setup("fit")
    assert isinstance(DepthVideoDataset([], [], [0], 1, (4, 4), False, False), DepthVideoDataset)


def test_scared_af_sfmlearner_layout(tmp_path):
    """AF-SfMLearner's copy: image_02/data/{n:010d}.png, truth of frame n in data/scene_points/scene_points{n-1}."""
    for d in (1, 2):
        kf = tmp_path / f"dataset{d}" / "keyframe1"
        for n in range(1, 5):
            write_rgb(kf / "image_02" / "data" / f"{n:010d}.png", texture(n))
            write_tiff(kf / "data" / "scene_points" / f"scene_points{n - 1:06d}.tiff",
                       np.stack([np.zeros((2 * H0, W0)), np.zeros((2 * H0, W0)), np.full((2 * H0, W0), 10.0 * n)]))
    dm = MonocularVideoDataModule(str(tmp_path), layout="scared", size=(12, 16), val_sequences=["dataset2/keyframe1"])
    batch = first_batch(dm, "val")
    assert batch["key"][0] == "dataset2/keyframe1/0000000002"
    assert batch["depth"][0].unique().tolist() == [20.0]


def test_hamlyn_crop_of_late_sequences_moves_k(tmp_path):
    """Sequences numbered above 13 keep columns 180..589 (EndoDAC's box): a column at u=200 lands at u=20, cx too."""
    for name in ("rectified14", "rectified01", "rectified02"):
        for i in range(3):
            frame = np.zeros((20, 600, 3), np.uint8)
            frame[:, 200] = 255
            depth = np.zeros((20, 600), np.uint16)
            depth[:, 200] = 33
            write_rgb(tmp_path / name / "image01" / f"{i:010d}.png", frame)
            write_u16(tmp_path / name / "depth01" / f"{i:010d}.png", depth)
    K = [[300.0, 0.0, 299.5], [0.0, 300.0, 9.5], [0.0, 0.0, 1.0]]
    dm = MonocularVideoDataModule(str(tmp_path), layout="hamlyn", size=(20, 410), intrinsics=K,
                                  val_sequences=["rectified14"], test_sequences=["rectified01"])
    batch = first_batch(dm, "val")
    assert int(batch["frames"][0, 0, 0, 0].argmax()) == 20 and int(batch["depth"][0, 0, 0].argmax()) == 20
    assert float(batch["depth"][0, 0, 0, 20]) == 33.0
    assert float(batch["K"][0, 0, 2]) == pytest.approx(299.5 - 180)
    uncropped = first_batch(MonocularVideoDataModule(str(tmp_path), layout="hamlyn", size=(20, 600),
                                                     val_sequences=["rectified01"]), "val")
    assert uncropped["frames"].shape[-1] == 600 and int(uncropped["frames"][0, 0, 0, 0].argmax()) == 200
