"""The Generate tab without a browser: listing diffusion checkpoints, image / video / multi-view sampling from the
built-in demo checkpoints, size and input checks before any denoising, ResAdapter strength 0 = adapter off."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vadapt.app import AppError, Limits, demo_files
from vadapt.app import generate as gen
from vadapt.app.checkpoints import find_checkpoints, sidecar_weights
from vadapt.app.service import Demo

SIZE = 32  # the tiny bases' smallest comfortable size (4x4 latents); one or two steps, no guidance: fast on a CPU


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> dict:
    """The built-in generation demo: the shipped one (data/demo, beside the other tabs' checkpoints) when it is
    complete, else built afresh (timed) next to a copy of the shipped segmentation checkpoint."""
    shipped = demo_files.SHIPPED_DIR
    bases = [shipped / name for name in gen.DEMO_BASES.values()]
    if not demo_files.missing(shipped) and all((b / "model_index.json").is_file() for b in bases):
        return {"folder": shipped, "seconds": None}
    folder = tmp_path_factory.mktemp("gen-demo")
    start = time.perf_counter()
    written = gen.make_demo_checkpoints(folder, progress=lambda line: None)
    seconds = time.perf_counter() - start
    assert sorted(p.name for p in written) == sorted(gen.DEMO_CHECKPOINTS)
    quickstart = shipped / demo_files.QUICKSTART
    if quickstart.is_file():  # another tab's checkpoint in the same folder: must not reach this tab
        shutil.copy(quickstart, folder / quickstart.name)
    return {"folder": folder, "seconds": seconds}


@pytest.fixture(scope="module")
def demo(demo_dir, tmp_path_factory) -> Demo:
    found, skipped = find_checkpoints([demo_dir["folder"]])
    assert not skipped  # the bases' weight files have no manifest: skipped silently
    return Demo(found, Limits(), tmp_path_factory.mktemp("work"))


def label_of(demo: Demo, name: str) -> str:
    return next(label for label, info in demo.checkpoints.items() if info.path.name == name)


def unet_calls(demo: Demo, name: str) -> list:
    """A list that grows by one per UNet forward of the (cached) model of a checkpoint."""
    task = demo.models.task(demo.checkpoints[label_of(demo, name)])
    calls: list = []
    handle = task.backbone.unet.register_forward_hook(lambda *args: calls.append(1))
    calls.append(handle)  # calls[0]: the hook handle; denoising steps follow
    return calls


def test_demo_is_small_fast_and_only_diffusion_checkpoints_are_listed(demo, demo_dir):
    folder = demo_dir["folder"]
    assert sorted(gen.DEMO_CHECKPOINTS) == sorted(demo_files.GENERATION)
    files = [folder / name for name in gen.DEMO_CHECKPOINTS]
    files += [p for name in gen.DEMO_BASES.values() for p in (folder / name).rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    assert size < 10e6, f"{size / 1e6:.1f} MB"
    if demo_dir["seconds"] is not None:  # built here
        assert demo_dir["seconds"] < 30  # ~5-15 s on a 2-core CPU, imports included
    labels = gen.choices(demo.checkpoints)
    assert sorted(demo.checkpoints[label].path.name for label in labels) == sorted(gen.DEMO_CHECKPOINTS)
    assert all(" | DiffusionAdapterTask | " in label for label in labels)
    assert demo.default("generate", gen.DEMO_DEFAULT) == label_of(demo, gen.DEMO_RESADAPTER)
    for kind in ("segment", "prompt", "change"):  # diffusion adapters stay out of the other tabs
        assert not set(demo.choices(kind)) & set(labels)
    if (folder / demo_files.QUICKSTART).is_file():
        with pytest.raises(AppError, match="needs a diffusion adapter checkpoint"):
            gen.checkpoint(demo.checkpoints, label_of(demo, demo_files.QUICKSTART))
    for bad in ("/etc/passwd", str(folder / gen.DEMO_RESADAPTER)):
        with pytest.raises(AppError, match="unknown checkpoint"):
            gen.checkpoint(demo.checkpoints, bad)
    # the bases are found beside the adapters (relative path in the manifest), so the folder can move
    assert sidecar_weights(folder / gen.DEMO_I2V) == folder / "animatediff_tiny_base"
    # what the tab shows per checkpoint
    res, i2v, mv = (gen.controls(demo.checkpoints, label_of(demo, n)) for n in gen.DEMO_CHECKPOINTS)
    assert (res.kind, res.strength_visible, res.first_frame, res.reference) == ("image", True, False, False)
    assert (i2v.kind, i2v.strength_visible, i2v.first_frame, i2v.frames) == ("video", False, True, True)
    assert "no strength" in i2v.strength_note
    assert (mv.kind, mv.strength_visible, mv.reference) == ("multiview", True, True)
    assert "random weights" in gen.describe(demo.checkpoints, label_of(demo, gen.DEMO_MV))
    assert "vadapt generate --checkpoint" in demo.batch_help(label_of(demo, gen.DEMO_I2V))


def test_image_with_progress_over_the_denoising_steps(demo):
    ticks = []
    result = gen.generate(demo, label_of(demo, gen.DEMO_RESADAPTER), "a red cube", height=SIZE, width=48, seed=3,
                          steps=2, guidance=1.0, progress=lambda i, n: ticks.append((i, n)))
    assert result.kind == "image" and ticks == [(1, 2), (2, 2)] and result.steps_run == 2
    assert result.image.shape == (SIZE, 48, 3) and result.image.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(Image.open(result.path)), result.image)
    assert result.path.parent.parent == demo.workdir and "seed 3" in result.summary


def test_bad_size_is_one_sentence_before_any_denoising(demo):
    calls = unet_calls(demo, gen.DEMO_RESADAPTER)
    ticks = []
    with pytest.raises(AppError) as info:
        gen.generate(demo, label_of(demo, gen.DEMO_RESADAPTER), "x", height=30, width=SIZE, steps=2,
                     progress=lambda i, n: ticks.append(i))
    calls[0].remove()
    assert str(info.value) == "height 30 is not a positive multiple of the VAE factor 8; use e.g. 32"
    assert len(calls) == 1 and not ticks  # no UNet run, no step
    with pytest.raises(AppError, match="steps must be between 1 and"):
        gen.generate(demo, label_of(demo, gen.DEMO_RESADAPTER), "x", height=SIZE, width=SIZE, steps=0)


def test_resadapter_strength_zero_is_the_adapter_off(demo, demo_dir):
    from vadapt.adapters.resadapter.model import disable_resadapter, enable_resadapter
    from vadapt.inference.generate import to_uint8
    from vadapt.tasks.generation import DiffusionAdapterTask

    label = label_of(demo, gen.DEMO_RESADAPTER)
    args = dict(height=SIZE, width=SIZE, seed=7, steps=2, guidance=1.0)
    on = gen.generate(demo, label, "a blue cone", strength=1.0, **args).image
    result = gen.generate(demo, label, "a blue cone", strength=0.0, **args)
    off = result.image
    assert "ResAdapter off" in result.summary
    assert not np.array_equal(on, off)  # the (random) adapter changes the picture
    np.testing.assert_array_equal(gen.generate(demo, label, "a blue cone", strength=1.0, **args).image, on)
    # strength 0 == the adapter disabled on the same model, same seed
    task = demo.models.task(demo.checkpoints[label])
    disable_resadapter(task.backbone)
    disabled = task.generate(["a blue cone"], SIZE, SIZE, seed=7, num_inference_steps=2, guidance_scale=1.0)
    enable_resadapter(task.backbone)
    np.testing.assert_array_equal(to_uint8(disabled)[0], off)
    # ... and == the base without any adapter
    base = DiffusionAdapterTask(backbone="sd15_test", weights=str(demo_dir["folder"] / "sd15_tiny_base")).eval()
    plain = base.generate(["a blue cone"], SIZE, SIZE, seed=7, num_inference_steps=2, guidance_scale=1.0)
    torch.testing.assert_close(to_uint8(plain)[0], off, atol=1, rtol=0)  # uint8: float rounding at most


def test_video_needs_a_first_frame_and_gives_a_gif_of_f_frames(demo):
    label = label_of(demo, gen.DEMO_I2V)
    calls = unet_calls(demo, gen.DEMO_I2V)
    with pytest.raises(AppError, match="this I2V-Adapter animates an image: upload a first frame"):
        gen.generate(demo, label, "a red cube", height=SIZE, width=SIZE, steps=1, num_frames=3)
    calls[0].remove()
    assert len(calls) == 1  # refused before any denoising
    first = np.random.default_rng(0).integers(0, 255, (50, 40, 3), dtype=np.uint8)  # resized to the clip's size
    side = 64  # the Frame Similarity Prior's 9x9 blur needs latents larger than 4x4
    result = gen.generate(demo, label, "a red cube", height=side, width=side, steps=1, guidance=1.0, num_frames=3,
                          first_frame=first, strength=0.3)  # no strength for I2V: ignored
    assert result.kind == "video" and result.frames.shape == (3, side, side, 3) and result.path.suffix == ".gif"
    with Image.open(result.path) as gif:
        assert gif.n_frames == 3 and gif.size == (side, side)
    assert "3 frames" in result.summary
    shown = gen.display_clip(result)  # the page shows it enlarged (nearest neighbour); the download stays as is
    with Image.open(shown) as gif:
        assert shown != result.path and gif.n_frames == 3 and gif.size == (4 * side, 4 * side)
        gif.seek(1)
        frame = np.asarray(gif.convert("RGB"))
    np.testing.assert_array_equal(frame[::4, ::4], frame[1::4, 1::4])  # 4x4 squares of one colour


def test_multiview_needs_a_reference_and_gives_a_row_of_views(demo, tmp_path):
    from vadapt.adapters.mv_adapter.model import _state

    label = label_of(demo, gen.DEMO_MV)
    with pytest.raises(AppError, match="needs a reference image"):
        gen.generate(demo, label, "a red cube", height=SIZE, width=SIZE, steps=1)
    reference = tmp_path / "object.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(reference)
    result = gen.generate(demo, label, "a red cube", height=SIZE, width=SIZE, steps=1, guidance=1.0,
                          reference=str(reference), strength=0.5)
    n = gen.DEMO_VIEWS
    assert result.kind == "multiview" and len(result.views) == n and result.views[0].shape == (SIZE, SIZE, 3)
    with Image.open(result.path) as row:
        assert row.size == (n * SIZE, SIZE)
    task = demo.models.task(demo.checkpoints[label])
    assert _state(task.backbone).mv_scale == 0.5 and "mv_scale 0.5" in result.summary
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(AppError, match="cannot read broken.png as an image"):
        gen.generate(demo, label, "x", height=SIZE, width=SIZE, steps=1, reference=str(tmp_path / "broken.png"))


def test_generate_waits_for_the_picture_an_adapter_needs(demo):
    res, i2v, mv = (label_of(demo, n) for n in gen.DEMO_CHECKPOINTS)
    assert gen.not_ready(demo, res, None, None) is None
    assert gen.not_ready(demo, i2v, None, None).startswith("Upload a first frame")
    assert gen.not_ready(demo, i2v, "frame.png", None) is None
    assert gen.not_ready(demo, mv, "frame.png", None).startswith("Upload a reference image")
    assert gen.not_ready(demo, mv, None, "object.png") is None
    assert gen.not_ready(demo, None, None, None) == "Pick a checkpoint from the list."


def test_page_has_the_generate_tab(demo):
    import gradio as gr

    from vadapt.app import ui

    page = ui.build(demo)
    tabs = [block for block in page.blocks.values() if isinstance(block, gr.Tab)]
    assert "generate" in [tab.id for tab in tabs]
    ids = {getattr(block, "elem_id", None) for block in page.blocks.values()}
    assert {"gen-ckpt", "gen-strength", "gen-first-frame", "gen-reference", "gen-video", "gen-views"} <= ids


def test_shipped_demo_has_the_generation_checkpoints():
    folder = demo_files.SHIPPED_DIR
    names = {c.path.name for c in find_checkpoints([folder])[0]} if folder.is_dir() else set()
    if not set(demo_files.GENERATION) <= names:
        pytest.skip("data/demo lacks the generation demo (build: python -m vadapt.app.demo_files --only "
                    "resadapter_tiny.safetensors)")
    for name in demo_files.GENERATION:
        assert sidecar_weights(folder / name) is not None and Path(sidecar_weights(folder / name)).is_dir()


def test_batch_command_names_no_server_path(demo, demo_dir):
    folder = str(Path(demo_dir["folder"]).resolve())
    for label in gen.choices(demo.checkpoints):
        command = demo.batch_help(label)
        assert command.startswith("vadapt generate --checkpoint ") and folder not in command, command
        assert "--weights " in command  # the demo's bases live beside their adapters: named relative to them too
