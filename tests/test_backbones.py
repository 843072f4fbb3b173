"""Generic tests run on every tiny backbone in the registry (each family adds its own loading tests)."""

import math

import pytest
import torch

import vadapt.composites  # noqa: F401  (registers the composite backbones, so every entry is enumerated)
from vadapt.backbones import BACKBONES, create_backbone
from vadapt.weights import WeightsMismatchError, WeightsNotFoundError

# image backbones (TINY)
POINT_FAMILIES = ("point", "any2point", "diffusion")  # own tests: test_point_mae/any2point/diffusion_backbone.py
TINY = [name for name in BACKBONES if BACKBONES.get(name).tiny and BACKBONES.get(name).family not in POINT_FAMILIES]
REAL = [name for name in BACKBONES if not BACKBONES.get(name).tiny]


def test_every_family_has_a_tiny_variant():
    tiny = [name for name in BACKBONES if BACKBONES.get(name).tiny]
    assert {BACKBONES.get(n).family for n in tiny} == {BACKBONES.get(n).family for n in BACKBONES}
    assert len(REAL) >= 5


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("size", [(64, 64), (37, 53), (50, 30)])
def test_any_size_gives_ceil_divided_maps(name, size):
    backbone = create_backbone(name)
    feats = backbone(torch.randn(2, 3, *size))
    assert len(feats) == len(backbone.out_channels) == len(backbone.strides)
    for f, c, s in zip(feats, backbone.out_channels, backbone.strides):
        assert f.shape == (2, c, math.ceil(size[0] / s), math.ceil(size[1] / s))
        assert torch.isfinite(f).all()


@pytest.mark.parametrize("name", TINY)
def test_created_frozen_with_blocks_handle(name):
    backbone = create_backbone(name)
    assert not any(p.requires_grad for p in backbone.parameters())
    assert len(backbone.blocks) >= 1
    assert backbone.first_trainable_block() == len(backbone.blocks)


@pytest.mark.parametrize("name", TINY)
def test_multispectral_bands_keep_rgb_filters(name):
    torch.manual_seed(0)
    rgb = create_backbone(name)
    torch.manual_seed(0)  # same seed: the same "pretrained" weights before the bands are adapted
    ms = create_backbone(name, bands=["nir", "red", "green", "blue", "swir16", "swir22"], extra_band_init="mean")
    stem_rgb = rgb.model.get_submodule(rgb.stem_conv).weight
    stem_ms = ms.model.get_submodule(ms.stem_conv).weight
    assert stem_ms.shape[1] == 6
    assert torch.equal(stem_ms[:, 1:4], stem_rgb)
    assert torch.allclose(stem_ms[:, 0], stem_rgb.mean(1))
    feats = ms(torch.randn(1, 6, 64, 64))
    assert feats[0].shape[1] == ms.out_channels[0]
    with pytest.raises(ValueError, match=r"expects \(B, 6, H, W\)"):
        ms(torch.randn(1, 3, 64, 64))


def test_missing_weights_file_error_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("VADAPT_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setattr("torch.hub.download_url_to_file", _offline)
    with pytest.raises(WeightsNotFoundError, match="dinov2_vitb14_pretrain.pth"):
        create_backbone("vit_base_patch14_dinov2", weights="pretrained")
    with pytest.raises(WeightsNotFoundError, match="nothing.pth"):
        create_backbone("dinov2_test", weights=str(tmp_path / "nothing.pth"))


def _offline(*args, **kwargs):
    raise OSError("offline")


def test_dinov2_upstream_format_roundtrip_and_strictness(tmp_path):
    source = create_backbone("dinov2_test")
    for p in source.parameters():
        torch.nn.init.normal_(p, std=0.02)
    # facebookresearch/dinov2 key format = timm's keys plus mask_token
    state = {k: v.clone() for k, v in source.model.state_dict().items()}
    state["mask_token"] = torch.zeros(1, source.out_channels[0])
    path = tmp_path / "dinov2_test_pretrain.pth"
    torch.save(state, path)
    loaded = create_backbone("dinov2_test", weights=str(path))
    x = torch.randn(1, 3, 56, 70)
    for a, b in zip(source(x), loaded(x)):
        assert torch.equal(a, b)
    # written at 56 px, loaded with an explicit 84 px target: pos_embed is resampled, not rejected
    bigger = create_backbone("dinov2_test", weights=str(path), img_size=84)
    assert bigger.model.pos_embed.shape[1] == 1 + 6 * 6
    broken = dict(state)
    del broken["blocks.0.attn.qkv.weight"]
    broken["blocks.0.attn.extra"] = torch.zeros(1)
    torch.save(broken, path)
    with pytest.raises(WeightsMismatchError, match=r"missing keys: blocks\.0\.attn\.qkv\.weight") as err:
        create_backbone("dinov2_test", weights=str(path))
    assert "blocks.0.attn.extra" in str(err.value)


def test_pickled_code_is_never_loaded(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": _Evil()}, path)
    with pytest.raises(WeightsMismatchError, match="never unpickles"):
        create_backbone("dinov2_test", weights=str(path))


class _Evil:
    pass
