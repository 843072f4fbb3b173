"""The Gradio demo's logic without a browser: limits, image reading, checkpoints, segment / prompt / change."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import depth_checkpoint, sam_upstream_state
from PIL import Image
from rasterio.transform import from_origin

from vadapt.adapters import LoraConfig
from vadapt.app import AppError, Limits, demo_files, export, images, render
from vadapt.app.checkpoints import find_checkpoints, sidecar_weights
from vadapt.app.prompts import MODES, PromptState, prompt_mask
from vadapt.app.service import Demo
from vadapt.checkpoint import save_adapter
from vadapt.tasks import ChangeDetectionTask, DecoderConfig, PromptableSegmentationTask, SemanticSegmentationTask

BANDS = ("blue", "green", "red", "nir")
RGB = ("red", "green", "blue")


def _randomise(task: torch.nn.Module) -> None:
    with torch.no_grad():  # a "trained" adapter: random, non-zero trainable weights
        for p in task.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> Path:
    """Tiny checkpoints of the three kinds, as a user's --checkpoints folder (SAM with its weights beside it)."""
    from vadapt.backbones import create_backbone

    folder = tmp_path_factory.mktemp("ckpts")
    weights = folder / "effnet_test.pth"
    torch.save(create_backbone("efficientnet_lite0_test").model.state_dict(), weights)
    seg = SemanticSegmentationTask(backbone="efficientnet_lite0_test", weights=str(weights), bands=BANDS,
                                   num_classes=3, class_names=["clear", "cloud", "<shadow>"], head="fpn",
                                   adapter=LoraConfig(r=4), mean=[0.2] * 4, std=[0.1] * 4)
    _randomise(seg)
    save_adapter(seg, folder / "seg" / "seg.safetensors")
    cd = ChangeDetectionTask(backbone="efficientnet_lite0_test", weights=str(weights), bands=RGB,
                             adapter=LoraConfig(r=4), decoder_channels=16, mean=[120.0] * 3, std=[60.0] * 3)
    _randomise(cd)
    save_adapter(cd, folder / "change.safetensors")
    torch.manual_seed(0)
    source = PromptableSegmentationTask(backbone="sam_test", adapter=None, decoder=DecoderConfig(mask_decoder="frozen"),
                                        mean=[120.0] * 3, std=[60.0] * 3)
    state = sam_upstream_state(source)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "sam.weights.safetensors"))
    sam = PromptableSegmentationTask(backbone="sam_test", weights=str(folder / "sam.weights.safetensors"),
                                     adapter=LoraConfig(r=4), mean=[120.0] * 3, std=[60.0] * 3)
    _randomise(sam)
    save_adapter(sam, folder / "sam.safetensors")
    (folder / "notes.safetensors").write_bytes(b"not a checkpoint")
    return folder


@pytest.fixture()
def demo(ckpt_dir, tmp_path) -> Demo:
    found, _ = find_checkpoints([ckpt_dir])
    return Demo(found, Limits(), tmp_path / "work")


def write_geotiff(path: Path, array: np.ndarray, names: tuple[str, ...] | None, nodata: float | None = None) -> Path:
    profile = {"driver": "GTiff", "height": array.shape[1], "width": array.shape[2], "count": len(array),
               "dtype": "float32", "crs": "EPSG:32633", "transform": from_origin(300000, 5000000, 10, 10)}
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array.astype(np.float32))
        if names:
            dst.descriptions = names
    return path


def label_of(demo: Demo, name: str) -> str:
    return next(label for label, info in demo.checkpoints.items() if info.path.name == name)


# ---- limits and reading ----------------------------------------------------------------------------------
def test_pixel_and_file_size_limits_are_clear_messages(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((100, 120, 3), np.uint8)).save(path)
    with pytest.raises(AppError, match=r"120x100 = 12,000 pixels; this demo accepts up to 5,000"):
        images.load_image(path, Limits(max_pixels=5000))
    with pytest.raises(AppError, match="accepts files up to 0.0001 MB"):
        images.load_image(path, Limits(max_upload_mb=0.0001))
    with pytest.raises(AppError, match="cannot read broken.tif"):
        (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
        images.load_image(tmp_path / "broken.tif", Limits())


def test_geotiff_keeps_band_names_georeference_and_nodata(tmp_path):
    array = np.random.default_rng(0).random((4, 20, 30)).astype(np.float32)
    array[:, :2, :3] = -1
    path = write_geotiff(tmp_path / "s2.tif", array, ("B02", "B03", "B04", "B08"), nodata=-1)
    image = images.load_image(path, Limits())
    assert image.names == BANDS and image.shape == (20, 30)
    assert image.invalid[:2, :3].all() and image.invalid.sum() == 6
    assert image.georef["crs"].to_epsg() == 32633
    np.testing.assert_array_equal(images.model_input(image, ["red", "nir"]), array[[2, 3]] * ~image.invalid)


def test_unnamed_bands_need_names_or_the_right_count(tmp_path):
    path = write_geotiff(tmp_path / "plain.tif", np.ones((4, 8, 8)), None)
    image = images.load_image(path, Limits())
    assert image.names is None and image.band_labels()[0] == "band 1"
    assert images.model_input(image, list(BANDS)).shape == (4, 8, 8)  # same count: taken in order
    with pytest.raises(AppError, match="4 unnamed bands; the checkpoint needs 3"):
        images.model_input(image, list(RGB))
    named = images.load_image(path, Limits(), images.parse_band_names("blue, green; red, nir"))
    assert named.names == BANDS
    with pytest.raises(AppError, match="4 bands but 2 band names"):
        images.load_image(path, Limits(), ["red", "green"])


def test_png_is_rgb_and_missing_bands_are_named(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.full((10, 12), 7, np.uint8), mode="L").save(path)  # grey becomes RGB
    image = images.load_image(path, Limits())
    assert image.names == RGB and image.georef is None
    with pytest.raises(AppError, match=r"needs blue, green, red, nir \(missing: nir\)"):
        images.model_input(image, list(BANDS))


def test_composite_uses_the_selected_bands(tmp_path):
    rng = np.random.default_rng(1)
    array = rng.random((4, 16, 16)).astype(np.float32)
    image = images.load_image(write_geotiff(tmp_path / "a.tif", array, BANDS), Limits())
    assert image.default_rgb() == ["red", "green", "blue"]
    natural, false_colour = images.composite(image), images.composite(image, ["nir", "red", "green"])
    assert natural.shape == (16, 16, 3) and natural.dtype == np.uint8
    np.testing.assert_array_equal(false_colour[..., 1], natural[..., 0])  # red is shown as green now
    with pytest.raises(AppError, match="pick three"):
        images.composite(image, ["nir", "swir16", "red"])


# ---- checkpoints ---------------------------------------------------------------------------------------------
def test_checkpoints_are_listed_with_task_backbone_and_trainable_count(demo, ckpt_dir):
    assert len(demo.checkpoints) == 3  # notes.safetensors and the SAM weights file are not offered
    seg = demo.checkpoints[label_of(demo, "seg.safetensors")]
    assert re.fullmatch(r"seg/seg\.safetensors \| SemanticSegmentationTask \| efficientnet_lite0_test \| "
                        r"[\d,]+ trainable", seg.label)
    assert demo.choices("segment") == [seg.label]
    assert [demo.checkpoints[c].path.name for c in demo.choices("prompt")] == ["sam.safetensors"]
    assert [demo.checkpoints[c].path.name for c in demo.choices("change")] == ["change.safetensors"]
    assert sidecar_weights(ckpt_dir / "sam.safetensors") == ckpt_dir / "sam.weights.safetensors"
    assert "trainable parameters" in demo.describe(seg.label) and "nir" in demo.describe(seg.label)


def test_a_request_cannot_name_a_server_path_or_another_kind(demo, ckpt_dir):
    for bad in ("/etc/passwd", str(ckpt_dir / "seg" / "seg.safetensors"), "../seg.safetensors"):
        with pytest.raises(AppError, match="unknown checkpoint"):
            demo.checkpoint(bad, "segment")
    with pytest.raises(AppError, match="this tab needs another kind"):
        demo.checkpoint(label_of(demo, "change.safetensors"), "segment")
    with pytest.raises(AppError, match="no image yet"):
        demo.image("0123")


# ---- segment ----------------------------------------------------------------------------------------------
def test_segment_tiles_any_size_and_exports_a_georeferenced_mask(demo, tmp_path):
    array = np.random.default_rng(2).random((4, 70, 600)).astype(np.float32)  # wider than one 512 tile
    array[:, :5, :5] = -1
    image_id, _ = demo.upload(str(write_geotiff(tmp_path / "scene 1.tif", array, BANDS, nodata=-1)))
    result = demo.segment(image_id, label_of(demo, "seg.safetensors"), opacity=0.5)
    with rasterio.open(result.mask_path) as src:
        mask = src.read(1)
        assert src.crs.to_epsg() == 32633 and src.transform == from_origin(300000, 5000000, 10, 10)
    assert result.mask_path.name == "scene_1_mask.tif" and mask.shape == (70, 600)
    assert (mask[:5, :5] == 255).all() and set(np.unique(mask[5:])) <= {0, 1, 2}
    assert result.overlay.shape == (70, 600, 3)
    assert "&lt;shadow&gt;" in result.legend and "%" in result.summary
    # redraw without the model: opacity 0 is the composite itself
    plain = demo.segment_overlay(result.result_id, ["nir", "red", "green"], 0.0)
    np.testing.assert_array_equal(plain, demo.preview(image_id, ["nir", "red", "green"]))
    png = demo.segment(image_id, label_of(demo, "seg.safetensors"), geotiff=False).mask_path
    assert png.suffix == ".png" and np.array_equal(np.asarray(Image.open(png)), mask)


def test_segment_equals_the_model_on_a_single_tile(demo, tmp_path):
    from vadapt.loading import load_task

    array = np.random.default_rng(3).random((4, 64, 96)).astype(np.float32)
    image_id, _ = demo.upload(str(write_geotiff(tmp_path / "small.tif", array, BANDS)))
    info = demo.checkpoints[label_of(demo, "seg.safetensors")]
    mask = np.asarray(Image.open(demo.segment(image_id, info.label, geotiff=False).mask_path))
    with torch.no_grad():
        expected = load_task(info.path).eval()(torch.from_numpy(array)[None]).argmax(1)[0].numpy()
    assert (mask == expected).mean() > 0.999  # LoRA merged + BN folded in the app: float rounding only


def test_legend_lists_every_class_with_its_colour():
    html = render.legend_html(["clear", "cloud"], np.array([3, 1]))
    assert "rgb(31,119,180)" in html and "rgb(255,127,14)" in html and "cloud 25.0 %" in html


def test_download_names_are_sanitised(tmp_path):
    assert export.safe_stem("../../etc/pass wd.png") == "pass_wd"
    path = export.save_mask(np.zeros((4, 4), np.uint8), tmp_path, "../x.tif", None)
    assert path.parent == tmp_path


# ---- prompt ----------------------------------------------------------------------------------------------
def test_prompt_state_points_box_undo_clear():
    state = PromptState("img")
    state.click(5, 6, MODES[0])
    state.click(7, 8, MODES[1])
    assert state.points == [(5, 6), (7, 8)] and state.labels == [1, 0]
    state.click(30, 2, MODES[2])
    assert state.corner == (30, 2) and state.box is None
    state.click(10, 20, MODES[2])
    assert state.box == (10, 2, 30, 20) and state.corner is None
    state.undo()
    assert state.box is None and state.corner == (30, 2)
    state.undo()
    state.undo()
    assert state.points == [(5, 6)] and state.labels == [1]
    state.clear()
    assert not state.has_prompt and state.history == []
    state.undo()  # nothing to undo: no error


def test_prompt_encodes_once_per_image_then_only_decodes(demo, tmp_path):
    rgb = np.random.default_rng(4).integers(0, 255, (150, 100, 3), dtype=np.uint8)  # larger than sam_test's 64
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    image_id, _ = demo.upload(str(tmp_path / "photo.png"))
    label = label_of(demo, "sam.safetensors")
    task = demo.models.task(demo.checkpoints[label])
    calls = []  # image encoder runs
    hook = task.backbone.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape))
    state = demo.prompt_start(image_id)
    picture, text = demo.prompt_view(state, label)
    assert picture.shape == (150, 100, 3) and "Click" in text and not calls  # nothing to decode yet
    state.click(50, 75, MODES[0])
    first, text = demo.prompt_view(state, label)
    assert "image encoded" in text and calls == [(1, 3, 64, 64)]  # resized (longest side 64), padded to 64
    state.click(10, 10, MODES[1])
    _, text = demo.prompt_view(state, label)
    assert "decoder only" in text and "2 point(s)" in text and len(calls) == 1
    # the app's mask is SAM's best mask on the resized image, upsampled back
    image = images.model_input(demo.image(image_id), list(RGB))
    result = prompt_mask(task, image, state, image_id)
    assert result.mask.shape == (150, 100) and not result.encoded and len(calls) == 1
    with pytest.raises(AppError, match="click on the image"):
        prompt_mask(task, image, PromptState(image_id), image_id)
    hook.remove()


# ---- change ------------------------------------------------------------------------------------------------
def test_change_gives_a_mask_and_the_changed_share(demo, tmp_path):
    rng = np.random.default_rng(5)
    before = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    after = before.copy()
    after[10:30, 10:30] = 255 - after[10:30, 10:30]
    Image.fromarray(before).save(tmp_path / "a.png")
    Image.fromarray(after).save(tmp_path / "b.png")
    label = label_of(demo, "change.safetensors")
    result = demo.change(demo.upload(str(tmp_path / "a.png"))[0], demo.upload(str(tmp_path / "b.png"))[0], label)
    mask = np.asarray(Image.open(result.mask_path))
    assert mask.shape == (40, 50) and set(np.unique(mask)) <= {0, 1}
    assert result.percent == pytest.approx(100 * (mask == 1).mean()) and "changed:" in result.summary
    Image.fromarray(before[:20]).save(tmp_path / "c.png")
    with pytest.raises(AppError, match="differ in size"):
        demo.change(demo.upload(str(tmp_path / "a.png"))[0], demo.upload(str(tmp_path / "c.png"))[0], label)
    assert "--input-a before/" in demo.batch_help(label)


def test_change_refuses_a_misregistered_pair_with_the_numbers(demo, tmp_path):
    rng = np.random.default_rng(6)
    image = rng.uniform(0, 255, (3, 40, 50))
    before = write_geotiff(tmp_path / "before.tif", image, ("red", "green", "blue"))
    after = write_geotiff(tmp_path / "after.tif", image, ("red", "green", "blue"))
    with rasterio.open(after, "r+") as dst:  # the same pixels, 50 km further east
        dst.transform = from_origin(350000, 5000000, 10, 10)
    label = label_of(demo, "change.safetensors")
    with pytest.raises(AppError, match=r"one pixel grid: grids shifted by \+5000.00 px in x"):
        demo.change(demo.upload(str(before))[0], demo.upload(str(after))[0], label)
    assert demo.change(demo.upload(str(before))[0], demo.upload(str(before))[0], label).percent >= 0


def test_batch_tab_shows_no_server_paths(demo, ckpt_dir):
    for label, info in demo.checkpoints.items():
        command = demo.batch_help(label)
        assert str(ckpt_dir.resolve()) not in command and str(info.path) not in command, command
        assert f"--checkpoint {info.public()}" in command and not Path(info.public()).is_absolute(), command


# ---- the page: one message area per tab, failures change nothing else, Run waits with a reason ------------------
def handler(page, elem_id: str, event: str):
    """The page's function run when ``event`` fires on the component ``elem_id``, and names of its outputs: their
    elem_ids, ``state0``, ``state1``... for session states."""
    ids = {block._id for block in page.blocks.values() if getattr(block, "elem_id", None) == elem_id}
    found = [f for f in page.fns.values() if any(t[0] in ids and t[1] == event for t in f.targets)]
    assert len(found) == 1, (elem_id, event, len(found))
    names, states = [], 0
    for output in found[0].outputs:
        names.append(output.elem_id or f"state{states}")
        states += output.elem_id is None
    return found[0].fn, names


def block(page, elem_id: str):
    return next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == elem_id)


NO_CHANGE = {"__type__": "update"}


def test_page_builds_offline_without_share_buttons(demo):
    import gradio as gr

    from vadapt.app import ui

    page = ui.build(demo)
    assert isinstance(page, gr.Blocks) and not page.analytics_enabled
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert all(not hasattr(f, "stylesheet") or "googleapis" not in str(f.stylesheet())
               for f in ui.offline_theme()._font + ui.offline_theme()._font_mono)
    pictures = [b for b in page.blocks.values() if isinstance(b, (gr.Image, gr.Gallery))]
    assert len(pictures) >= 8  # (gradio's own default offers "share", which says "Must be on Spaces to share")
    assert all("share" not in (b.buttons or []) for b in pictures), [b.elem_id for b in pictures]
    messages = [b.elem_id for b in page.blocks.values() if ui.MESSAGE in (getattr(b, "elem_classes", None) or [])]
    tabs = ("seg", "prompt", "change", "depth", "batch", "points", "gen")
    assert sorted(messages) == sorted(f"{tab}-message" for tab in tabs)


def test_failure_messages_are_one_line():
    from vadapt.app.service import failure_message

    assert failure_message(AppError("bad file")) == "bad file"
    text = failure_message(KeyError("x" * 1000))
    assert text.startswith("unexpected error (KeyError): 'xxx") and len(text) < 300
    assert failure_message(RuntimeError()) == "unexpected error (RuntimeError)"


def test_a_failed_action_keeps_the_result_and_says_why_in_the_message_area(demo, tmp_path, monkeypatch):
    from vadapt.app import ui

    page = ui.build(demo)
    upload, upload_out = handler(page, "seg-file", "change")
    run, run_out = handler(page, "seg-run", "click")
    assert upload_out[-1] == run_out[-1] == "seg-message"
    seg, change = label_of(demo, "seg.safetensors"), label_of(demo, "change.safetensors")
    path = write_geotiff(tmp_path / "scene.tif", np.random.default_rng(7).random((4, 40, 50)), BANDS)
    values = dict(zip(upload_out, upload(str(path), "", 1.0, seg)))
    assert values["seg-run"]["interactive"] is True
    assert "scene.tif: 50x40 px, 4 band(s)" in values["seg-message"]["value"]
    image_id = values["state0"]
    done = dict(zip(run_out, run(image_id, seg, "red", "green", "blue", 0.5, False)))
    assert done["seg-view"].shape == (240, 300, 3)  # 50 px wide: shown 6x
    assert "Done in" in done["seg-message"]["value"] and ui.ERROR not in done["seg-message"]["elem_classes"]
    # a run that fails (another tab's checkpoint): nothing but the message changes
    failed = run(image_id, change, "red", "green", "blue", 0.5, False)
    assert failed[:-1] == [NO_CHANGE] * (len(run_out) - 1)
    assert failed[-1]["elem_classes"] == [ui.MESSAGE, ui.ERROR]
    assert "this tab needs another kind of checkpoint" in failed[-1]["value"]
    # an upload that fails: the picture and the result stay; the upload is forgotten and Run waits
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    failed = dict(zip(upload_out, upload(str(tmp_path / "broken.tif"), "", 1.0, seg)))
    assert failed["seg-view"] == failed["seg-legend"] == failed["seg-download"] == NO_CHANGE
    assert failed["state0"] is None and failed["seg-run"] == {"__type__": "update", "interactive": False}
    assert "cannot read broken.tif" in failed["seg-message"]["value"]
    # a bug: its type in the page, never a traceback
    monkeypatch.setattr(demo, "segment", lambda *args: {}["missing"])
    failed = run(image_id, seg, "red", "green", "blue", 0.5, False)
    assert failed[:-1] == [NO_CHANGE] * (len(run_out) - 1) and "unexpected error (KeyError)" in failed[-1]["value"]


def test_a_failed_click_leaves_the_prompts_as_they_were(demo, tmp_path):
    Image.fromarray(np.random.default_rng(8).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "s.png")
    image_id, _ = demo.upload(str(tmp_path / "s.png"))
    state = demo.prompt_start(image_id)
    with pytest.raises(AppError, match="another kind"):
        demo.prompt_click(state, 30, 30, MODES[0], label_of(demo, "seg.safetensors"))
    assert state.points == [] and state.history == []
    # clicks are on the enlarged picture (50 px wide: shown 6x); the point lands on the image's own pixel
    new, picture, text = demo.prompt_click(state, 6 * 10 + 2, 6 * 20 + 3, MODES[0], label_of(demo, "sam.safetensors"))
    assert picture.shape == (40, 50, 3) and "1 point(s)" in text and state.points == []
    assert new.points[0] == pytest.approx((10, 20), abs=0.5)
    undone, _, text = demo.prompt_edit(new, label_of(demo, "sam.safetensors"), "undo")
    assert undone.points == [] and new.points and "Click" in text


def test_run_waits_with_the_reason_when_a_tab_has_no_checkpoint_or_no_upload(ckpt_dir, tmp_path):
    from vadapt.app import ui
    from vadapt.app.service import NO_CHECKPOINT, UPLOAD_FIRST

    found, _ = find_checkpoints([ckpt_dir / "seg"])  # a segmentation checkpoint only
    only_seg = Demo(found, Limits(), tmp_path / "work")
    page = ui.build(only_seg)
    for run, message, kind in (("change-run", "change-message", "change"), ("points-run", "points-message", "points"),
                               ("gen-run", "gen-message", "generate")):
        assert block(page, run).interactive is False
        assert block(page, message).value == NO_CHECKPOINT[kind]
    assert "configs/points_quickstart.yaml" in block(page, "points-message").value
    # nothing uploaded yet: Run waits, and says so; an upload enables it
    assert block(page, "seg-run").interactive is False
    assert block(page, "seg-message").value == UPLOAD_FIRST["segment"]
    upload, outputs = handler(page, "seg-file", "change")
    path = write_geotiff(tmp_path / "scene.tif", np.ones((4, 20, 20)), BANDS)
    values = dict(zip(outputs, upload(str(path), "", 1.0, only_seg.default("segment"))))
    assert values["seg-run"]["interactive"] is True
    values = dict(zip(outputs, upload(None, "", 1.0, only_seg.default("segment"))))  # removed again
    assert values["seg-run"]["interactive"] is False and values["seg-message"]["value"] == UPLOAD_FIRST["segment"]
    assert only_seg.not_ready("segment", None, None) == "Pick a checkpoint from the list."
    assert only_seg.not_ready("segment", only_seg.default("segment"), None) is None


def test_no_checkpoint_hints_name_configs_that_exist():
    from vadapt.app.service import NO_CHECKPOINT

    root = Path(__file__).resolve().parents[1]
    named = [c for text in NO_CHECKPOINT.values() for c in re.findall(r"configs/[\w.+-]+\.yaml", text)]
    assert len(named) == len(NO_CHECKPOINT)
    assert [c for c in named if not (root / c).is_file()] == []


def test_builtin_checkpoints_stay_beside_the_users_folders(ckpt_dir, tmp_path, monkeypatch):
    import shutil

    from vadapt.app import main as app_main

    builtin = tmp_path / "builtin"
    (builtin / "seg").mkdir(parents=True)
    shutil.copy(ckpt_dir / "seg" / "seg.safetensors", builtin / "seg" / "seg.safetensors")  # the same name
    shutil.copy(ckpt_dir / "change.safetensors", builtin / "change_tiny.safetensors")
    monkeypatch.setattr(demo_files, "ensure_defaults", lambda progress=print: builtin)
    monkeypatch.setattr(demo_files, "SCENE", tmp_path / "no-scene.npz")  # no examples: quicker
    lines: list[str] = []
    demo = app_main.make_demo([str(ckpt_dir)], Limits(), lines.append)
    shutil.rmtree(demo.workdir)
    assert len(demo.checkpoints) == 5  # the user's 3 + the built-in 2, each under its own label
    paths = {info.path for info in demo.checkpoints.values()}
    assert builtin.resolve() / "change_tiny.safetensors" in paths and ckpt_dir.resolve() / "change.safetensors" in paths
    assert sum(label.startswith("builtin/seg/seg.safetensors") for label in demo.checkpoints) == 1
    mine = demo.default("segment", "seg")  # the user's own checkpoint is each tab's default
    assert demo.checkpoints[mine].path.is_relative_to(ckpt_dir.resolve())
    assert "built-in demo checkpoint" not in demo.describe(mine)
    assert demo.checkpoints[demo.default("change", "change_tiny")].path.name == "change.safetensors"
    builtin_label = label_of(demo, "change_tiny.safetensors")
    assert "built-in demo checkpoint" in demo.describe(builtin_label)
    # --no-builtin: the user's folders only (the built-in ones are not even looked for)
    monkeypatch.setattr(demo_files, "ensure_defaults", lambda progress=print: pytest.fail("built-ins looked for"))
    alone = app_main.make_demo([str(ckpt_dir)], Limits(), lines.append, builtin=False)
    shutil.rmtree(alone.workdir)
    assert len(alone.checkpoints) == 3 and alone.builtin is None
    with pytest.raises(ValueError, match="--no-builtin needs at least one --checkpoints"):
        app_main.make_demo(None, Limits(), lines.append, builtin=False)
    with pytest.raises(SystemExit) as exit_info:
        app_main.main(["--no-builtin"])
    assert exit_info.value.code == 2


def test_small_pictures_are_shown_enlarged_by_a_whole_factor():
    assert [render.display_factor(s, s) for s in (32, 64, 100, 192, 256, 384)] == [8, 4, 3, 2, 1, 1]
    assert render.display_factor(30, 200) == 2  # the longest side counts
    small = np.random.default_rng(9).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    shown = render.enlarge(small)
    assert shown.shape == (192, 288, 3)  # 6x: 48 -> 288
    np.testing.assert_array_equal(shown[::6, ::6], small)  # nearest neighbour: each pixel a 6x6 square
    np.testing.assert_array_equal(shown[5::6, 5::6], small)
    large = np.zeros((300, 20, 3), np.uint8)
    assert render.enlarge(large) is large
    clip = np.zeros((3, 64, 64, 3), np.uint8)
    assert render.enlarge(clip).shape == (3, 256, 256, 3)  # frames: only height and width grow


def test_batch_segments_the_files_it_can_and_lists_the_others(demo, tmp_path):
    import zipfile

    seg, change = label_of(demo, "seg.safetensors"), label_of(demo, "change.safetensors")
    rng = np.random.default_rng(10)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    good = [write_geotiff(tmp_path / d / "same.tif", rng.random((4, 30, 40)), BANDS) for d in ("a", "b")]
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "rgb.png")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    result = demo.batch([*map(str, good), str(tmp_path / "rgb.png"), str(tmp_path / "broken.tif")], seg, False)
    assert [name for name, _ in result.rows] == ["same.tif", "same.tif"] and "40x30 px" in result.rows[0][1]
    assert len(result.failures) == 2 and "rgb.png" in result.failures[0] and "missing: nir" in result.failures[0]
    assert result.failures[1].startswith("cannot read broken.tif")
    with zipfile.ZipFile(result.archive) as zipped:
        assert sorted(zipped.namelist()) == ["same_mask.png", "same_mask_2.png"]
        assert Image.open(zipped.open("same_mask.png")).size == (40, 30)  # the real size
    with pytest.raises(AppError, match="no file could be segmented: cannot read broken.tif"):
        demo.batch([str(tmp_path / "broken.tif")], seg)
    with pytest.raises(AppError, match="3 files; this page segments up to 2"):
        Demo(list(demo.checkpoints.values()), Limits(max_batch_files=2), tmp_path).batch(["x"] * 3, seg)
    assert "use the command below" in demo.batch_not_ready(change, ["x"])
    assert demo.batch_not_ready(seg, []) == "Upload one or more images, then Run."
    assert demo.batch_not_ready(seg, ["x"]) is None


def test_demo_subcommand_parses_and_app_is_not_imported_by_the_library():
    import argparse

    from vadapt.app.main import add_arguments
    from vadapt.cli import _parser

    argv = ["--checkpoints", "a", "--checkpoints", "b", "--port", "0", "--no-builtin"]
    args = _parser().parse_args(["demo", *argv])
    assert args.checkpoints == ["a", "b"] and args.host == "127.0.0.1" and not args.share and args.no_builtin
    module = argparse.ArgumentParser()
    add_arguments(module)  # `python -m vadapt.app` takes the same options with the same defaults
    assert vars(module.parse_args(argv)) == {k: v for k, v in vars(args).items() if k != "command"}
    root = Path(__file__).resolve().parents[1]
    for folder in ("vadapt", "tasks", "backbones"):
        for path in (root / folder).rglob("*.py"):
            text = path.read_text()
            if path.name == "cli.py":
                text = text.split("def run_demo", 1)[0]  # the one lazy import, inside the demo's branch
            assert not re.search(r"(from|import) vadapt\.app|from \.+app import", text), path


def test_shipped_demo_checkpoints_are_small_and_reload_identically():
    from vadapt.loading import load_task

    folder = demo_files.SHIPPED_DIR
    lacking = [n for n in demo_files.missing(folder) if n not in demo_files.GENERATION]  # those: built on start
    if lacking:
        pytest.skip(f"data/demo lacks {lacking} (build: python -m vadapt.app.demo_files)")
    found, _ = find_checkpoints([folder])
    shipped = sorted(c.path.name for c in found if c.path.name not in demo_files.GENERATION)
    assert shipped == sorted(set(demo_files.CHECKPOINTS) - set(demo_files.GENERATION))
    assert all(c.path.stat().st_size < 2_000_000 for c in found)
    sam = folder / demo_files.SAM
    weights = str(sidecar_weights(sam))
    image, points = torch.rand(3, 100, 120) * 255, torch.tensor([[30.0, 40.0]])
    masks = [load_task(sam, weights=weights).eval().predict_with_prompts(image, points, torch.tensor([1]))[0]
             for _ in range(2)]
    torch.testing.assert_close(masks[0], masks[1])  # frozen random weights come from the file, not a seed


def test_missing_demo_checkpoints_are_built_into_the_cache_once(tmp_path, monkeypatch):
    shipped, cache, built = tmp_path / "shipped", tmp_path / "cache", []
    monkeypatch.setattr(demo_files, "SHIPPED_DIR", shipped)
    monkeypatch.setattr(demo_files, "CACHE_DIR", cache)

    def build(folder, names, progress):
        built.append(sorted(names))
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            (folder / name).write_bytes(b"")

    monkeypatch.setattr(demo_files, "build", build)
    messages = []
    assert demo_files.ensure_defaults(messages.append) == cache
    assert built == [sorted(demo_files.missing(tmp_path / "empty"))] and "first start" in messages[0]
    assert demo_files.ensure_defaults(messages.append) == cache and len(built) == 1  # once
    shipped.mkdir()
    for name in demo_files.missing(shipped):
        if name not in demo_files.GENERATION:
            (shipped / name).write_bytes(b"")
    # only the Generate tab's (uncommitted, quick) checkpoints missing: built beside the shipped ones
    assert demo_files.ensure_defaults(messages.append) == shipped
    assert built[-1] == sorted(demo_files.GENERATION) and "Generate tab" in messages[-1]
    assert demo_files.ensure_defaults() == shipped and len(built) == 2


def test_the_3d_tab_offers_the_example_clouds(tmp_path):
    """Every class of the built-in 3D demo has an example cloud, offered by name on the 3D tab (when examples
    exist: the page of a demo without them has no example picker)."""
    import gradio as gr

    from vadapt.app import ui

    examples = demo_files.write_examples(tmp_path)
    clouds = ui.example_clouds(examples)
    assert len(clouds) == demo_files.POINT_CLASSES and all(p.suffix == ".ply" and p.is_file() for p in clouds.values())
    with_examples = ui.build(Demo([], Limits(), tmp_path, examples))
    picker = next(b for b in with_examples.blocks.values() if getattr(b, "elem_id", None) == "points-which")
    assert isinstance(picker, gr.Dropdown) and [c[0] for c in picker.choices] == list(clouds)
    without = ui.build(Demo([], Limits(), tmp_path, {}))
    assert not any(getattr(b, "elem_id", None) == "points-which" for b in without.blocks.values())


# ---- depth ---------------------------------------------------------------------------------------------------
DEPTH_TRAINED = (42, 56)  # (height, width) of the depth checkpoint's training frames


@pytest.fixture(scope="module")
def depth_dir(tmp_path_factory) -> Path:
    """A tiny depth checkpoint (depth_anything_v2_test, random disparity heads so depth varies, trained on 8-bit
    frames resized to DEPTH_TRAINED), its frozen backbone weights in a file, as tests/test_infer_depth.py makes it."""
    folder = tmp_path_factory.mktemp("depth")
    depth_checkpoint(folder, DEPTH_TRAINED)
    return folder


@pytest.fixture()
def depth_demo(ckpt_dir, depth_dir, tmp_path) -> Demo:
    found, _ = find_checkpoints([ckpt_dir, depth_dir])
    return Demo(found, Limits(), tmp_path / "work")


def depth_photo(h: int, w: int, seed: int) -> np.ndarray:
    """``(h, w, 3)`` uint8 with smooth structure and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([np.sin(xx / 9 + seed), np.cos(yy / 7), np.sin((xx + yy) / 11)], -1)
    return ((base + 0.3 * rng.standard_normal((h, w, 3)) + 1.3) * 90).clip(0, 255).astype(np.uint8)


def test_depth_checkpoints_are_offered_in_the_depth_tab_only(depth_demo):
    from vadapt.app import ui

    depth = label_of(depth_demo, "depth.safetensors")
    assert depth_demo.checkpoints[depth].kinds == {"depth"}
    assert depth_demo.choices("depth") == [depth] and depth_demo.default("depth", "depth") == depth
    for kind in ("segment", "prompt", "change", "points", "generate"):
        assert depth not in depth_demo.choices(kind), kind
    assert depth not in depth_demo.batch_choices() and len(depth_demo.batch_choices()) == 3
    assert "relative depth: up to an unknown scale" in depth_demo.describe(depth)
    assert "classes" not in depth_demo.describe(depth)
    page = ui.build(depth_demo)
    offered = {elem: [c[0] for c in block(page, elem).choices] for elem in ("seg-ckpt", "batch-ckpt", "depth-ckpt")}
    assert depth not in offered["seg-ckpt"] and depth not in offered["batch-ckpt"]
    assert offered["depth-ckpt"] == [depth] and block(page, "depth-ckpt").value == depth
    assert block(page, "depth-run").interactive is False  # nothing uploaded yet
    with pytest.raises(AppError, match="this tab needs another kind"):
        depth_demo.checkpoint(depth, "segment")
    with pytest.raises(AppError, match="this tab needs another kind"):
        depth_demo.checkpoint(label_of(depth_demo, "seg.safetensors"), "depth")


def test_run_waits_for_a_depth_checkpoint_and_names_a_config(demo):
    from vadapt.app import ui
    from vadapt.app.service import NO_CHECKPOINT

    page = ui.build(demo)  # segmentation, change and SAM checkpoints only
    assert block(page, "depth-run").interactive is False
    assert block(page, "depth-message").value == NO_CHECKPOINT["depth"]
    assert "configs/endodac_quickstart.yaml" in NO_CHECKPOINT["depth"]


def test_depth_is_what_vadapt_infer_writes_with_downloads_and_a_colour_bar(depth_demo, depth_dir, tmp_path):
    from vadapt.inference import infer
    from vadapt.inference.depth import DepthModel, resize_whole
    from vadapt.inference.options import InferOptions
    from vadapt.loading import load_task

    image = depth_photo(60, 90, 0)
    Image.fromarray(image).save(tmp_path / "in.png")
    label = label_of(depth_demo, "depth.safetensors")
    image_id, _ = depth_demo.upload(str(tmp_path / "in.png"))
    result = depth_demo.depth(image_id, label)
    assert result.depth.shape == (60, 90) and result.depth.dtype == np.float32
    assert result.depth.std() > 0.02  # the random heads make depth vary: a constant would prove nothing
    # DepthModel's depth, resized to the training size and back as vadapt infer does, written out here
    model = DepthModel(load_task(depth_dir / "depth.safetensors"), InferOptions())
    x = torch.from_numpy(resize_whole(image.astype(np.float32), DEPTH_TRAINED).transpose(2, 0, 1).copy())[None]
    depth = model(x)
    assert depth.shape == (1, 1, *DEPTH_TRAINED)
    expected = torch.nn.functional.interpolate(depth, size=(60, 90), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(result.depth, expected.numpy(), rtol=1e-5, atol=1e-6)
    # the downloads: vadapt infer's 16-bit PNG, bit for bit, and the float depth
    report = infer(depth_dir / "depth.safetensors", tmp_path / "out", input=str(tmp_path / "in.png"), progress=False)
    assert report.done == ["in.png"]
    decoded = Image.open(result.png_path)
    assert result.png_path.name == "in_depth.png" and decoded.text["depth_scale"] == "1/256"
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(Image.open(tmp_path / "out" / "in.png")))
    assert result.float_path.suffix == ".npy"
    np.testing.assert_array_equal(np.load(result.float_path), result.depth)
    # the picture: the coloured depth (shown 3x: 90 px wide) above its colour bar; near red, far blue
    picture = result.picture
    assert picture.dtype == np.uint8 and picture.shape[0] > 3 * 60 and picture.shape[1] >= 3 * 90
    near, far = np.unravel_index(result.depth.argmin(), (60, 90)), np.unravel_index(result.depth.argmax(), (60, 90))
    r, _, b = picture[3 * near[0], 3 * near[1]].astype(int)
    assert r > b
    r, _, b = picture[3 * far[0], 3 * far[1]].astype(int)
    assert b > r
    bar = picture[3 * 60 :]
    assert (bar.std(axis=(0, 2)) > 0).mean() > 0.5  # a colour ramp with labels, not blank
    assert "relative depth: up to an unknown scale" in result.summary and "60" in result.summary


def test_depth_of_a_geotiff_keeps_its_georeference_and_no_data(depth_demo, tmp_path):
    array = depth_photo(40, 48, 1).transpose(2, 0, 1).astype(np.float32)
    array[:, :4, :5] = -1
    path = write_geotiff(tmp_path / "scene.tif", array, RGB, nodata=-1)
    label = label_of(depth_demo, "depth.safetensors")
    image_id, _ = depth_demo.upload(str(path))
    result = depth_demo.depth(image_id, label)
    with rasterio.open(result.float_path) as src:
        assert src.crs.to_epsg() == 32633 and src.transform == from_origin(300000, 5000000, 10, 10)
        assert src.dtypes[0] == "float32" and src.nodata == 0
        np.testing.assert_array_equal(src.read(1), result.depth)
    assert (result.depth[:4, :5] == 0).all() and (result.depth[4:] > 0).all()
    assert (np.asarray(Image.open(result.png_path))[:4, :5] == 0).all()
    assert (result.picture[: 4 * 6, : 5 * 6] == 0).all()  # no depth: black (48 px wide: shown 6x)
    assert "20 px without data" in result.summary
    assert depth_demo.depth(image_id, label, geotiff=False).float_path.suffix == ".npy"
    Image.fromarray(depth_photo(12, 40, 2)).save(tmp_path / "thin.png")
    with pytest.raises(AppError, match="40x12 pixels; the models need at least 16x16"):
        depth_demo.depth(depth_demo.upload(str(tmp_path / "thin.png"))[0], label)


def test_a_corrupt_depth_upload_says_why_and_keeps_the_last_depth(depth_demo, tmp_path):
    from vadapt.app import ui

    page = ui.build(depth_demo)
    upload, upload_out = handler(page, "depth-file", "change")
    run, run_out = handler(page, "depth-run", "click")
    assert upload_out[-1] == run_out[-1] == "depth-message"
    depth, seg = label_of(depth_demo, "depth.safetensors"), label_of(depth_demo, "seg.safetensors")
    Image.fromarray(depth_photo(30, 40, 3)).save(tmp_path / "frame.png")
    values = dict(zip(upload_out, upload(str(tmp_path / "frame.png"), depth)))
    assert values["depth-run"]["interactive"] is True and "frame.png: 40x30 px" in values["depth-message"]["value"]
    image_id = values["state0"]
    done = dict(zip(run_out, run(image_id, depth, True)))
    assert done["depth-view"].shape[0] > 30 * 7 and done["depth-view"].shape[1] >= 40 * 7  # 40 px: shown 7x
    assert done["depth-png"].endswith("frame_depth.png") and done["depth-float"].endswith("frame_depth.npy")
    assert "Done in" in done["depth-message"]["value"] and ui.ERROR not in done["depth-message"]["elem_classes"]
    # a corrupt upload: the depth and downloads stay; the upload is forgotten and Run waits
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    failed = dict(zip(upload_out, upload(str(tmp_path / "broken.png"), depth)))
    assert failed["depth-view"] == failed["depth-summary"] == failed["depth-png"] == failed["depth-float"] == NO_CHANGE
    assert failed["state0"] is None and failed["depth-run"] == {"__type__": "update", "interactive": False}
    assert "cannot read broken.png" in failed["depth-message"]["value"]
    assert failed["depth-message"]["elem_classes"] == [ui.MESSAGE, ui.ERROR]
    # a run with another tab's checkpoint: nothing but the message changes
    failed = run(image_id, seg, True)
    assert failed[:-1] == [NO_CHANGE] * (len(run_out) - 1)
    assert "this tab needs another kind of checkpoint" in failed[-1]["value"]
