"""Depth Anything V1/V2: registry, official checkpoint format, V1/V2 block choice, DPT neck and depth shapes."""

from __future__ import annotations

import math

import pytest
import torch

from vadapt.backbones import BACKBONES, create_backbone
from vadapt.weights import WeightsMismatchError

TINY = ["depth_anything_v1_test", "depth_anything_v2_test"]
REAL = {  # name: (file, hub id or url part, embed_dim, DPT features, out_indices, published total params in M)
    "depth_anything_v1_vits14": ("depth_anything_vits14.pth", "LiheYoung/Depth-Anything", 384, 64,
                                 (8, 9, 10, 11), 24.8),
    "depth_anything_v1_vitb14": ("depth_anything_vitb14.pth", "LiheYoung/Depth-Anything", 768, 128,
                                 (8, 9, 10, 11), 97.5),
    "depth_anything_v1_vitl14": ("depth_anything_vitl14.pth", "LiheYoung/Depth-Anything", 1024, 256,
                                 (20, 21, 22, 23), 335.3),
    "depth_anything_v2_vits": ("depth_anything_v2_vits.pth", "depth-anything/Depth-Anything-V2-Small", 384, 64,
                               (2, 5, 8, 11), 24.8),
    "depth_anything_v2_vitb": ("depth_anything_v2_vitb.pth", "depth-anything/Depth-Anything-V2-Base", 768, 128,
                               (2, 5, 8, 11), 97.5),
    "depth_anything_v2_vitl": ("depth_anything_v2_vitl.pth", "depth-anything/Depth-Anything-V2-Large", 1024, 256,
                               (4, 11, 17, 23), 335.3),
}
#: official key names outside the repeated blocks / refinenets (read from the official DepthAnythingV2 state dict)
OFFICIAL_TOP_KEYS = {
    "pretrained.cls_token", "pretrained.pos_embed", "pretrained.mask_token", "pretrained.patch_embed.proj.weight",
    "pretrained.patch_embed.proj.bias", "pretrained.norm.weight", "pretrained.norm.bias",
    *(f"depth_head.projects.{i}.{p}" for i in range(4) for p in ("weight", "bias")),
    *(f"depth_head.resize_layers.{i}.{p}" for i in (0, 1, 3) for p in ("weight", "bias")),
    *(f"depth_head.scratch.layer{i}_rn.weight" for i in range(1, 5)),
    *(f"depth_head.scratch.output_conv{n}.{p}" for n in ("1", "2.0", "2.2") for p in ("weight", "bias")),
}
BLOCK_KEYS = [f"{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
              for p in ("weight", "bias")] + ["ls1.gamma", "ls2.gamma"]
REFINE_KEYS = [f"{m}.{p}" for m in ("out_conv", "resConfUnit1.conv1", "resConfUnit1.conv2", "resConfUnit2.conv1",
                                    "resConfUnit2.conv2") for p in ("weight", "bias")]


def _randomize(backbone, seed: int):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in backbone.model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        # a positive bias before the final ReLU, so the random depth is not all zeros (and comparisons mean something)
        backbone.model.depth_head.scratch.output_conv2[2].bias.fill_(0.05)
    return backbone.eval()


def _official_state_dict(backbone) -> dict[str, torch.Tensor]:
    """The state dict the official ``DepthAnything`` / ``DepthAnythingV2`` would save for these weights: timm's
    DINOv2 keys equal facebookresearch's for the MLP (non-SwiGLU), register-free encoders, except that timm drops
    ``mask_token`` (inverse of timm's ``_convert_dinov2``); the DPT head already has the official names."""
    state = {f"pretrained.{k}": v.clone() for k, v in backbone.model.pretrained.state_dict().items()}
    state["pretrained.mask_token"] = torch.randn(1, backbone.out_channels[0])
    state.update({f"depth_head.{k}": v.clone() for k, v in backbone.model.depth_head.state_dict().items()})
    return state


@pytest.fixture(scope="module", params=TINY)
def source(request):
    return request.param, _randomize(create_backbone(request.param), seed=TINY.index(request.param))


def test_registry_entries_resolve_to_the_official_configs():
    names = {n for n in BACKBONES if BACKBONES.get(n).family == "depth_anything"}
    assert names == set(REAL) | set(TINY)
    for name, (filename, where, dim, features, indices, millions) in REAL.items():
        entry = BACKBONES.get(name)
        assert entry.weights.filename == filename and not entry.tiny
        assert where in (entry.weights.hub_id or entry.weights.url)
        assert entry.kwargs["img_size"] == 518
        with torch.device("meta"):  # architecture only: no memory, no weights
            backbone = entry.builder(**entry.kwargs)
        assert backbone.out_channels == [dim] * 4 and backbone.strides == [14] * 4
        assert backbone.dpt_channels == features and backbone.out_indices == indices
        assert backbone.model.pretrained.pos_embed.shape == (1, 1 + 37 * 37, dim)
        # the official model also holds DINOv2's mask_token (dim values) that timm leaves out
        total = sum(p.numel() for p in backbone.model.parameters()) + dim
        assert round(total / 1e6, 1) == millions  # the READMEs' parameter counts


def test_v1_reads_the_last_four_blocks_and_v2_evenly_spaced_ones():
    v1, v2 = (_randomize(create_backbone(n), seed=0) for n in TINY)
    assert v1.out_indices == (4, 5, 6, 7) and v2.out_indices == (1, 3, 5, 7)
    x = torch.randn(2, 3, 56, 56)  # the stored 4x4 grid: no position-embedding interpolation on either side
    for backbone in (v1, v2):
        reference = backbone.model.pretrained.forward_intermediates(
            x, indices=list(backbone.out_indices), norm=True, output_fmt="NCHW", intermediates_only=True
        )
        for ours, ref in zip(backbone(x), reference):
            torch.testing.assert_close(ours, ref)
    assert not torch.allclose(v1(x)[0], v2(x)[0])  # same weights, different blocks read
    with pytest.raises(ValueError, match="4 blocks"):
        create_backbone("depth_anything_v2_test", out_indices=[1, 3, 5])


def test_official_format_roundtrip(source, tmp_path):
    name, src = source
    state = _official_state_dict(src)
    top = {k for k in state if not k.startswith(("pretrained.blocks.", "depth_head.scratch.refinenet"))}
    assert top == OFFICIAL_TOP_KEYS
    assert {k for k in state if k.startswith("pretrained.blocks.")} == {
        f"pretrained.blocks.{i}.{k}" for i in range(8) for k in BLOCK_KEYS}
    assert {k for k in state if k.startswith("depth_head.scratch.refinenet")} == {
        f"depth_head.scratch.refinenet{i}.{k}" for i in range(1, 5) for k in REFINE_KEYS}
    path = tmp_path / "depth_anything_official.pth"
    torch.save(state, path)
    loaded = create_backbone(name, weights=str(path)).eval()
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, src.model.state_dict()[key]), key
    x = torch.randn(1, 3, 70, 98)
    with torch.no_grad():
        for a, b in zip(src(x), loaded(x)):
            assert torch.equal(a, b)
        for a, b in zip(src.dpt_features(src(x)), loaded.dpt_features(loaded(x))):
            assert torch.equal(a, b)
        depth = loaded.relative_depth(x)
    assert (depth > 0).any()
    assert torch.equal(depth, src.relative_depth(x))
    # a {"model": ...} container is unwrapped; a 37x37-grid file (the official 518 px) is resampled at load
    torch.save({"model": state}, path)
    assert torch.equal(create_backbone(name, weights=str(path)).relative_depth(x), depth)
    assert create_backbone(name, weights=str(path), img_size=84).model.pretrained.pos_embed.shape[1] == 1 + 36


def test_files_that_are_not_depth_anything_are_refused(source, tmp_path):
    name, src = source
    state = _official_state_dict(src)
    path = tmp_path / "x.pth"
    dinov2 = {k[len("pretrained."):]: v for k, v in state.items() if k.startswith("pretrained.")}
    torch.save(dinov2, path)  # a plain facebookresearch DINOv2 file
    with pytest.raises(WeightsMismatchError, match=r"not a Depth Anything checkpoint: no 'pretrained\.\*' keys"):
        create_backbone(name, weights=str(path))
    torch.save({k: v for k, v in state.items() if k.startswith("pretrained.")}, path)  # encoder without head
    with pytest.raises(WeightsMismatchError, match=r"no 'depth_head\.\*' keys"):
        create_backbone(name, weights=str(path))
    # use_clstoken heads (readout_projects) and stray keys are listed, not silently dropped
    extra = {**state, "depth_head.readout_projects.0.0.weight": torch.zeros(32, 64), "core.scale": torch.ones(1)}
    del extra["depth_head.scratch.layer2_rn.weight"]
    torch.save(extra, path)
    with pytest.raises(WeightsMismatchError, match=r"missing keys: depth_head\.scratch\.layer2_rn\.weight") as err:
        create_backbone(name, weights=str(path))
    assert "depth_head.readout_projects.0.0.weight" in str(err.value) and "core.scale" in str(err.value)


@pytest.mark.parametrize("size", [(70, 98), (64, 80)])
def test_shapes_for_sizes_not_multiple_of_14(source, size):
    _, backbone = source
    x = torch.randn(2, 3, *size)
    h, w = math.ceil(size[0] / 14), math.ceil(size[1] / 14)
    with torch.no_grad():
        maps = backbone(x)
        assert backbone.token_grid == (h, w)
        assert [m.shape for m in maps] == [(2, 32, h, w)] * 4
        paths = backbone.dpt_features(maps)
        assert [p.shape for p in paths] == [(2, 16, 8 * h, 8 * w), (2, 16, 4 * h, 4 * w), (2, 16, 2 * h, 2 * w),
                                            (2, 16, h, w)]
        depth = backbone.relative_depth(x)
    assert depth.shape == (2, 1, *size)
    assert (depth >= 0).all() and torch.isfinite(depth).all()
    with pytest.raises(ValueError, match="4 maps"):
        backbone.dpt_features(maps[:3])


def test_created_frozen_with_adapter_handles():
    for name in TINY:
        backbone = create_backbone(name)
        assert not any(p.requires_grad for p in backbone.parameters())
        assert backbone.first_trainable_block() == len(backbone.blocks) == 8
        assert backbone.num_prefix_tokens == 1 and backbone.patch_size == backbone.pad_multiple == 14
        assert isinstance(backbone.model.get_submodule(backbone.stem_conv), torch.nn.Conv2d)
        for block in backbone.blocks:
            assert isinstance(block.attn.qkv, torch.nn.Linear) and isinstance(block.mlp.fc1, torch.nn.Linear)


def test_lora_trains_through_the_frozen_dpt_neck():
    from vadapt.adapters import LoraConfig, apply_adapter

    backbone = apply_adapter(_randomize(create_backbone("depth_anything_v2_test"), seed=3), LoraConfig())
    head_before = {k: v.clone() for k, v in backbone.model.depth_head.state_dict().items()}
    x = torch.randn(1, 3, 64, 80)
    loss = sum(p.square().mean() for p in backbone.dpt_features(backbone(x))) + backbone.relative_depth(x).mean()
    loss.backward()
    trainable = {n: p for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and ".attn.qkv." in n for n in trainable)
    assert any(p.grad.abs().sum() > 0 for p in trainable.values())
    assert all(p.grad is None for p in backbone.model.depth_head.parameters())
    for key, value in backbone.model.depth_head.state_dict().items():
        assert torch.equal(value, head_before[key])
