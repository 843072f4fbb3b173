"""I2V-Adapter (Guo et al., SIGGRAPH 2024, arXiv:2312.16693): parameter count on SD1.5, zero-init identity on
a tiny AnimateDiff UNet, first-frame K/V routing, frozen base under training, official weight layout, the Frame
Similarity Prior and the first-frame training conventions."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from safetensors.torch import load_file, save_file
from torch import nn

from vadapt.adapters.base import ADAPTERS
from vadapt.adapters.i2v_adapter import (
    I2VAdapterConfig,
    I2VAttnProcessor,
    adapter_parameters,
    degrade_first_frame,
    first_frame_branch,
    frame_similarity_prior,
    gaussian_blur,
    i2v_loss,
    inject_i2v_adapter,
    keep_first_frame,
    load_i2v_adapter,
    noise_all_but_first,
    prior_alpha_bar,
    save_i2v_adapter,
    set_num_frames,
    spatial_self_attentions,
    step_all_but_first,
)
from vadapt.backbones.diffusion import UNET_CONFIGS

SD15 = dict(UNET_CONFIGS["sd15"])  # the real SD1.5 UNet config
SD15_I2V_PARAMS = 24_793_280
TINY = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
            cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
TINY_MOTION = dict(block_out_channels=(32, 64), motion_layers_per_block=1, motion_norm_num_groups=8,
                   motion_num_attention_heads=2, motion_max_seq_length=32, use_motion_mid_block=False)


class Holder(nn.Module):
    family = "diffusion"

    def __init__(self, unet: nn.Module, name: str = "tiny") -> None:
        super().__init__()
        self.unet = unet.requires_grad_(False)
        self.name = name


def trainable(module: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def tiny_base() -> UNetMotionModel:
    torch.manual_seed(0)
    unet2d = UNet2DConditionModel(**TINY)
    model = UNetMotionModel.from_unet2d(unet2d, MotionAdapter(**TINY_MOTION))
    return model.eval().requires_grad_(False)


def adapted(base: nn.Module, **config) -> Holder:
    holder = Holder(copy.deepcopy(base))
    ADAPTERS.get("i2v_adapter").inject(holder, I2VAdapterConfig(**config))
    return holder


def inputs(b: int, f: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, f, 8, 8, generator=g)  # 8x8 latents: one downsample in the tiny UNet
    ctx = torch.randn(b, 77, 32, generator=g).repeat_interleave(f, dim=0)  # diffusers 0.42: (B*F, 77, D)
    return x, torch.tensor(500), ctx


# ---------------------------------------------------------------------------------------------- counts (meta)
def test_count_sd15_unet2d_and_motion_model_on_meta():
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15)
    holder = Holder(unet, "sd15")
    inject_i2v_adapter(holder, I2VAdapterConfig())
    params = trainable(holder)
    assert sum(p.numel() for p in params.values()) == SD15_I2V_PARAMS
    names = spatial_self_attentions(unet)
    assert len(names) == 16 and sum(n.startswith("mid_block") for n in names) == 1
    assert set(params) == {f"unet.{k}" for k in adapter_parameters(holder)}

    with torch.device("meta"):
        motion = MotionAdapter(block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2,
                               motion_num_attention_heads=8, motion_norm_num_groups=32, motion_max_seq_length=24,
                               use_motion_mid_block=False)
        mm = UNetMotionModel.from_unet2d(UNet2DConditionModel(**SD15), motion, load_weights=False)
    holder = Holder(mm, "animatediff")
    inject_i2v_adapter(holder, I2VAdapterConfig())
    params = trainable(holder)
    assert sum(p.numel() for p in params.values()) == SD15_I2V_PARAMS
    assert not any("motion_modules" in n for n in params)
    for name, module in mm.named_modules():  # temporal attn1 of the motion modules keeps its processor
        if "motion_modules" in name and name.endswith("attn1"):
            assert not isinstance(module.processor, I2VAttnProcessor) and not hasattr(module, "to_q_ff")


# ------------------------------------------------------------------------------------------- zero-init identity
@pytest.mark.parametrize("frames", [1, 3, 4])
def test_zero_init_equals_base_bit_for_bit(tiny_base, frames):
    holder = adapted(tiny_base)
    x, t, ctx = inputs(2, frames)
    with torch.no_grad():
        base = tiny_base(x, t, encoder_hidden_states=ctx).sample
        out = holder.unet(x, t, encoder_hidden_states=ctx).sample
    assert holder.unet.i2v_frame_state.num_frames == frames  # read from the 5-D sample
    assert torch.equal(out, base)
    for attn in (holder.unet.get_submodule(n) for n in spatial_self_attentions(holder.unet)):
        assert torch.equal(attn.to_q_ff.weight, attn.to_q.weight)
        assert not attn.to_out_ff.weight.any() and not attn.to_out_ff.bias.any()


def test_zero_init_identity_on_2d_unet_with_set_num_frames():
    torch.manual_seed(0)
    base = UNet2DConditionModel(**TINY).eval().requires_grad_(False)
    holder = adapted(base, num_frames=16)
    x = torch.randn(6, 4, 8, 8)
    ctx = torch.randn(6, 77, 32)
    with torch.no_grad():
        with pytest.raises(ValueError, match="set_num_frames"):
            holder.unet(x, 500, encoder_hidden_states=ctx)  # 6 rows, 16 frames per video
        set_num_frames(holder, 3)
        assert torch.equal(holder.unet(x, 500, encoder_hidden_states=ctx).sample,
                           base(x, 500, encoder_hidden_states=ctx).sample)


# --------------------------------------------------------------------------------------- training, frozen base
@pytest.fixture(scope="module")
def trained(tiny_base):
    holder = adapted(tiny_base)
    unet = holder.unet
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    names = set(trainable(unet))
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-2, weight_decay=0.01)  # all params: frozen ones have no grad
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    grads = []
    for step in range(3):
        x, _, ctx = inputs(2, 4, seed=10 + step)
        noise = torch.randn_like(x)
        t = torch.tensor([100 + 300 * step, 700])
        noisy = noise_all_but_first(x, noise, t, scheduler)
        pred = unet(noisy, t, encoder_hidden_states=ctx).sample
        loss = i2v_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        grads.append({n: p.grad is not None for n, p in unet.named_parameters()})
        opt.step()
    return holder, before, names, grads


def test_only_adapter_params_train(trained):
    holder, _, names, grads = trained
    expected = set(adapter_parameters(holder))
    assert names == expected and len(expected) == 3 * 4  # 4 spatial attn1 in the tiny model
    assert all(n.endswith(("to_q_ff.weight", "to_out_ff.weight", "to_out_ff.bias")) for n in names)
    for flags in grads:
        assert {n for n, has in flags.items() if has} == expected
    motion = [p for n, p in holder.unet.named_parameters() if "motion_modules" in n]
    assert motion and not any(p.requires_grad for p in motion)


def test_base_weights_unchanged_after_training(tiny_base, trained):
    holder, before, names, _ = trained
    x, t, ctx = inputs(1, 3, seed=7)
    clone = copy.deepcopy(holder.unet)  # the copy's processors share the copy's frame state and hook
    with torch.no_grad():
        base = tiny_base(x, t, encoder_hidden_states=ctx).sample
        out = holder.unet(x, t, encoder_hidden_states=ctx).sample
        out_clone = clone(x, t, encoder_hidden_states=ctx).sample
    assert (out - base).abs().max() > 1e-4 and torch.equal(out_clone, out)
    assert clone.i2v_frame_state is not holder.unet.i2v_frame_state
    after = holder.unet.state_dict()
    for key, value in before.items():
        if key in names:
            assert not torch.equal(after[key], value), key  # every adapter tensor moved
        else:
            assert torch.equal(after[key], value), key


def test_first_frame_keys_drive_the_branch(trained):
    holder, *_ = trained
    attn = holder.unet.get_submodule(spatial_self_attentions(holder.unet)[0])
    assert attn.to_out_ff.weight.abs().max() > 0
    b, f, n, c = 2, 4, 16, attn.to_q.in_features
    g = torch.Generator().manual_seed(3)
    x = torch.randn(b * f, n, c, generator=g)
    with torch.no_grad():
        ref = first_frame_branch(attn, x, f).view(b, f, n, c)
        x0 = x.clone().view(b, f, n, c)
        x0[:, 0] += torch.randn(b, n, c, generator=g)
        out0 = first_frame_branch(attn, x0.view(b * f, n, c), f).view(b, f, n, c)
        x2 = x.clone().view(b, f, n, c)
        x2[:, 2] += torch.randn(b, n, c, generator=g)
        out2 = first_frame_branch(attn, x2.view(b * f, n, c), f).view(b, f, n, c)
        # only video 0's frame 0 changes: video 1 untouched (each video has its own frame 0)
        x0b = x.clone().view(b, f, n, c)
        x0b[0, 0] += 1.0
        out0b = first_frame_branch(attn, x0b.view(b * f, n, c), f).view(b, f, n, c)
    for frame in range(f):  # frame 0's keys/values reach every frame
        assert (out0[:, frame] - ref[:, frame]).abs().amax(dim=(-1, -2)).min() > 1e-6
    assert (out2[:, 2] - ref[:, 2]).abs().max() > 1e-6  # frame 2's own query changed ...
    for frame in (0, 1, 3):  # ... but nobody attends to frame 2's keys
        assert torch.equal(out2[:, frame], ref[:, frame])
    assert torch.equal(out0b[1], ref[1]) and (out0b[0] - ref[0]).abs().amax(dim=(-1, -2)).min() > 1e-6


def reference_mixed_attention(attn, x: torch.Tensor, f: int) -> torch.Tensor:
    """Official MixedCausalAttention2D, written out with explicit k[:, [0] * F] broadcast and softmax."""
    bf, n, _ = x.shape
    h = attn.heads

    def sa(q, k, v):
        q, k, v = (t.view(bf, -1, h, t.shape[-1] // h).transpose(1, 2) for t in (q, k, v))
        w = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)
        return (w @ v).transpose(1, 2).reshape(bf, -1, q.shape[1] * q.shape[-1])

    k, v = attn.to_k(x), attn.to_v(x)
    k0 = k.view(bf // f, f, n, -1)[:, [0] * f].reshape(bf, n, -1)
    v0 = v.view(bf // f, f, n, -1)[:, [0] * f].reshape(bf, n, -1)
    main = attn.to_out[0](sa(attn.to_q(x), k, v))
    return attn.to_out[1](main + attn.to_out_ff(sa(attn.to_q_ff(x), k0, v0)))


def test_processor_matches_official_formula_with_and_without_mask(trained):
    holder, *_ = trained
    attn = holder.unet.get_submodule(spatial_self_attentions(holder.unet)[-1])
    b, f, n, c = 2, 3, 16, attn.to_q.in_features
    x = torch.randn(b * f, n, c, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = reference_mixed_attention(attn, x, f)
        out = attn(x, num_frames=f)
        masked = attn(x, attention_mask=torch.zeros(b * f, 1, n), num_frames=f)  # repeats frame-0 K/V path
        plain = AttnProcessor2_0()(attn, x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(masked, out, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out - plain, first_frame_branch(attn, x, f), rtol=1e-4, atol=1e-5)
    assert (out - plain).abs().max() > 1e-4


# -------------------------------------------------------------------------------------------- official weights
def official_random_state(holder: Holder, seed: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name in spatial_self_attentions(holder.unet):
        attn = holder.unet.get_submodule(name)
        c = attn.to_q.in_features
        state[f"{name}.to_q_ff.weight"] = torch.randn(c, c, generator=g)
        state[f"{name}.to_out_ff.weight"] = torch.randn(c, c, generator=g)
        state[f"{name}.to_out_ff.bias"] = torch.randn(c, generator=g)
    return state


def test_official_file_round_trip(tiny_base, tmp_path):
    holder = adapted(tiny_base)
    state = official_random_state(holder)
    assert set(state) == set(adapter_parameters(holder))
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q_ff.weight" in state
    assert "mid_block.attentions.0.transformer_blocks.0.attn1.to_out_ff.bias" in state

    torch.save(state, tmp_path / "i2v_module.pth")
    assert load_i2v_adapter(holder, tmp_path / "i2v_module.pth") == ([], [])
    for key, param in adapter_parameters(holder).items():
        assert torch.equal(param, state[key]), key
    assert all(torch.equal(holder.unet.state_dict()[k], v) for k, v in state.items())  # official keys, no nesting

    save_i2v_adapter(holder, tmp_path / "i2v.safetensors")
    saved = load_file(tmp_path / "i2v.safetensors")
    assert set(saved) == set(state) and all(torch.equal(saved[k], state[k]) for k in state)
    fresh = adapted(tiny_base)
    load_i2v_adapter(fresh, tmp_path / "i2v.safetensors")
    assert all(torch.equal(p, state[k]) for k, p in adapter_parameters(fresh).items())

    torch.save({"state_dict": {f"unet.{k}": v for k, v in state.items()}}, tmp_path / "wrapped.pth")
    load_i2v_adapter(adapted(tiny_base), tmp_path / "wrapped.pth")


def test_load_errors_name_keys(tiny_base, tmp_path):
    holder = adapted(tiny_base)
    state = official_random_state(holder)
    gone = "mid_block.attentions.0.transformer_blocks.0.attn1.to_q_ff.weight"
    bad = "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out_ff.bias"
    broken = {k: v for k, v in state.items() if k != gone}
    broken[bad] = torch.zeros(7)
    broken["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k_ip.weight"] = torch.zeros(2, 2)
    save_file(broken, tmp_path / "broken.safetensors")
    with pytest.raises(ValueError) as err:
        load_i2v_adapter(holder, tmp_path / "broken.safetensors")
    message = str(err.value)
    assert gone in message and bad in message and "to_k_ip" in message and "(7,)" in message
    del broken[bad]
    save_file(broken, tmp_path / "lenient.safetensors")
    missing, unexpected = load_i2v_adapter(holder, tmp_path / "lenient.safetensors", strict=False)
    assert set(missing) == {gone, bad}
    assert unexpected == ["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k_ip.weight"]


def test_config_and_injection_errors(tiny_base):
    assert ADAPTERS.get("i2v_adapter").config_class is I2VAdapterConfig
    cfg = I2VAdapterConfig()
    assert (cfg.method, cfg.num_frames, cfg.fsp_mask_ratio, cfg.fsp_blur_kernel, cfg.fsp_blur_sigma) == (
        "i2v_adapter", 16, 0.5, 9, 18.0)
    for bad in ({"num_frames": 0}, {"fsp_mask_ratio": 1.5}, {"fsp_blur_kernel": 8}, {"fsp_blur_sigma": 0.0}):
        with pytest.raises(ValueError):
            I2VAdapterConfig(**bad)
    holder = adapted(tiny_base)
    with pytest.raises(ValueError, match="already"):
        inject_i2v_adapter(holder, I2VAdapterConfig())
    with pytest.raises(ValueError, match="no spatial self-attention"):
        adapted(tiny_base, target_modules=["nothing_here"])


# -------------------------------------------------------------------------------- Frame Similarity Prior, loss
def test_gaussian_blur_matches_torchvision():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    x = torch.randn(2, 4, 16, 12)
    torch.testing.assert_close(gaussian_blur(x, 9, 18.0), tvf.gaussian_blur(x, [9, 9], [18.0, 18.0]))


def test_frame_similarity_prior():
    z0 = torch.randn(2, 4, 16, 16)
    b, c, h, w = z0.shape
    out = frame_similarity_prior(z0, 5, 0.0025, torch.Generator().manual_seed(0))
    assert out.shape == (b, c, 5, h, w)
    assert torch.equal(out[:, :, 0], z0)
    assert (out[:, :, 1:] - z0.unsqueeze(2)).abs().max() > 0.5  # the others are noised

    degraded = degrade_first_frame(z0, 5, torch.Generator().manual_seed(0))
    clean = frame_similarity_prior(z0, 5, 1.0, torch.Generator().manual_seed(0))  # abar = 1: no noise
    assert torch.equal(clean, degraded)
    blurred = gaussian_blur(z0).unsqueeze(2)
    is_z = degraded[:, :, 1:] == z0.unsqueeze(2)
    is_blur = degraded[:, :, 1:] == blurred
    assert (is_z | is_blur).all()
    assert 0.4 < is_blur.float().mean() < 0.6  # official mask ratio 0.5
    assert torch.equal(degrade_first_frame(z0, 3, mask_ratio=0.0), z0.unsqueeze(2).expand(b, c, 3, h, w))
    assert torch.equal(degrade_first_frame(z0, 3, mask_ratio=1.0)[:, :, 1:], blurred.expand(b, c, 2, h, w))

    per_video = frame_similarity_prior(z0, 3, torch.tensor([1.0, 0.0]), torch.Generator().manual_seed(1))
    assert torch.equal(per_video[0], degrade_first_frame(z0, 3, torch.Generator().manual_seed(1))[0])
    assert torch.equal(per_video[1, :, 0], z0[1])

    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear")
    sched.set_timesteps(25)
    assert int(sched.timesteps[0]) == 960 and prior_alpha_bar(sched) == pytest.approx(0.002507, abs=1e-6)


def test_training_noise_and_sampling_keep_frame_zero_clean():
    sched = DDPMScheduler(num_train_timesteps=1000)
    x, noise = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 4, 3, 8, 8)
    t = torch.tensor([10, 900])
    noisy = noise_all_but_first(x, noise, t, sched)
    assert torch.equal(noisy[:, :, 0], x[:, :, 0])
    assert torch.equal(noisy[:, :, 1:], sched.add_noise(x, noise, t)[:, :, 1:])

    ddim = DDIMScheduler()
    ddim.set_timesteps(10)
    stepped = step_all_but_first(ddim, noise, ddim.timesteps[0], x)
    assert torch.equal(stepped[:, :, 0], x[:, :, 0])
    assert torch.equal(stepped[:, :, 1:], ddim.step(noise[:, :, 1:], ddim.timesteps[0], x[:, :, 1:]).prev_sample)
    first = torch.randn(2, 4, 8, 8)
    kept = keep_first_frame(x, first)
    assert torch.equal(kept[:, :, 0], first) and torch.equal(kept[:, :, 1:], x[:, :, 1:])


def test_loss_ignores_frame_zero():
    pred, target = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 4, 3, 8, 8)
    loss = i2v_loss(pred, target)
    assert loss == pytest.approx(torch.nn.functional.mse_loss(pred[:, :, 1:], target[:, :, 1:]).item())
    changed = pred.clone()
    changed[:, :, 0] += 100.0
    assert torch.equal(i2v_loss(changed, target), loss)
    flat = lambda v: v.transpose(1, 2).reshape(6, 4, 8, 8)  # noqa: E731  (B*F, C, h, w) video-major
    torch.testing.assert_close(i2v_loss(flat(pred), flat(target), num_frames=3), loss)
    with pytest.raises(ValueError, match="at least 2 frames"):
        i2v_loss(pred[:, :, :1], target[:, :, :1])


def test_project_animatediff_backbone():
    from vadapt.backbones import create_backbone

    backbone = create_backbone("animatediff_test")
    x = torch.randn(1, 4, 3, 8, 8)
    ctx = torch.randn(1, 77, backbone.unet.config.cross_attention_dim)
    with torch.no_grad():
        base = backbone(x, 500, ctx)
        inject_i2v_adapter(backbone, I2VAdapterConfig())
        assert torch.equal(backbone(x, 500, ctx), base)
    params = trainable(backbone)
    assert set(params) == {f"unet.{k}" for k in adapter_parameters(backbone)} and len(params) == 12
