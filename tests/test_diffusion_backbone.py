"""Diffusion base models (backbones/diffusion.py): real configs on meta, tiny entries, loading and its errors."""

from __future__ import annotations

import json

import pytest
import torch

from vadapt.backbones.base import BACKBONES, create_backbone
from vadapt.backbones.diffusion import (
    MOTION_ADAPTER_CONFIG,
    UNET_CONFIGS,
    DiffusionBase,
    real_parameter_counts,
)
from vadapt.weights import WeightsNotFoundError

TINY = ["sd15_test", "sdxl_test", "animatediff_test", "pixel_test"]


@pytest.fixture(scope="module")
def tiny() -> dict[str, DiffusionBase]:
    torch.manual_seed(0)
    return {name: create_backbone(name) for name in TINY}


# ---- real architectures, counted on the meta device -----------------------------------------------------------


@pytest.mark.parametrize(("arch", "expected"), [
    ("sd15", {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}),
    ("sd21", {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840}),
    ("sdxl", {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840}),
])
def test_real_parameter_counts_on_meta(arch, expected):
    counts = real_parameter_counts(arch)
    assert counts == {**expected, "total": sum(expected.values())}


def test_real_entries_registered_with_hub_ids_and_configs():
    for name in ("sd15", "sd21", "sdxl", "animatediff_sd15"):
        entry = BACKBONES.get(name)
        assert entry.family == "diffusion" and not entry.tiny and entry.weights.hub_id
    assert BACKBONES.get("sd21").weights.hub_id == "stabilityai/stable-diffusion-2-1"
    assert UNET_CONFIGS["sdxl"]["cross_attention_dim"] == 2048
    with torch.device("meta"):
        sd21 = create_backbone("sd21")
        motion = create_backbone("animatediff_sd15")
    assert sd21.prediction_type == "v_prediction" and sd21.unet.config.sample_size * sd21.vae_scale_factor == 768
    assert type(motion.unet).__name__ == "UNetMotionModel"
    motion_params = motion.parameter_counts()["unet"] - 859_520_964
    assert motion_params > 400_000_000  # the v1-5-2 motion modules (incl. the mid block)
    assert MOTION_ADAPTER_CONFIG["use_motion_mid_block"]


# ---- tiny entries ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_tiny_frozen_and_described(tiny, name):
    base = tiny[name]
    assert base.family == "diffusion" and base.name == name and base.block_layout == "unet"
    assert not any(p.requires_grad for p in base.parameters())
    info = base.describe()
    json.dumps(info)
    assert info["parameter_counts"]["total"] == sum(p.numel() for p in base.parameters())
    with pytest.raises(ValueError, match="RGB images only"):
        base.set_bands(["red", "green", "blue", "nir"])
    base.set_bands(["red", "green", "blue"])


def test_encode_prompt_shapes_and_cfg_order(tiny):
    sd = tiny["sd15_test"]
    cond = sd.encode_prompt(["a cat", "a dog"])
    assert set(cond) == {"encoder_hidden_states"} and cond["encoder_hidden_states"].shape == (2, 77, 32)
    both = sd.encode_prompt(["a cat", "a dog"], negative=["", "blurry"])
    assert both["encoder_hidden_states"].shape == (4, 77, 32)
    assert torch.equal(both["encoder_hidden_states"][2:], cond["encoder_hidden_states"])

    xl = tiny["sdxl_test"]
    cond = xl.encode_prompt(["a cat", "a dog"], size=(64, 48))
    assert cond["encoder_hidden_states"].shape == (2, 77, 64)  # 32 + 32 channels of the two encoders
    added = cond["added_cond_kwargs"]
    assert added["text_embeds"].shape == (2, 32) and added["time_ids"].shape == (2, 6)
    assert added["time_ids"][0].tolist() == [64, 48, 0, 0, 64, 48]
    both = xl.encode_prompt(["a cat", "a dog"], negative=["", ""])
    assert both["encoder_hidden_states"].shape == (4, 77, 64)
    assert not both["encoder_hidden_states"][:2].any()  # force_zeros_for_empty_prompt
    assert both["added_cond_kwargs"]["text_embeds"].shape == (4, 32)


@pytest.mark.parametrize("name", ["sd15_test", "sdxl_test"])
def test_encode_decode_and_unet_forward(tiny, name):
    base = tiny[name]
    x = torch.rand(2, 3, 64, 48) * 2 - 1
    z = base.encode_images(x)
    assert base.vae_scale_factor == 8 and z.shape == (2, 4, 8, 6)
    images = base.decode_latents(z)
    assert images.shape == x.shape and images.min() >= -1 and images.max() <= 1
    cond = base.encode_prompt(["a", "b"], size=(64, 48))
    out = base(z, torch.tensor([10, 500]), **cond)
    assert out.shape == z.shape and torch.isfinite(out).all()


def test_pixel_space_base(tiny):
    base = tiny["pixel_test"]
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert base.vae is None and base.vae_scale_factor == 1 and torch.equal(base.encode_images(x), x)
    out = base(x, 3, **base.encode_prompt(["x"]))
    assert out.shape == x.shape


def test_animatediff_four_frames(tiny):
    base = tiny["animatediff_test"]
    assert type(base.unet).__name__ == "UNetMotionModel"
    assert any("motion_modules" in n for n, _ in base.unet.named_parameters())
    cond = base.encode_prompt(["a cat walking"])
    out = base(torch.randn(1, 4, 4, 8, 8), 7, **cond)  # (B, C, F, h, w)
    assert out.shape == (1, 4, 4, 8, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize(("kind", "cls"), [("ddim", "DDIMScheduler"), ("euler", "EulerDiscreteScheduler"),
                                           ("dpm", "DPMSolverMultistepScheduler")])
def test_schedulers_from_config(tiny, kind, cls):
    scheduler = tiny["sd15_test"].make_scheduler(kind)
    assert type(scheduler).__name__ == cls and scheduler.config.prediction_type == "epsilon"
    assert scheduler.config.beta_schedule == "scaled_linear"
    v_base = DiffusionBase.__new__(DiffusionBase)
    torch.nn.Module.__init__(v_base)
    v_base.scheduler_config = {**tiny["sd15_test"].scheduler_config, "prediction_type": "v_prediction"}
    assert v_base.make_scheduler(kind).config.prediction_type == "v_prediction"
    assert type(tiny["sd15_test"].noise_scheduler()).__name__ == "DDPMScheduler"
    with pytest.raises(ValueError, match="Unknown scheduler"):
        tiny["sd15_test"].make_scheduler("heun")


# ---- loading --------------------------------------------------------------------------------------------------


def _perturbed(name: str) -> DiffusionBase:
    torch.manual_seed(1)
    base = create_backbone(name)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return base


def _assert_same(a: DiffusionBase, b: DiffusionBase) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.scheduler_config["prediction_type"] == b.scheduler_config["prediction_type"]


@pytest.mark.parametrize("name", ["sd15_test", "sdxl_test", "animatediff_test", "pixel_test"])
def test_diffusers_folder_roundtrip(tmp_path, name):
    source = _perturbed(name)
    source.save_pretrained(tmp_path / "model")
    loaded = create_backbone(name, pretrained=str(tmp_path / "model"))
    _assert_same(source, loaded)
    assert not any(p.requires_grad for p in loaded.parameters())
    prompts = ["a photo of a cat"]
    for key, value in source.encode_prompt(prompts).items():
        if torch.is_tensor(value):
            assert torch.equal(value, loaded.encode_prompt(prompts)[key])


def test_load_pretrained_after_random_build_and_weights_argument(tmp_path):
    source = _perturbed("sd15_test")
    source.save_pretrained(tmp_path / "model")
    base = create_backbone("sd15_test")
    base.load_pretrained(str(tmp_path / "model"))
    _assert_same(source, base)
    # create_backbone(weights=<diffusers folder>)
    _assert_same(source, create_backbone("sd15_test", weights=str(tmp_path / "model")))


def test_missing_folder_and_files_are_named(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"unet/diffusion_pytorch_model\.safetensors.*tokenizer/"):
        create_backbone("sd15_test", pretrained=str(tmp_path / "nowhere"))
    source = _perturbed("sdxl_test")
    source.save_pretrained(tmp_path / "xl")
    (tmp_path / "xl" / "text_encoder_2" / "model.safetensors").unlink()
    for f in (tmp_path / "xl" / "tokenizer_2").iterdir():
        f.unlink()
    with pytest.raises(WeightsNotFoundError) as err:
        create_backbone("sdxl_test", pretrained=str(tmp_path / "xl"))
    message = str(err.value)
    assert "missing text_encoder_2/model.safetensors, tokenizer_2/(vocab.json + merges.txt, or tokenizer.json)" in (
        message)
    assert "unet/config.json" in message  # the complete list follows


def test_hub_id_and_single_file_offline_errors(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="hub id 'someone/not-cached-model'.*local diffusers folder"):
        create_backbone("sd15_test", pretrained="someone/not-cached-model", local_files_only=True)
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3)}, str(path))
    with pytest.raises(WeightsNotFoundError, match=r"single file .*diffusers configs and tokenizer.*config="):
        create_backbone("sd15_test", pretrained=str(path), local_files_only=True)
    (tmp_path / "model.ckpt").write_bytes(b"x")
    with pytest.raises(WeightsNotFoundError, match="not a .safetensors file"):
        create_backbone("sd15_test", pretrained=str(tmp_path / "model.ckpt"))
