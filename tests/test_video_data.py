"""VideoClipDataModule: real clip files (MP4 via OpenCV, animated GIF, frame folders), AnimateDiff's frame sampling,
captions, bad clips skipped and reported, and one I2V-Adapter training step on it."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from vadapt.data.captioned import CorruptImageWarning
from vadapt.data.io import DataError
from vadapt.data.video import VideoClipDataModule, count_frames, frame_indices, read_frames


def grey_frames(count: int, size=(40, 48)) -> list[np.ndarray]:
    """Frame ``i`` is uniformly grey ``10 * i``: the frame index can be read back from its mean."""
    return [np.full((*size, 3), 10 * i, np.uint8) for i in range(count)]


def write_mp4(path: Path, frames: list[np.ndarray]) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8, (w, h))
    for frame in frames:
        writer.write(frame[..., ::-1])
    writer.release()
    return path


def write_gif(path: Path, frames: list[np.ndarray]) -> Path:
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)
    return path


def write_folder(path: Path, frames: list[np.ndarray]) -> Path:
    path.mkdir(parents=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(path / f"{i:04d}.png")
    return path


@pytest.fixture()
def clips(tmp_path) -> Path:
    root = tmp_path / "clips"
    root.mkdir()
    write_mp4(root / "boat.mp4", grey_frames(20))
    (root / "boat.txt").write_text("a boat on a lake\n")
    (root / "sub").mkdir()
    write_gif(root / "sub" / "dog.gif", grey_frames(12))
    (root / "sub" / "metadata.csv").write_text("file_name,text\ndog.gif,a running dog\n")
    write_folder(root / "frames" / "cloud", grey_frames(10))
    (root / "frames" / "cloud.txt").write_text("clouds drifting")
    (root / "broken.mp4").write_bytes(b"not a video at all" * 10)
    write_gif(root / "short.gif", grey_frames(3))
    return root


def test_frame_indices_follow_animatediff() -> None:
    assert frame_indices(100, 16, 4, 0.0) == list(range(0, 61, 4))  # window (16 - 1) * 4 + 1 = 61
    assert frame_indices(100, 16, 4, 1.0) == list(range(39, 100, 4))
    assert frame_indices(100, 16, 4, None)[0] == 20  # the middle: (100 - 61) / 2 rounded
    assert frame_indices(10, 4, 4, 0.3) == [0, 3, 6, 9]  # a short clip: the window shrinks to the clip


def test_readers_return_the_requested_frames(clips) -> None:
    for clip, length, tolerance in ((clips / "boat.mp4", 20, 8), (clips / "sub" / "dog.gif", 12, 0),
                                    (clips / "frames" / "cloud", 10, 0)):
        assert count_frames(clip) == length
        frames = read_frames(clip, [0, 3, 3, length - 1])
        means = [float(np.asarray(f, dtype=np.float64).mean()) for f in frames]
        assert means == pytest.approx([0, 30, 30, 10 * (length - 1)], abs=tolerance), clip  # lossy MP4
    with pytest.raises(ValueError):
        count_frames(clips / "broken.mp4")


def test_datamodule_batches_captions_and_skipped_clips(clips) -> None:
    dm = VideoClipDataModule(str(clips), resolution=32, num_frames=4, stride=2, batch_size=3, val_fraction=0.0)
    with pytest.warns(CorruptImageWarning, match="2 of 5 clips") as caught:
        dm.setup("fit")
    message = str(caught[0].message)
    assert "broken.mp4" in message and "short.gif (3 frames, fewer than num_frames 4)" in message
    assert sorted(p.name for p in dm.skipped) == ["broken.mp4", "short.gif"]
    captions = {r.key: r.caption for r in dm.records}
    assert captions == {"boat.mp4": "a boat on a lake", "frames/cloud": "clouds drifting",
                        "sub/dog.gif": "a running dog"}
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (3, 4, 3, 32, 32) and batch["video"].dtype == torch.float32
    assert 0 <= float(batch["video"].min()) and float(batch["video"].max()) <= 1
    # training windows: 4 frames 2 apart, increasing grey levels (the frame order is kept)
    levels = batch["video"].mean(dim=(2, 3, 4))
    assert (levels[:, 1:] > levels[:, :-1]).all()
    step = (levels[:, 1:] - levels[:, :-1]) * 255
    assert step.numpy() == pytest.approx(np.full((3, 3), 20.0), abs=6)


def test_validation_clip_is_the_middle_window(clips) -> None:
    dm = VideoClipDataModule(str(clips / "frames"), resolution=16, num_frames=3, stride=2, val_fraction=0.0)
    dm.setup()
    dataset = dm.datasets["train"]
    dataset.train = False
    item = dataset[0]
    levels = (item["video"].mean(dim=(1, 2, 3)) * 255).round().tolist()
    assert levels == [float(10 * i) for i in frame_indices(10, 3, 2, None)] == [20.0, 40.0, 60.0]


def test_a_clip_broken_after_setup_is_replaced(clips) -> None:
    dm = VideoClipDataModule(str(clips), resolution=16, num_frames=4, stride=1, val_fraction=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptImageWarning)
        dm.setup()
    dataset = dm.datasets["train"]
    index = next(i for i, r in enumerate(dataset.records) if r.key == "boat.mp4")
    (clips / "boat.mp4").write_bytes(b"truncated")
    with pytest.warns(CorruptImageWarning, match="boat.mp4 could not be read"):
        item = dataset[index]
    assert item["key"] != "boat.mp4" and item["video"].shape == (4, 3, 16, 16)


def test_bad_folders_get_one_sentence(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="clip folder not found"):
        VideoClipDataModule(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no clips"):
        VideoClipDataModule(str(tmp_path / "empty")).setup()
    (tmp_path / "short").mkdir()
    write_gif(tmp_path / "short" / "a.gif", grey_frames(2))
    with pytest.raises(DataError, match="none of the 1 clips"):
        VideoClipDataModule(str(tmp_path / "short"), num_frames=16).setup()


def test_i2v_adapter_trains_on_clip_files(clips, tmp_path) -> None:
    """One real training step of I2V-Adapter on a tiny AnimateDiff base, fed from the clip folder."""
    from vadapt.adapters import I2VAdapterConfig
    from vadapt.tasks.generation import DiffusionAdapterTask

    torch.manual_seed(0)
    task = DiffusionAdapterTask(backbone="animatediff_test", kind="video", num_frames=4,
                                adapter=I2VAdapterConfig(num_frames=4))
    before = {k: v.detach().clone() for k, v in task.backbone.named_parameters() if v.requires_grad}
    dm = VideoClipDataModule(str(clips), resolution=64, num_frames=4, stride=2, batch_size=2, val_fraction=0.0)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    task.configure_callbacks = lambda: []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptImageWarning)
        trainer.fit(task, datamodule=dm)
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train_loss"])
    after = dict(task.backbone.named_parameters())
    assert any(not torch.equal(after[k], v) for k, v in before.items())


def test_cli_fit_reads_a_clip_folder(clips, tmp_path) -> None:
    """The I2V config's data section (VideoClipDataModule) through LightningCLI, on the tiny base."""
    import yaml

    from vadapt.cli import main

    repo = Path(__file__).resolve().parents[1]
    shipped = yaml.safe_load((repo / "configs" / "i2v_adapter_sd15.yaml").read_text())["data"]
    assert shipped["class_path"] == "vadapt.data.video.VideoClipDataModule"
    config = yaml.safe_load((repo / "tests" / "conf" / "i2v_adapter_test.yaml").read_text())
    config["data"] = {"class_path": shipped["class_path"],
                      "init_args": {**shipped["init_args"], "root": str(clips), "resolution": 64, "num_frames": 3,
                                    "stride": 2, "batch_size": 2, "val_fraction": 0.0}}
    path = tmp_path / "i2v_clips.yaml"
    path.write_text(yaml.safe_dump(config))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptImageWarning)
        main(["fit", "--config", str(path), "--trainer.fast_dev_run", "true", "--trainer.default_root_dir",
              str(tmp_path)])
