"""SAM (ViT) and SAM 2 (Hiera) image encoders: registry, upstream checkpoint format, resampling, sizes."""

from __future__ import annotations

import math

import pytest
import torch

from vadapt.backbones import BACKBONES, create_backbone
from vadapt.weights import WeightsMismatchError

SAM_NAMES = ["sam_vit_b", "sam_vit_l", "sam_vit_h"]
SAM2_NAMES = [f"{v}_hiera_{s}" for v in ("sam2", "sam2.1") for s in ("t", "s", "b+", "l")]


def _randomize(backbone, seed: int = 0):
    """Random values everywhere (SAM zero-initialises pos_embed and rel_pos, which would hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in backbone.model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return backbone


def _sam_checkpoint(backbone, path, drop: str | None = None, extra: str | None = None):
    """A full-SAM file as ``segment_anything`` publishes it: a flat state dict of the whole model."""
    sd = {"image_encoder." + k: v for k, v in backbone.model.state_dict().items() if k != drop}
    sd["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.randn(2, 16)
    sd["mask_decoder.iou_token.weight"] = torch.randn(1, 32)
    if extra:
        sd[extra] = torch.zeros(1)
    torch.save(sd, path)
    return str(path)


def _sam2_checkpoint(backbone, path, drop: str | None = None, extra: str | None = None):
    """A SAM 2 file as published: ``{"model": state_dict}``, memory / decoder parts besides the encoder."""
    sd = {"image_encoder." + k: v for k, v in backbone.model.state_dict().items() if k != drop}
    sd["memory_attention.layers.0.linear1.weight"] = torch.randn(4, 4)
    sd["sam_mask_decoder.iou_token.weight"] = torch.randn(1, 4)
    sd["maskmem_tpos_enc"] = torch.randn(7, 1, 1, 4)
    sd["no_mem_embed"] = torch.randn(1, 1, 4)
    if extra:
        sd[extra] = torch.zeros(1)
    torch.save({"model": sd}, path)
    return str(path)


@pytest.fixture(scope="module")
def sam_src():
    return _randomize(create_backbone("sam_test")).eval()


@pytest.fixture(scope="module")
def sam2_src():
    return _randomize(create_backbone("sam2_test"), seed=1).eval()


def test_registry_entries():
    for name in SAM_NAMES + SAM2_NAMES + ["sam_test", "sam2_test"]:
        assert name in BACKBONES
    assert BACKBONES.get("sam_vit_b").weights.filename == "sam_vit_b_01ec64.pth"
    assert BACKBONES.get("sam_vit_h").weights.url == (
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"
    )
    assert BACKBONES.get("sam2_hiera_b+").weights.url == (
        "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_base_plus.pt"
    )
    assert BACKBONES.get("sam2.1_hiera_l").weights.url == (
        "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_large.pt"
    )
    assert BACKBONES.get("sam_test").tiny and BACKBONES.get("sam2_test").tiny
    assert not any(BACKBONES.get(n).tiny for n in SAM_NAMES + SAM2_NAMES)


# ---- SAM -------------------------------------------------------------------------------------------------


def test_sam_forward_matches_upstream(sam_src):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        (ours,) = sam_src(x)
        ref = sam_src.model(x)
    assert sam_src.strides == [16] and sam_src.out_channels == [32]
    torch.testing.assert_close(ours, ref)


def test_sam_checkpoint_roundtrip(sam_src, tmp_path):
    path = _sam_checkpoint(sam_src, tmp_path / "sam_test.pth")
    loaded = create_backbone("sam_test", weights=path)
    for shape in [(1, 3, 64, 64), (2, 3, 50, 83)]:
        x = torch.randn(shape)
        with torch.no_grad():
            assert all(torch.equal(a, b) for a, b in zip(loaded(x), sam_src(x)))


def test_sam_checkpoint_mismatch(sam_src, tmp_path):
    key = "blocks.1.attn.rel_pos_h"
    with pytest.raises(WeightsMismatchError, match=key):
        create_backbone("sam_test", weights=_sam_checkpoint(sam_src, tmp_path / "a.pth", drop=key))
    with pytest.raises(WeightsMismatchError, match="something_else.weight"):
        path = _sam_checkpoint(sam_src, tmp_path / "b.pth", extra="something_else.weight")
        create_backbone("sam_test", weights=path)


def test_sam_resamples_to_img_size(sam_src, tmp_path):
    path = _sam_checkpoint(sam_src, tmp_path / "sam_test.pth")  # written at img_size 64 (4 x 4 grid)
    big = create_backbone("sam_test", weights=path, img_size=96)
    assert big.model.pos_embed.shape == (1, 6, 6, 32)
    assert big.model.blocks[1].attn.rel_pos_h.shape == (11, 16)  # global block: 2 * 6 - 1
    assert big.model.blocks[0].attn.rel_pos_h.shape == (7, 16)  # window block: 2 * 4 - 1, unchanged
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        (out,) = big(x)
        (ref,) = sam_src(x)  # the 64-px model resamples the same way at run time
    assert out.shape == (2, 32, 6, 6)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_sam_out_indices():
    bb = create_backbone("sam_test", out_indices=[0])
    assert bb.out_channels == [32, 32] and bb.strides == [16, 16]
    outs = bb(torch.randn(1, 3, 40, 70))
    assert [tuple(o.shape) for o in outs] == [(1, 32, 3, 5), (1, 32, 3, 5)]


# ---- SAM 2 -----------------------------------------------------------------------------------------------


def test_sam2_forward_matches_upstream(sam2_src):
    assert sam2_src.strides == [4, 8, 16] and sam2_src.out_channels == [32, 32, 32]
    assert sam2_src.pad_multiple == 32
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ours = sam2_src(x)
        ref = sam2_src.model(x)["backbone_fpn"]
    assert len(ours) == len(ref) == 3
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)


def test_sam2_checkpoint_roundtrip(sam2_src, tmp_path):
    path = _sam2_checkpoint(sam2_src, tmp_path / "sam2_test.pt")
    loaded = create_backbone("sam2_test", weights=path)
    for shape in [(1, 3, 64, 64), (2, 3, 45, 70)]:
        x = torch.randn(shape)
        with torch.no_grad():
            assert all(torch.equal(a, b) for a, b in zip(loaded(x), sam2_src(x)))


def test_sam2_checkpoint_mismatch(sam2_src, tmp_path):
    key = "trunk.blocks.2.attn.qkv.weight"
    with pytest.raises(WeightsMismatchError, match=key):
        create_backbone("sam2_test", weights=_sam2_checkpoint(sam2_src, tmp_path / "a.pt", drop=key))
    with pytest.raises(WeightsMismatchError, match="unknown_head.bias"):
        path = _sam2_checkpoint(sam2_src, tmp_path / "b.pt", extra="unknown_head.bias")
        create_backbone("sam2_test", weights=path)


def test_sam2_extra_bands_and_grad():
    bb = create_backbone("sam2_test", bands=["red", "green", "blue", "nir"])
    assert bb.model.trunk.patch_embed.proj.in_channels == 4
    for p in bb.blocks[-1].parameters():
        p.requires_grad_(True)
    bb.grad_checkpointing = True
    bb.train()
    outs = bb(torch.randn(1, 4, 40, 40))
    sum(o.sum() for o in outs).backward()
    assert all(p.grad is not None for p in bb.blocks[-1].parameters())


# ---- both ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sam_test", "sam2_test"])
@pytest.mark.parametrize("hw", [(100, 75), (64, 160), (33, 33), (17, 9)])
def test_odd_sizes(name, hw):
    bb = create_backbone(name)
    with torch.no_grad():
        outs = bb(torch.randn(2, 3, *hw))
    assert len(outs) == len(bb.strides)
    for out, c, s in zip(outs, bb.out_channels, bb.strides):
        assert out.shape == (2, c, math.ceil(hw[0] / s), math.ceil(hw[1] / s))
        assert torch.isfinite(out).all()


def test_sam2_accepts_img_size_with_a_warning():
    with pytest.warns(UserWarning, match="ignored by SAM 2"):
        backbone = create_backbone("sam2_test", img_size=96)
    assert [f.shape[-1] for f in backbone(torch.randn(1, 3, 64, 96))] == [24, 12, 6]
