"""DiffusionAdapterTask: training only the adapter on a frozen diffusion base, adapter files, sampling, the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import train_steps

from vadapt.adapters import I2VAdapterConfig, MVAdapterConfig
from vadapt.backbones import create_backbone
from vadapt.checkpoint import save_adapter
from vadapt.cli import main
from vadapt.loading import load_task
from vadapt.tasks.generation import DiffusionAdapterTask


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, str]:
    """Tiny bases saved as diffusers folders, so a reloaded task gets the very same frozen weights."""
    root = tmp_path_factory.mktemp("bases")
    out = {}
    for name in ("sd15_test", "animatediff_test"):
        torch.manual_seed(0)
        create_backbone(name).save_pretrained(root / name)
        out[name] = str(root / name)
    return out


def _frozen_state(task: DiffusionAdapterTask) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in task.backbone.named_parameters() if not v.requires_grad}


def _assert_only_adapter_trained(task, before, batch, steps=2):
    trainable = {k: v.detach().clone() for k, v in task.backbone.named_parameters() if v.requires_grad}
    assert trainable, "the adapter has no trainable parameters"
    losses = train_steps(task, batch, steps, lr=1e-2)
    assert all(torch.isfinite(torch.tensor(losses)))
    after = dict(task.backbone.named_parameters())
    assert all(torch.equal(after[k], v) for k, v in before.items()), "a frozen base weight changed"
    moved = [k for k, v in trainable.items() if not torch.equal(after[k], v)]
    assert moved, "no adapter weight moved"
    for name in ("vae", "text_encoder"):
        assert not any(p.requires_grad for p in getattr(task.backbone, name).parameters())


def test_multiview_task_trains_only_the_adapter_and_round_trips(bases, tmp_path):
    torch.manual_seed(0)
    task = DiffusionAdapterTask(backbone="sd15_test", weights=bases["sd15_test"], kind="multiview", num_views=4,
                                adapter=MVAdapterConfig(num_views=4, use_ref=True))
    before = _frozen_state(task)
    g = torch.Generator().manual_seed(0)
    batch = {"views": torch.rand(2, 4, 3, 32, 32, generator=g), "cameras": torch.rand(2, 4, 6, 32, 32, generator=g),
             "reference": torch.rand(2, 3, 32, 32, generator=g), "prompt": ["a red cube", "a blue cone"],
             "key": ["0", "1"]}
    _assert_only_adapter_trained(task, before, batch)
    names = {k.split(".")[0] for k, v in task.backbone.named_parameters() if v.requires_grad}
    assert names == {"unet", "mv_condition_encoder"}
    # Min-SNR weights (MV-Adapter's gamma 5) are in the loss: the weights differ from 1
    assert not torch.allclose(task.snr_weights(torch.tensor([10, 500, 990])), torch.ones(3))
    task.eval()
    loaded = load_task(save_adapter(task, tmp_path / "mv.safetensors")).eval()
    with torch.no_grad():
        assert torch.equal(task._shared_step(batch, "val"), loaded._shared_step(batch, "val"))
    with pytest.raises(ValueError, match="trained for 4 views, so 3 views are refused"):
        loaded.generate(["a red cube"], 32, 32, num_views=3, progress=lambda i, n: pytest.fail("denoised"))
    images = loaded.generate(["a red cube"], 32, 32, num_inference_steps=2, guidance_scale=2.0,
                             reference=torch.rand(1, 3, 32, 32))
    assert images.shape == (1, 4, 3, 32, 32) and 0 <= float(images.min()) <= float(images.max()) <= 1


def test_multiview_task_shifts_the_schedule_and_drops_the_reference(bases):
    def task_with(**options):
        torch.manual_seed(0)
        t = DiffusionAdapterTask(backbone="sd15_test", weights=bases["sd15_test"], kind="multiview", num_views=2,
                                 condition_dropout=0.0, adapter=MVAdapterConfig(num_views=2, use_ref=True, **options))
        for name, param in t.backbone.named_parameters():  # a trained reference branch: its output is not zero
            if "to_out_ref" in name:
                param.data.normal_(0, 0.2, generator=torch.Generator().manual_seed(3))
        return t

    task = task_with()
    base = task.backbone.noise_scheduler().alphas_cumprod.double()
    shifted = task.noise_scheduler.alphas_cumprod.double()
    ratio = (shifted / (1 - shifted)) / (base / (1 - base))
    assert ratio[0].item() == pytest.approx(1.0, rel=1e-3) and ratio[-1].item() == pytest.approx(1 / 8, rel=1e-3)
    used = []  # sampling runs on the same shifted schedule
    make = task.backbone.make_scheduler
    task.backbone.make_scheduler = lambda *a, **k: used.append(make(*a, **k)) or used[-1]
    task.generate(["a red cube"], 32, 32, num_inference_steps=1, guidance_scale=1.0, reference=torch.rand(1, 3, 32, 32))
    assert torch.allclose(used[0].alphas_cumprod.double(), shifted)
    assert torch.equal(task_with(snr_shift_scale=None).noise_scheduler.alphas_cumprod.double(), base)

    g = torch.Generator().manual_seed(0)
    batch = {"views": torch.rand(2, 2, 3, 32, 32, generator=g), "cameras": torch.rand(2, 2, 6, 32, 32, generator=g),
             "prompt": ["a red cube", "a blue cone"]}
    refs = torch.rand(2, 2, 3, 32, 32, generator=g)

    def loss(t, ref, stage="train"):
        torch.manual_seed(7)  # same timesteps, noise and dropout draws
        with torch.no_grad():
            return t._shared_step({**batch, "reference": ref}, stage)

    kept = task_with(image_dropout=0.0, joint_dropout=0.0)
    assert not torch.equal(loss(kept, refs[0]), loss(kept, refs[1]))  # the reference matters
    dropped = task_with(image_dropout=0.999, joint_dropout=0.0)
    assert torch.equal(loss(dropped, refs[0]), loss(dropped, refs[1]))  # training: its features are zeroed
    assert not torch.equal(loss(dropped, refs[0], "val"), loss(dropped, refs[1], "val"))  # never outside training


def test_video_task_with_i2v_adapter_keeps_the_first_frame(bases, tmp_path):
    torch.manual_seed(0)
    task = DiffusionAdapterTask(backbone="animatediff_test", weights=bases["animatediff_test"], kind="video",
                                num_frames=4, adapter=I2VAdapterConfig(num_frames=4))
    before = _frozen_state(task)
    g = torch.Generator().manual_seed(1)
    batch = {"video": torch.rand(2, 4, 3, 64, 64, generator=g), "prompt": ["a red circle", "a blue square"]}
    _assert_only_adapter_trained(task, before, batch)
    # frame 0 is left out of the loss: changing it in the target clip changes nothing once frames 1.. agree
    task.eval()
    with torch.no_grad():
        ref = task._shared_step(batch, "val")
        other = dict(batch, video=batch["video"].clone())
        other["video"][:, 0] = torch.rand(2, 3, 64, 64, generator=g)
        assert not torch.equal(ref, task._shared_step(other, "val"))  # frame 0 conditions the other frames
    with pytest.raises(ValueError, match="first frame"):
        task.generate(["a red circle"], 64, 64, num_inference_steps=1)
    first = torch.rand(1, 3, 64, 64, generator=g)
    clip = task.generate(["a red circle"], 64, 64, num_inference_steps=2, guidance_scale=1.0, first_frame=first)
    assert clip.shape == (1, 4, 3, 64, 64)
    # the first frame's latent is carried through sampling untouched: decoding it gives frame 0 exactly
    expected = ((task.backbone.decode_latents(task.latents_of(first)) + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(clip[:, 0], expected)


def test_image_task_generates_and_refuses_bad_sizes_before_denoising(bases):
    task = DiffusionAdapterTask(backbone="sd15_test", weights=bases["sd15_test"]).eval()
    calls = []
    with pytest.raises(ValueError, match="height 30 is not a positive multiple of the VAE factor 8"):
        task.generate(["a red circle"], 30, 32, progress=lambda i, n: calls.append(i))
    assert not calls
    images = task.generate(["a red circle", "a blue square"], 32, 48, num_inference_steps=3,
                           progress=lambda i, n: calls.append((i, n)))
    assert images.shape == (2, 3, 32, 48) and calls == [(1, 3), (2, 3), (3, 3)]
    # the same seed gives the same images; another seed others
    again = task.generate(["a red circle", "a blue square"], 32, 48, num_inference_steps=3)
    assert torch.equal(images, again)
    assert not torch.equal(images, task.generate(["a red circle", "a blue square"], 32, 48, seed=1,
                                                 num_inference_steps=3))


def test_generate_cli_writes_images_and_reports_bad_input(bases, tmp_path, capsys):
    config = tmp_path / "gen.yaml"
    config.write_text(
        "model:\n  class_path: vadapt.tasks.DiffusionAdapterTask\n  init_args:\n"
        f"    backbone: sd15_test\n    weights: {bases['sd15_test']}\n    num_inference_steps: 2\n"
    )
    out = tmp_path / "out"
    code = main(["generate", "--config", str(config), "--prompt", "a red circle", "--prompt", "a blue square",
                 "--height", "32", "--width", "32", "--num-images", "2", "--output", str(out), "--quiet"])
    assert code == 0
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == ["a-blue-square_seed1_0.png", "a-blue-square_seed1_1.png", "a-red-circle_seed0_0.png",
                       "a-red-circle_seed0_1.png"]
    assert "wrote 4 file(s)" in capsys.readouterr().out
    code = main(["generate", "--config", str(config), "--prompt", "x", "--height", "33", "--width", "32",
                 "--output", str(tmp_path / "bad"), "--quiet"])
    assert code == 2 and "multiple of the VAE factor" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_generate_cli_video_and_multiview_outputs(bases, tmp_path):
    from PIL import Image

    first = tmp_path / "first.png"
    Image.fromarray((torch.rand(40, 50, 3) * 255).byte().numpy()).save(first)
    cases = {
        "video": (f"    backbone: animatediff_test\n    weights: {bases['animatediff_test']}\n    kind: video\n"
                  "    num_frames: 3\n    adapter:\n      class_path: vadapt.adapters.I2VAdapterConfig\n"
                  "      init_args: {num_frames: 3}\n", ["--first-frame", str(first)], ".gif"),
        "multiview": (f"    backbone: sd15_test\n    weights: {bases['sd15_test']}\n    kind: multiview\n"
                      "    adapter:\n      class_path: vadapt.adapters.MVAdapterConfig\n"
                      "      init_args: {num_views: 2, use_ref: true}\n", ["--reference", str(first),
                                                                          "--num-views", "2"], "_views.png"),
    }
    for kind, (init_args, extra, suffix) in cases.items():
        config = tmp_path / f"{kind}.yaml"
        config.write_text("model:\n  class_path: vadapt.tasks.DiffusionAdapterTask\n  init_args:\n"
                          f"    num_inference_steps: 1\n{init_args}")
        base = ["generate", "--config", str(config), "--prompt", "a red cube", "--height", "64", "--width", "64",
                "--output", str(tmp_path / kind), "--quiet"]
        # the image input is required: one sentence, exit code 2, nothing denoised
        assert main(base) == 2
        assert main(base + extra) == 0
        (written,) = (tmp_path / kind).iterdir()
        assert written.name.endswith(suffix)
        with Image.open(written) as image:
            if kind == "video":
                assert image.n_frames == 3 and image.size == (64, 64)
            else:
                assert image.size == (2 * 64, 64)
        if kind == "video":  # the same clip as MP4: decodable, 3 frames of 64 x 64, frame 0 ~ the first frame
            import cv2

            assert main(base + extra + ["--video-format", "mp4", "--fps", "4"]) == 0
            (clip,) = (tmp_path / kind).glob("*.mp4")
            capture = cv2.VideoCapture(str(clip))
            frames = []
            while (read := capture.read())[0]:
                frames.append(read[1])
            capture.release()
            assert len(frames) == 3 and frames[0].shape == (64, 64, 3)
            with Image.open(written) as gif:
                frame0 = np.asarray(gif.convert("RGB"), dtype=np.float64)
            assert np.abs(frames[0][..., ::-1] - frame0).mean() < 20  # lossy codec, same picture


REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("config", "trainable"), [
    ("resadapter_sd15.yaml", 970_240),  # sampler-conv LoRA 870,400 + resnet norms 99,840 (official release)
    ("i2v_adapter_sd15.yaml", 24_793_280),  # new query + zero-initialised output per spatial attn1 (16 of them)
    ("mv_adapter_sd21.yaml", 127_496_320),  # row-wise MV attention + T2IAdapter (authors: 127.5 M)
])
def test_real_generation_configs_params(config, trainable, capsys):
    """The real-architecture configs build on the meta device (no weights) with the papers' trainable counts."""
    import json

    main(["params", "--config", str(REPO / "configs" / config), "--json"])
    got = json.loads(capsys.readouterr().out)
    assert got["trainable"] == got["adapter"] == trainable


@pytest.mark.parametrize("config", ["resadapter_sd15_test.yaml", "i2v_adapter_test.yaml", "mv_adapter_test.yaml"])
def test_tiny_generation_configs_fit(config, tmp_path):
    """The tiny counterparts of the three configs run through LightningCLI (fast_dev_run)."""
    main(["fit", "--config", str(REPO / "tests" / "conf" / config), "--trainer.fast_dev_run", "true",
          "--trainer.default_root_dir", str(tmp_path)])
