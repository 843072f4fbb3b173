"""Diffusion-adapter data: captioned image folders, mixed-resolution buckets, synthetic shapes (images, videos,
multi-view renderings) and the measures on images. All data is tiny and made by the tests in tmp_path."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vadapt.data.buckets import BucketBatchSampler, nearest_bucket
from vadapt.data.captioned import CorruptImageWarning
from vadapt.data.generation import (
    CaptionedImageDataModule,
    ShapesImageDataModule,
    ShapesMultiviewDataModule,
    ShapesVideoDataModule,
    write_shape_images,
)
from vadapt.data.io import DataError
from vadapt.data.measures import colour_name, count_objects, dominant_colour, foreground_mask
from vadapt.data.shapes_render import COLOURS

BUCKETS = [[32, 32], [24, 40], [40, 24]]


def save_image(path: Path, height: int = 20, width: int = 30, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)
    return path


def batches_of(dm, split: str = "train") -> list[dict]:
    dm.setup("fit")
    loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
    return list(loader)


def all_items(dm, split: str = "train") -> list[dict]:
    """Every item of a split as un-batched dicts."""
    out = []
    for batch in batches_of(dm, split):
        for i in range(len(batch["prompt"])):
            out.append({k: v[i] for k, v in batch.items()})
    return out


def centroid(image: torch.Tensor) -> np.ndarray:
    ys, xs = np.nonzero(foreground_mask(image, "black"))
    return np.array([xs.mean(), ys.mean()])


# ---- captioned folders -------------------------------------------------------------------------------------------
def test_captions_sidecar_metadata_folder_and_prompt(tmp_path: Path) -> None:
    save_image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a caption from a sidecar\n")
    save_image(tmp_path / "b.jpg")
    save_image(tmp_path / "c.webp")
    (tmp_path / "metadata.csv").write_text("file_name,text\nb.jpg,from the csv\nc.webp,\"csv, quoted\"\n")
    save_image(tmp_path / "sub" / "d.png")
    (tmp_path / "sub" / "metadata.jsonl").write_text(json.dumps({"file_name": "d.png", "text": "from jsonl"}) + "\n")
    save_image(tmp_path / "red_circle" / "e.png")
    save_image(tmp_path / "f.png")  # no caption anywhere: the prompt option
    dm = CaptionedImageDataModule(str(tmp_path), resolution=16, batch_size=2, val_fraction=0.0, prompt="fallback")
    items = {item["key"]: item for item in all_items(dm)}
    assert {k: v["prompt"] for k, v in items.items()} == {
        "a.png": "a caption from a sidecar", "b.jpg": "from the csv", "c.webp": "csv, quoted",
        "sub/d.png": "from jsonl", "red_circle/e.png": "red circle", "f.png": "fallback"}
    for item in items.values():
        assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
        assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0


def test_no_caption_warns_and_uses_empty_prompt(tmp_path: Path) -> None:
    save_image(tmp_path / "a.png")
    dm = CaptionedImageDataModule(str(tmp_path), resolution=8, val_fraction=0.0)
    with pytest.warns(UserWarning, match="no caption"):
        (item,) = all_items(dm)
    assert item["prompt"] == ""


def test_corrupt_image_is_skipped_with_one_warning(tmp_path: Path) -> None:
    for i in range(3):
        save_image(tmp_path / f"ok{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    good = save_image(tmp_path / "truncated.png", 64, 64)
    good.write_bytes(good.read_bytes()[:60])
    dm = CaptionedImageDataModule(str(tmp_path), resolution=8, batch_size=8, val_fraction=0.0, prompt="x")
    with pytest.warns(CorruptImageWarning) as record:
        items = all_items(dm)
    assert len(record) == 1 and "broken.png" in str(record[0].message) and "truncated.png" in str(record[0].message)
    assert sorted(item["key"] for item in items) == ["ok0.png", "ok1.png", "ok2.png"]


def test_image_broken_after_setup_is_replaced_not_fatal(tmp_path: Path) -> None:
    for i in range(3):
        save_image(tmp_path / f"{i}.png", value=60 * i)
    dm = CaptionedImageDataModule(str(tmp_path), resolution=8, batch_size=3, val_fraction=0.0, prompt="x")
    dm.setup("fit")
    (tmp_path / "1.png").write_bytes(b"garbage")
    with pytest.warns(CorruptImageWarning, match="1.png"):
        (batch,) = list(dm.train_dataloader())
    assert batch["image"].shape == (3, 3, 8, 8) and "1.png" not in batch["key"]


def test_empty_folder_is_one_data_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    dm = CaptionedImageDataModule(str(tmp_path))
    with pytest.raises(DataError, match="has no images"):
        dm.setup("fit")
    with pytest.raises(FileNotFoundError):
        CaptionedImageDataModule(str(tmp_path / "missing"))


def test_bad_metadata_and_options(tmp_path: Path) -> None:
    save_image(tmp_path / "a.png")
    (tmp_path / "metadata.csv").write_text("name,text\na.png,x\n")
    with pytest.raises(DataError, match="no file_name column"):
        CaptionedImageDataModule(str(tmp_path)).setup("fit")
    with pytest.raises(DataError, match="buckets"):
        CaptionedImageDataModule(str(tmp_path), buckets=[[32, 0]])
    with pytest.raises(DataError, match="val_fraction"):
        CaptionedImageDataModule(str(tmp_path), val_fraction=1.0)


def test_val_split_and_crops(tmp_path: Path) -> None:
    for i in range(10):
        save_image(tmp_path / f"{i}.png", 20, 40)
    dm = CaptionedImageDataModule(str(tmp_path), resolution=[16, 24], batch_size=4, val_fraction=0.2, prompt="x",
                                  center_crop=False)
    train, val = all_items(dm, "train"), all_items(dm, "val")
    assert len(train) == 8 and len(val) == 2
    assert not {i["key"] for i in train} & {i["key"] for i in val}
    assert all(i["image"].shape == (3, 16, 24) for i in train + val)


# ---- buckets -----------------------------------------------------------------------------------------------------
def test_nearest_bucket_by_aspect_ratio() -> None:
    buckets = [(32, 32), (24, 40), (40, 24)]
    assert nearest_bucket(100, 100, buckets) == 0
    assert nearest_bucket(300, 500, buckets) == 1  # wide
    assert nearest_bucket(500, 290, buckets) == 2  # tall
    assert nearest_bucket(1000, 1100, buckets) == 0
    assert nearest_bucket(10, 1000, buckets) == 1  # far outside: still the closest


def test_bucketed_folder_batches(tmp_path: Path) -> None:
    shapes = {"sq": (50, 50), "wide": (60, 100), "tall": (100, 60)}
    for name, (h, w) in shapes.items():
        for i in range(5):
            save_image(tmp_path / f"{name}{i}.png", h, w)
    dm = CaptionedImageDataModule(str(tmp_path), buckets=BUCKETS, batch_size=2, val_fraction=0.0, prompt="x")
    batches = batches_of(dm)
    expected = {"sq": (32, 32), "wide": (24, 40), "tall": (40, 24)}
    for batch in batches:
        size = tuple(batch["image"].shape[-2:])
        assert all(expected[key.rstrip("0123456789.png")] == size for key in batch["key"])
    assert {tuple(b["image"].shape[-2:]) for b in batches} == {(32, 32), (24, 40), (40, 24)}
    assert sum(len(b["key"]) for b in batches) == 15 and len(batches) == 9  # 3 buckets x ceil(5 / 2)


def test_bucket_sampler_deterministic_and_per_epoch() -> None:
    buckets = [i % 3 for i in range(30)]
    a, b = BucketBatchSampler(buckets, 4, seed=1), BucketBatchSampler(buckets, 4, seed=1)
    first, again = list(a), list(b)
    assert first == again
    assert list(a) != first  # the next pass is the next epoch: a new order
    a.set_epoch(0)
    assert list(a) == first
    assert list(BucketBatchSampler(buckets, 4, seed=2)) != first
    assert len(a) == len(first) == 3 * 3  # ceil(10 / 4) per bucket
    assert sorted(i for batch in first for i in batch) == list(range(30))
    assert all(len({buckets[i] for i in batch}) == 1 for batch in first)
    assert len(BucketBatchSampler(buckets, 4, drop_last=True)) == 6
    assert all(len(batch) == 4 for batch in BucketBatchSampler(buckets, 4, drop_last=True))
    ranks = [list(BucketBatchSampler(buckets, 4, seed=1, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 5 and ranks[0] + ranks[1] != first


def test_lightning_sets_the_sampler_epoch() -> None:
    from lightning.fabric.utilities.data import _set_sampler_epoch

    dm = ShapesImageDataModule(num_samples=24, buckets=BUCKETS, batch_size=2, val_fraction=0.0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    _set_sampler_epoch(loader, 5)
    assert loader.batch_sampler.epoch == 5


# ---- synthetic images --------------------------------------------------------------------------------------------
def test_shapes_images_one_object_of_the_prompts_colour() -> None:
    dm = ShapesImageDataModule(resolution=32, num_samples=40, shapes=("circle", "square", "triangle", "diamond"),
                               colours=tuple(COLOURS), batch_size=8, val_fraction=0.1)
    items = all_items(dm) + all_items(dm, "val")
    assert len(items) == 40 and len({i["key"] for i in items}) == 40
    for item in items:
        assert item["image"].shape == (3, 32, 32)
        assert count_objects(item["image"], "black") == 1, item["prompt"]
        colour = item["prompt"].split()[1]
        assert colour_name(dominant_colour(item["image"], "black")) == colour
        assert count_objects(item["image"]) == 1  # the background found from the border


def test_shapes_images_deterministic_from_seed() -> None:
    def items(seed: int) -> dict[str, dict]:  # by key: the unbucketed loader's order is torch's shuffle
        dm = ShapesImageDataModule(num_samples=8, batch_size=3, seed=seed, val_fraction=0.0)
        return {item["key"].split("/", 2)[-1]: item for item in all_items(dm)}

    a, b, c = items(3), items(3), items(4)
    assert a.keys() == b.keys() == c.keys() and len(a) == 8
    assert all(torch.equal(a[k]["image"], b[k]["image"]) and a[k]["prompt"] == b[k]["prompt"] for k in a)
    assert not all(torch.equal(a[k]["image"], c[k]["image"]) for k in a)


def test_shapes_images_buckets_keep_relative_size() -> None:
    dm = ShapesImageDataModule(num_samples=60, buckets=[[32, 32], [48, 64], [64, 48]], batch_size=4,
                               val_fraction=0.0, background="white")
    batches = batches_of(dm)
    assert {tuple(b["image"].shape[-2:]) for b in batches} == {(32, 32), (48, 64), (64, 48)}
    for batch in batches:
        for image in batch["image"]:
            assert count_objects(image, "white") == 1
            share = foreground_mask(image, "white").sum() / image.shape[-1] / image.shape[-2]
            assert 0.02 < share < 0.5


def test_write_shape_images_is_a_captioned_folder(tmp_path: Path) -> None:
    write_shape_images(tmp_path, num_samples=6, buckets=[[32, 32], [32, 48]], seed=1)
    dm = CaptionedImageDataModule(str(tmp_path), buckets=[[32, 32], [32, 48]], batch_size=3, val_fraction=0.0,
                                  random_flip=False)
    items = all_items(dm)
    assert len(items) == 6 and all(i["prompt"].startswith("a ") for i in items)
    for item in items:
        assert count_objects(item["image"], "black") == 1
        assert colour_name(dominant_colour(item["image"], "black")) == item["prompt"].split()[1]


def test_shapes_bad_options() -> None:
    with pytest.raises(DataError, match="hexagon"):
        ShapesImageDataModule(shapes=("hexagon",))
    with pytest.raises(DataError, match="not a known colour"):
        ShapesImageDataModule(colours=("purple-ish",))
    with pytest.raises(DataError, match="background"):
        ShapesImageDataModule(colours=("white",), background="white")


# ---- synthetic videos --------------------------------------------------------------------------------------------
def test_shapes_video_constant_colour_and_motion() -> None:
    dm = ShapesVideoDataModule(resolution=32, num_frames=6, num_samples=12, batch_size=4, val_fraction=0.0)
    items = all_items(dm)
    assert items[0]["video"].shape == (6, 3, 32, 32)
    axis = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}
    for item in items:
        frames = item["video"]
        colour = item["prompt"].split()[1]
        assert all(count_objects(f, "black") == 1 for f in frames)
        assert {colour_name(dominant_colour(f, "black")) for f in frames} == {colour}
        assert int(foreground_mask(frames[0], "black").sum()) == pytest.approx(
            int(foreground_mask(frames[-1], "black").sum()), rel=0.25)  # the same shape
        dim, sign = axis[item["prompt"].split()[-1]]
        path = np.array([centroid(f)[dim] for f in frames])
        steps = np.diff(path) * sign
        assert (steps > 0).all() and np.ptp(path) > 4  # it moves, on a straight line in the prompt's direction
        other = np.array([centroid(f)[1 - dim] for f in frames])
        assert np.ptp(other) < 1.0


# ---- synthetic multi-view ----------------------------------------------------------------------------------------
def test_shapes_multiview_batches() -> None:
    from vadapt.geometry.cameras import official_six_view_cameras, ortho_camera_maps

    dm = ShapesMultiviewDataModule(resolution=32, num_samples=8, batch_size=4, val_fraction=0.0, seed=2)
    batches = batches_of(dm)
    batch = batches[0]
    assert batch["views"].shape == (4, 6, 3, 32, 32) and batch["cameras"].shape == (4, 6, 6, 32, 32)
    assert batch["reference"].shape == (4, 3, 32, 32)
    assert torch.equal(batch["reference"], batch["views"][:, 0])
    assert 0.0 <= float(batch["cameras"].min()) and float(batch["cameras"].max()) <= 1.0
    assert torch.allclose(batch["cameras"][0], ortho_camera_maps(official_six_view_cameras(), 32))
    for b in batches:
        for views, prompt in zip(b["views"], b["prompt"]):
            colour, shape = prompt.split()[1:]
            assert shape in ("sphere", "cube", "cylinder", "cone")
            assert all(count_objects(v, "black") == 1 for v in views)
            assert {colour_name(dominant_colour(v, "black")) for v in views} == {colour}
            diffs = [float((views[i] - views[j]).abs().mean()) for i in range(6) for j in range(i + 1, 6)]
            assert min(diffs) > 1e-3  # every pair of views differs
    again = all_items(ShapesMultiviewDataModule(resolution=32, num_samples=8, batch_size=4, val_fraction=0.0, seed=2))
    by_key = {item["key"]: item for item in again}
    for i, key in enumerate(batch["key"]):  # deterministic from the seed (the loader's order is torch's shuffle)
        assert torch.equal(by_key[key]["views"], batch["views"][i]) and by_key[key]["prompt"] == batch["prompt"][i]


# ---- measures ----------------------------------------------------------------------------------------------------
def test_count_objects_on_hand_made_images() -> None:
    image = np.zeros((20, 20, 3), np.uint8)
    assert count_objects(image, "black") == 0
    assert dominant_colour(image, "black") is None
    image[2:6, 2:6] = (255, 0, 0)
    assert count_objects(image, "black") == 1
    image[12:18, 10:18] = (0, 0, 255)
    assert count_objects(image, "black") == 2
    image[10, 0] = (255, 255, 255)  # a single-pixel speck is ignored
    assert count_objects(image, "black") == 2
    touching = np.zeros((10, 10, 3), np.uint8)
    touching[2:5, 2:5] = 200
    touching[5:8, 5:8] = 200  # diagonal neighbours: one object
    assert count_objects(touching, "black") == 1
    float_chw = torch.zeros(3, 16, 16) + 1.0  # white background, float (3, H, W)
    float_chw[:, 4:10, 4:10] = torch.tensor([0.1, 0.8, 0.1])[:, None, None]
    assert count_objects(float_chw, "white") == 1 and count_objects(float_chw) == 1
    assert colour_name(dominant_colour(float_chw, "white")) == "green"
    assert colour_name((0.4, 0.03, 0.03)) == "red"  # a shaded red is still red


def test_no_warnings_on_clean_synthetic_data() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptImageWarning)
        batches_of(ShapesImageDataModule(num_samples=4, val_fraction=0.0))
