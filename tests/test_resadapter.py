"""ResAdapter (Cheng et al., 2024, arXiv:2403.02084): counts on the real SD1.5 / SDXL UNets (meta device), exact
identity at init, gradients and frozen base, strength / off / on, and the official file format (files written here)."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from diffusers import UNet2DConditionModel, UNetMotionModel  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from vadapt.adapters.resadapter import (  # noqa: E402
    LORA_FILE,
    NORM_FILE,
    ResAdapterConfig,
    disable_resadapter,
    enable_resadapter,
    inject_resadapter,
    is_resadapter_enabled,
    kohya_key,
    load_resadapter,
    load_resadapter_state_dict,
    resadapter_state_dict,
    save_resadapter,
    set_resadapter_strength,
)

# Real UNet configs (SD1.5 / SDXL; totals 859,520,964 / 2,567,463,684 parameters), shared with the backbone.
from vadapt.backbones.diffusion import UNET_CONFIGS  # noqa: E402

TINY = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
)
TINY_CONVS = ["down_blocks.0.downsamplers.0.conv", "up_blocks.0.upsamplers.0.conv"]


class Holder(torch.nn.Module):
    family = "diffusion"

    def __init__(self, unet, name="tiny"):
        super().__init__()
        self.unet = unet.requires_grad_(False)
        self.name = name


def tiny_unet(seed: int = 0, **overrides) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**{**TINY, **overrides}).eval()


def tiny_inputs(seed: int = 1, batch: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 16, 16, generator=g)
    t = torch.tensor([10, 500][:batch])
    ehs = torch.randn(batch, 7, 32, generator=g)
    return x, t, ehs


def run(unet, inputs):
    with torch.no_grad():
        return unet(*inputs).sample


def randomize_adapter(holder, seed: int = 3, norms: bool = True) -> None:
    """Give every ResAdapter tensor a random non-trivial value (as after training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in resadapter_state_dict(holder).items():
            if ".norm" in name and not norms:
                continue
            t.copy_(t + 0.1 * torch.randn(t.shape, generator=g))


def norm_values(unet) -> dict[str, torch.Tensor]:
    sd = unet.state_dict()
    return {k: v.clone() for k, v in sd.items() if ".resnets." in k and (".norm1." in k or ".norm2." in k)}


# ---------------------------------------------------------------------------------------------------- counts
@pytest.mark.parametrize("base,convs,lora,norms,total", [
    ("sd15", 6, 870_400, 99_840, 970_240),
    ("sdxl", 4, 460_800, 66_560, 527_360),
])
def test_trainable_counts_real_unets(base, convs, lora, norms, total):
    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET_CONFIGS[base])
    holder = Holder(unet, "meta")
    inject_resadapter(holder, ResAdapterConfig())
    trainable = {n: p for n, p in unet.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == total
    assert sum(p.numel() for n, p in trainable.items() if "lora_" in n) == lora
    assert sum(p.numel() for n, p in trainable.items() if "lora_" not in n) == norms
    assert len([n for n in trainable if "lora_A" in n]) == convs
    assert sum(t.numel() for t in resadapter_state_dict(holder).values()) == total


def test_wrong_base_file_names_the_base(tmp_path):
    """An SDXL-shaped file into an SD1.5 UNet (meta): clear error that says SDXL."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET_CONFIGS["sd15"])
    inject_resadapter(Holder(unet), ResAdapterConfig())
    sdxl = {"down_blocks.0": 320, "down_blocks.1": 640, "up_blocks.0": 1280, "up_blocks.1": 640}
    sd = {}
    for block, c in sdxl.items():
        key = kohya_key(f"{block}.{'downsamplers' if block.startswith('down') else 'upsamplers'}.0.conv")
        sd[f"{key}.lora_down.weight"] = torch.zeros(16, c, 3, 3, dtype=torch.float16)
        sd[f"{key}.lora_up.weight"] = torch.zeros(c, 16, 1, 1, dtype=torch.float16)
        sd[f"{key}.alpha"] = torch.tensor(8.0, dtype=torch.float16)
    save_file(sd, str(tmp_path / LORA_FILE))
    with pytest.raises(ValueError, match=r"(?s)4 sampler convs.*looks like SDXL.*6 sampler convs.*SD1\.5"):
        load_resadapter(unet, tmp_path)


# ------------------------------------------------------------------------------------------ tiny UNet behaviour
def test_layers_and_zero_init_equal_base_bit_for_bit():
    unet = tiny_unet()
    base = copy.deepcopy(unet).requires_grad_(False)  # frozen like the backbone (Linear paths differ)
    holder = Holder(unet)
    inject_resadapter(holder, ResAdapterConfig())
    down = unet.down_blocks[0].downsamplers[0].conv
    up = unet.up_blocks[0].upsamplers[0].conv
    for layer, stride in ((down, (2, 2)), (up, (1, 1))):
        a, b = layer.lora_A["resadapter"], layer.lora_B["resadapter"]
        assert a.kernel_size == (3, 3) and a.stride == stride and a.padding == (1, 1) and a.bias is None
        assert a.out_channels == 16 and b.kernel_size == (1, 1) and b.in_channels == 16 and b.bias is None
        assert torch.count_nonzero(b.weight) == 0 and torch.count_nonzero(a.weight) > 0
        assert layer.scaling["resadapter"] == 0.5
    names = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert {n.rsplit(".lora_", 1)[0] for n in names if "lora_" in n} == set(TINY_CONVS)
    assert all(".resnets." in n and (".norm1." in n or ".norm2." in n) for n in names if "lora_" not in n)
    n_resnets = sum(1 for n, _ in unet.named_modules() if n.count(".resnets.") == 1 and n.split(".")[-2] == "resnets")
    assert len([n for n in names if "lora_" not in n]) == 4 * n_resnets
    inputs = tiny_inputs()
    assert torch.equal(run(unet, inputs), run(base, inputs))


def test_gradients_only_on_adapter_and_base_unchanged_after_training():
    unet = tiny_unet()
    holder = Holder(unet)
    inject_resadapter(holder, ResAdapterConfig())
    unet.train()
    adapter_keys = set(resadapter_state_dict(holder))
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    base_bufs = {n: b.clone() for n, b in unet.named_buffers() if "resadapter_base" in n}
    params = [p for p in unet.parameters() if p.requires_grad]
    assert {n for n, p in unet.named_parameters() if p.requires_grad} == adapter_keys
    opt = torch.optim.AdamW(params, lr=1e-2)
    g = torch.Generator().manual_seed(5)
    for step in range(3):
        latents = torch.randn(2, 4, 16, 16, generator=g)
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, 1000, (2,), generator=g)
        noisy = latents * 0.8 + noise * 0.6
        ehs = torch.randn(2, 7, 32, generator=g)
        loss = torch.nn.functional.mse_loss(unet(noisy, t, ehs).sample, noise)
        opt.zero_grad()
        loss.backward()
        with_grad = {n for n, p in unet.named_parameters() if p.grad is not None}
        assert with_grad <= adapter_keys
        if step > 0:  # at step 0 lora_A gets no gradient (lora_B = 0); afterwards everything does
            assert with_grad == adapter_keys
        opt.step()
    after = unet.state_dict()
    for k, v in before.items():
        if k in adapter_keys:
            assert not torch.equal(after[k], v), k
        else:
            assert torch.equal(after[k], v), k
    assert all(torch.equal(b, base_bufs[n]) for n, b in unet.named_buffers() if n in base_bufs)


def test_strength_disable_enable():
    unet = tiny_unet()
    base = copy.deepcopy(unet).requires_grad_(False)  # frozen like the backbone (Linear paths differ)
    holder = Holder(unet)
    inject_resadapter(holder, ResAdapterConfig())
    inputs = tiny_inputs()
    ref = run(base, inputs)
    base_norms = norm_values(unet)

    randomize_adapter(holder, norms=False)  # LoRA only: strength 0 must give the base back exactly
    assert not torch.equal(run(unet, inputs), ref)
    set_resadapter_strength(holder, 0.0)
    assert torch.equal(run(unet, inputs), ref)

    # the branch is scaled by strength * alpha / r
    layer = unet.down_blocks[0].downsamplers[0].conv
    x = torch.randn(1, 32, 8, 8)
    with torch.no_grad():
        delta = layer.lora_B["resadapter"](layer.lora_A["resadapter"](x))
        for s in (0.5, 1.0):
            set_resadapter_strength(holder, s)
            assert torch.allclose(layer(x), layer.base_layer(x) + s * 0.5 * delta, atol=1e-6)

    randomize_adapter(holder, seed=4)  # now the norms are adapted too
    adapted = run(unet, inputs)
    adapted_norms = norm_values(unet)
    assert any(not torch.equal(adapted_norms[k], v) for k, v in base_norms.items())
    disable_resadapter(holder)
    assert not is_resadapter_enabled(holder)
    assert all(torch.equal(v, base_norms[k]) for k, v in norm_values(unet).items())
    assert torch.equal(run(unet, inputs), ref)
    assert not any(p.requires_grad for p in unet.parameters())
    # while off the adapted values are still what gets saved / returned
    sd = resadapter_state_dict(holder)
    assert all(torch.equal(sd[k], v) for k, v in adapted_norms.items())
    disable_resadapter(holder)  # idempotent
    enable_resadapter(holder)
    assert is_resadapter_enabled(holder)
    assert all(torch.equal(v, adapted_norms[k]) for k, v in norm_values(unet).items())
    assert torch.equal(run(unet, inputs), adapted)
    assert {n for n, p in unet.named_parameters() if p.requires_grad} == set(sd)


def test_train_norms_false_is_lora_only():
    unet = tiny_unet()
    holder = Holder(unet)
    inject_resadapter(holder, ResAdapterConfig(train_norms=False, strength=0.0))
    assert all("lora_" in n for n, p in unet.named_parameters() if p.requires_grad)
    assert all("lora_" in k for k in resadapter_state_dict(holder))
    base = copy.deepcopy(unet).requires_grad_(False)  # frozen like the backbone (Linear paths differ)
    randomize_adapter(holder)
    inputs = tiny_inputs()
    assert torch.equal(run(unet, inputs), run(base, inputs))  # strength 0 from the config


def test_motion_unet_same_names():
    torch.manual_seed(0)
    unet = UNetMotionModel(
        block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"), cross_attention_dim=32, num_attention_heads=4,
        norm_num_groups=8, motion_num_attention_heads=2, motion_max_seq_length=8,
    ).eval()
    base = copy.deepcopy(unet).requires_grad_(False)  # frozen like the backbone (Linear paths differ)
    holder = Holder(unet)
    inject_resadapter(holder, ResAdapterConfig())
    keys = set(resadapter_state_dict(holder))
    assert {k.rsplit(".lora_", 1)[0] for k in keys if "lora_" in k} == set(TINY_CONVS)
    assert not any("motion_modules" in k or "attentions" in k for k in keys)
    inputs = (torch.randn(1, 4, 2, 8, 8), 10, torch.randn(2, 5, 32))
    assert torch.equal(run(unet, inputs), run(base, inputs))


# ------------------------------------------------------------------------------------------------ file formats
def write_official(folder, unet, seed: int = 7, rank: int = 16, alpha: float = 8.0):
    """Files in the release format for ``unet``: Kohya keys, fp16 LoRA with ``.alpha``; fp32 absolute norms."""
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for name in TINY_CONVS:
        c = unet.get_submodule(name).base_layer.in_channels
        key = kohya_key(name)
        lora[f"{key}.alpha"] = torch.tensor(alpha, dtype=torch.float16)
        lora[f"{key}.lora_down.weight"] = (0.1 * torch.randn(rank, c, 3, 3, generator=g)).half()
        lora[f"{key}.lora_up.weight"] = (0.1 * torch.randn(c, rank, 1, 1, generator=g)).half()
    norms = {}
    for name, m in unet.named_modules():
        if ".resnets." in name and name.split(".")[-1] in ("norm1", "norm2"):
            norms[f"{name}.weight"] = 0.5 + torch.rand(m.num_channels, generator=g)
            norms[f"{name}.bias"] = 0.1 * torch.randn(m.num_channels, generator=g)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(lora, str(folder / LORA_FILE))
    save_file(norms, str(folder / NORM_FILE))
    return lora, norms


def test_load_official_format_reproduces_tensors(tmp_path):
    unet = tiny_unet()
    holder = Holder(unet)
    inject_resadapter(holder, ResAdapterConfig(strength=0.5))
    lora, norms = write_official(tmp_path / "release", unet, alpha=4.0)
    assert lora["lora_unet_down_blocks_0_downsamplers_0_conv.lora_down.weight"].shape == (16, 32, 3, 3)
    info = load_resadapter(holder, tmp_path / "release")
    assert info["lora"].name == LORA_FILE and info["norms"].name == NORM_FILE
    sd = unet.state_dict()
    for name in TINY_CONVS:
        key = kohya_key(name)
        assert torch.equal(sd[f"{name}.lora_A.resadapter.weight"], lora[f"{key}.lora_down.weight"].float())
        assert torch.equal(sd[f"{name}.lora_B.resadapter.weight"], lora[f"{key}.lora_up.weight"].float())
        assert unet.get_submodule(name).scaling["resadapter"] == 0.5 * 4.0 / 16  # file alpha, kept strength
    for k, v in norms.items():
        assert torch.equal(sd[k], v)
    # the two files can also be given explicitly, in any order; loading while off lands on "on"
    disable_resadapter(holder)
    lora2, norms2 = write_official(tmp_path / "other", unet, seed=8)
    load_resadapter(holder, [tmp_path / "other" / NORM_FILE, tmp_path / "other" / LORA_FILE])
    enable_resadapter(holder)
    sd = unet.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in norms2.items())
    key = kohya_key(TINY_CONVS[1])
    assert torch.equal(sd[f"{TINY_CONVS[1]}.lora_B.resadapter.weight"], lora2[f"{key}.lora_up.weight"].float())


def test_save_load_round_trip(tmp_path):
    unet = tiny_unet()
    holder = Holder(unet)
    inject_resadapter(holder, ResAdapterConfig())
    randomize_adapter(holder)
    ref = {k: v.clone() for k, v in resadapter_state_dict(holder).items()}
    paths = save_resadapter(holder, tmp_path / "fp32", lora_dtype=torch.float32)
    assert [p.name for p in paths] == [LORA_FILE, NORM_FILE]
    save_resadapter(holder, tmp_path / "fp16")
    lora = load_file(str(tmp_path / "fp16" / LORA_FILE))
    suffixes = ("alpha", "lora_down.weight", "lora_up.weight")
    assert set(lora) == {f"{kohya_key(n)}.{s}" for n in TINY_CONVS for s in suffixes}
    assert all(t.dtype == torch.float16 for t in lora.values())
    assert float(lora[f"{kohya_key(TINY_CONVS[0])}.alpha"]) == 8
    assert all(t.dtype == torch.float32 for t in load_file(str(tmp_path / "fp16" / NORM_FILE)).values())

    for sub, exact in (("fp32", True), ("fp16", False)):
        other = Holder(tiny_unet(seed=0))
        inject_resadapter(other, ResAdapterConfig())
        load_resadapter(other, tmp_path / sub)
        got = resadapter_state_dict(other)
        for k, v in ref.items():
            want = v if exact or "lora_" not in k else v.half().float()
            assert torch.equal(got[k], want), k
        inputs = tiny_inputs()
        if exact:
            assert torch.equal(run(other.unet, inputs), run(unet, inputs))

    # vadapt's own state dict round trip
    other = Holder(tiny_unet(seed=0))
    inject_resadapter(other, ResAdapterConfig())
    load_resadapter_state_dict(other, ref)
    assert all(torch.equal(resadapter_state_dict(other)[k], v) for k, v in ref.items())


def test_wrong_file_errors(tmp_path):
    unet = tiny_unet()
    holder = Holder(unet)
    inject_resadapter(holder, ResAdapterConfig())
    before = {k: v.clone() for k, v in resadapter_state_dict(holder).items()}

    # a file for another base: a 3-level UNet has an extra sampler on each side
    big = tiny_unet(block_out_channels=(32, 64, 64), down_block_types=("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2)
    bholder = Holder(big)
    inject_resadapter(bholder, ResAdapterConfig())
    save_resadapter(bholder, tmp_path / "big")
    with pytest.raises(ValueError, match=r"(?s)unexpected: lora_unet_down_blocks_1_down.*4 sampler convs"):
        load_resadapter(holder, tmp_path / "big" / LORA_FILE)
    with pytest.raises(ValueError, match=r"does not fit this UNet.*norm tensors"):
        load_resadapter(holder, tmp_path / "big" / NORM_FILE)

    # same keys, other widths
    lora, norms = write_official(tmp_path / "ok", unet)
    key = kohya_key(TINY_CONVS[0])
    bad = dict(lora, **{f"{key}.lora_down.weight": torch.zeros(16, 48, 3, 3, dtype=torch.float16)})
    save_file(bad, str(tmp_path / "widths.safetensors"))
    with pytest.raises(ValueError, match=r"shapes \(16, 48, 3, 3\).*needs \(16, 32, 3, 3\)"):
        load_resadapter(holder, tmp_path / "widths.safetensors")
    # other rank
    write_official(tmp_path / "r32", unet, rank=32)
    with pytest.raises(ValueError, match=r"rank 32.*ResAdapterConfig\(r=32\)"):
        load_resadapter(holder, tmp_path / "r32")
    # missing keys
    save_file({k: v for k, v in lora.items() if "up_blocks" not in k}, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match=r"Missing: lora_unet_up_blocks_0_upsamplers_0_conv"):
        load_resadapter(holder, tmp_path / "missing.safetensors")
    save_file({k: v for k, v in norms.items() if "mid_block" not in k}, str(tmp_path / "nomid.safetensors"))
    with pytest.raises(ValueError, match=r"Missing: mid_block\.resnets\.0\.norm1\.bias"):
        load_resadapter(holder, tmp_path / "nomid.safetensors")
    with pytest.raises(FileNotFoundError):
        load_resadapter(holder, tmp_path / "nowhere")
    # nothing was written by a failed load
    assert all(torch.equal(resadapter_state_dict(holder)[k], v) for k, v in before.items())


def test_config_and_injection_errors():
    with pytest.raises(ValueError, match="target_modules"):
        ResAdapterConfig(target_modules=["conv"])
    with pytest.raises(ValueError, match="r must be"):
        ResAdapterConfig(r=0)
    assert ResAdapterConfig().method == "resadapter"
    holder = Holder(tiny_unet())
    inject_resadapter(holder, ResAdapterConfig())
    with pytest.raises(ValueError, match="already has a ResAdapter"):
        inject_resadapter(holder, ResAdapterConfig())
    with pytest.raises(RuntimeError, match="no ResAdapter"):
        set_resadapter_strength(Holder(tiny_unet()), 1.0)
    from vadapt.adapters.base import ADAPTERS

    assert ADAPTERS.get("resadapter").config_class is ResAdapterConfig
