"""Earth-Adapter (Hu et al., 2025): frequency split, router, wrapping, parameter count, training, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from vadapt.adapters import apply_adapter
from vadapt.adapters.earth_adapter import (
    EarthAdaptedBlock,
    EarthAdapter,
    EarthAdapterConfig,
    low_pass_mask,
    split_frequencies,
)
from vadapt.adapters.earth_adapter.layer import cutoff_index
from vadapt.backbones import create_backbone

SUPPORTED = ["dinov2_test", "vit_patch16_test", "clip_test", "sam_test", "sam2_test"]


def _perturb(module: nn.Module, std: float = 0.2) -> None:
    """Move the zero-initialised up-projections so the adapters change the output."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if ".up." in name:
                p.normal_(std=std)


def _official_split(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The official recipe written out: fft2, fftshift, centred box [c - k, c + k), ifft2, real part."""
    h, w = x.shape[-2:]
    spec = torch.fft.fftshift(torch.fft.fft2(x.double()), dim=(-2, -1))
    box = torch.zeros(h, w, dtype=torch.double)
    box[max(h // 2 - k, 0): h // 2 + k, max(w // 2 - k, 0): w // 2 + k] = 1
    back = [torch.fft.ifft2(torch.fft.ifftshift(spec * m, dim=(-2, -1))).real for m in (box, 1 - box)]
    return back[0].float(), back[1].float()


# ---- the frequency split --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(8, 8), (7, 9), (5, 12), (1, 6), (37, 37)])
def test_low_plus_high_reconstructs_the_map(size):
    x = torch.randn(2, 3, *size)
    low, high = split_frequencies(x, 0.3)
    assert low.shape == high.shape == x.shape
    torch.testing.assert_close(low + high, x, atol=1e-5, rtol=0)
    assert low.abs().sum() > 0 and high.abs().sum() > 0 or size[0] == 1


def test_cutoff_follows_the_official_formula_floored_at_one():
    assert cutoff_index(32, 32, 0.3) == 4  # the official 512 px / patch 16 grid
    assert cutoff_index(32, 32, 0.2) == 3
    assert cutoff_index(37, 40, 0.3) == 5  # DINOv2 ViT-L/14 at 518 px; min(h, w) decides
    assert cutoff_index(4, 4, 0.3) == 1  # official: 0 (empty low band); ours keeps the zero frequency low


def test_constant_map_is_all_low_and_checkerboard_all_high():
    for h, w in [(16, 16), (4, 6), (12, 20)]:
        constant = torch.full((1, 2, h, w), 3.0)
        low, high = split_frequencies(constant, 0.3)
        torch.testing.assert_close(low, constant, atol=1e-5, rtol=0)
        assert high.abs().max() < 1e-5
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        checker = ((-1.0) ** (yy + xx)).expand(1, 2, h, w)
        low, high = split_frequencies(checker, 0.3)
        assert low.abs().max() < 1e-5
        torch.testing.assert_close(high, checker, atol=1e-5, rtol=0)


def test_smooth_map_is_mostly_low_and_noise_mostly_high():
    h = w = 32
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    smooth = torch.cos(2 * torch.pi * xx / w)[None, None].float()  # frequency 1 < k = 4
    low, high = split_frequencies(smooth, 0.3)
    torch.testing.assert_close(low, smooth, atol=1e-5, rtol=0)
    noise = torch.randn(1, 1, h, w, generator=torch.Generator().manual_seed(0))
    low, high = split_frequencies(noise, 0.3)
    assert high.square().sum() > 5 * low.square().sum()  # the low box holds ~(8/32)^2 of white noise energy


@pytest.mark.parametrize("size, ratio", [((32, 32), 0.3), ((32, 32), 0.2), ((37, 37), 0.3), ((9, 14), 0.3),
                                         ((15, 10), 0.2), ((8, 8), 1.0)])
def test_split_equals_the_official_box_filter_and_real_part(size, ratio):
    x = torch.randn(2, 3, *size)
    low, high = split_frequencies(x, ratio)
    ref_low, ref_high = _official_split(x, cutoff_index(*size, ratio))
    torch.testing.assert_close(low, ref_low, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(high, ref_high, atol=1e-5, rtol=1e-5)


def test_mask_is_on_the_half_spectrum_with_weights_zero_half_one():
    mask = low_pass_mask(32, 32, 0.3)
    assert mask.shape == (32, 17)
    assert set(mask.unique().tolist()) == {0.0, 0.5, 1.0}
    assert mask[0, 0] == 1 and mask[3, 3] == 1 and mask[5, 0] == 0 and mask[4, 0] == 0.5


def test_split_keeps_half_precision_dtype():
    x = torch.randn(1, 4, 5, 7).bfloat16()
    low, high = split_frequencies(x, 0.3)
    assert low.dtype == high.dtype == torch.bfloat16
    torch.testing.assert_close((low.float() + high.float()), x.float(), atol=2e-2, rtol=0)


# ---- the adapter ----------------------------------------------------------------------------------------------


def test_router_weights_sum_to_one_per_token():
    adapter = EarthAdapter(16, 4, 0.1, 0.3)
    with torch.no_grad():
        adapter.router.weight.normal_(std=1.0)
        gates = adapter.route(torch.randn(2, 5, 7, 16))
    assert gates.shape == (2, 5, 7, 3)
    assert (gates >= 0).all()
    torch.testing.assert_close(gates.sum(-1), torch.ones(2, 5, 7))
    assert gates.std(dim=(0, 1, 2)).min() > 0  # per token, not one global mixture


def test_adapter_is_the_gated_sum_of_three_experts():
    torch.manual_seed(0)
    adapter = EarthAdapter(8, 3, 0.25, 0.5, zero_init=False)
    x = torch.randn(2, 6, 6, 8)
    low, high = (t.permute(0, 2, 3, 1) for t in split_frequencies(x.permute(0, 3, 1, 2), 0.5))
    g = torch.softmax(adapter.router(x), -1)
    experts = (adapter.spatial(x), adapter.low(low), adapter.high(high))
    expected = 0.25 * sum(g[..., i : i + 1] * e for i, e in enumerate(experts))
    torch.testing.assert_close(adapter(x), expected)
    spatial_only = EarthAdapter(8, 3, 0.25, 0.5, frequency=False, zero_init=False)
    assert not hasattr(spatial_only, "router") and not hasattr(spatial_only, "low")
    torch.testing.assert_close(spatial_only(x), 0.25 * spatial_only.spatial(x))


def test_prefix_tokens_pass_through_and_patches_change():
    torch.manual_seed(0)
    base = nn.Linear(8, 8)
    block = EarthAdaptedBlock(base, EarthAdapter(8, 2, 0.1, 0.3, zero_init=False), "tokens", 2, lambda: (3, 5))
    x = torch.randn(2, 2 + 15, 8)
    out = block(x)
    ref = base(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out[:, :2], ref[:, :2], atol=0, rtol=0)
    assert (out[:, 2:] - ref[:, 2:]).abs().max() > 1e-4


@pytest.mark.parametrize("name", SUPPORTED)
def test_shapes_on_odd_non_square_inputs(name):
    backbone = create_backbone(name).eval()
    inputs = [torch.randn(2, 3, 61, 97), torch.randn(1, 3, 45, 33)]
    with torch.no_grad():
        before = [backbone(x) for x in inputs]
        apply_adapter(backbone, EarthAdapterConfig(adapter_dim=4))
        _perturb(backbone)
        after = [backbone(x) for x in inputs]
    for ref, got in zip(before, after):
        assert [f.shape for f in got] == [f.shape for f in ref]
        assert all(torch.isfinite(f).all() for f in got)
        assert max((a - b).abs().max() for a, b in zip(ref, got)) > 1e-4


def test_gradients_reach_only_adapter_parameters():
    backbone = create_backbone("dinov2_test")
    apply_adapter(backbone, EarthAdapterConfig(adapter_dim=4, layers=[1, 2, 3], fft_layers=[2, 3]))
    _perturb(backbone, 0.05)
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if "router" in name:
                p.normal_(std=0.5)
    backbone.train()
    sum(f.square().mean() for f in backbone(torch.randn(2, 3, 42, 70))).backward()
    for name, p in backbone.named_parameters():
        if p.requires_grad:
            assert ".adapter." in name, name
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    assert backbone.first_trainable_block() == 1


def test_gradient_checkpointing_gives_the_same_gradients():
    def grads(ckpt: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        backbone = create_backbone("dinov2_test")
        apply_adapter(backbone, EarthAdapterConfig(adapter_dim=4, layers=[2, 3]))
        _perturb(backbone, 0.05)
        backbone.grad_checkpointing = ckpt
        backbone.train()
        x = torch.randn(2, 3, 56, 42, generator=torch.Generator().manual_seed(1))
        sum(f.square().mean() for f in backbone(x)).backward()
        return {n: p.grad.clone() for n, p in backbone.named_parameters() if p.requires_grad}

    reference, checkpointed = grads(False), grads(True)
    assert reference.keys() == checkpointed.keys()
    for name in reference:
        torch.testing.assert_close(checkpointed[name], reference[name], atol=1e-6, rtol=1e-5)


def _expert(c: int, r: int) -> int:
    return c * r + r + r * c + c


@pytest.mark.parametrize(
    "name, config, expected",
    [
        # dinov2_test: 4 blocks of width 32; block 0 not adapted, 1 spatial only, 2 and 3 frequency mixtures
        ("dinov2_test", EarthAdapterConfig(adapter_dim=4, layers=[1, 2, -1], fft_layers=[2, 3]),
         (_expert(32, 4) + 1) + 2 * (3 * _expert(32, 4) + (32 * 3 + 3) + 1)),
        # sam2_test (Hiera): per-block output widths 16, 32, 64, 64, 128, every block a frequency mixture
        ("sam2_test", EarthAdapterConfig(adapter_dim=2),
         sum(3 * _expert(c, 2) + 3 * c + 3 + 1 for c in (16, 32, 64, 64, 128))),
    ],
)
def test_parameter_count_formula(name, config, expected):
    backbone = create_backbone(name)
    apply_adapter(backbone, config)
    assert sum(p.numel() for p in backbone.parameters() if p.requires_grad) == expected


def test_loss_falls_on_a_tiny_segmentation_task():
    torch.manual_seed(0)
    backbone = create_backbone("sam_test")
    apply_adapter(backbone, EarthAdapterConfig(adapter_dim=8))
    head = nn.Conv2d(backbone.out_channels[-1], 2, 1)
    x = torch.randn(2, 3, 64, 64)
    target = (nn.functional.avg_pool2d(x[:, :1], 16)[:, 0] > 0).long()  # learnable from the input
    params = [p for p in backbone.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    backbone.train()
    losses = []
    for _ in range(20):
        loss = nn.functional.cross_entropy(head(backbone(x)[-1]), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_deepcopy_points_the_copy_at_its_own_token_grid():
    backbone = create_backbone("dinov2_test")
    apply_adapter(backbone, EarthAdapterConfig(adapter_dim=4))
    twin = copy.deepcopy(backbone)
    assert twin.blocks[0].grid.backbone is twin
    twin(torch.randn(1, 3, 28, 42))
    assert twin.token_grid == (2, 3) and backbone.token_grid is None
    assert not any(m is backbone for m in twin.blocks[0].modules())  # a plain reference, no module cycle


# ---- errors ---------------------------------------------------------------------------------------------------


def test_conv_layout_backbones_are_refused():
    with pytest.raises(ValueError, match="'conv' layout"):
        apply_adapter(create_backbone("efficientnet_lite0_test"), EarthAdapterConfig())


def test_a_missing_token_grid_is_reported():
    backbone = create_backbone("dinov2_test")
    apply_adapter(backbone, EarthAdapterConfig(adapter_dim=4))
    with pytest.raises(ValueError, match="token_grid"):
        backbone.blocks[0](torch.randn(1, 1 + 6, 32))


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: EarthAdapterConfig(adapter_dim=0), "adapter_dim"),
        (lambda: EarthAdapterConfig(cutoff_ratio=0.0), "cutoff_ratio"),
        (lambda: EarthAdapterConfig(cutoff_ratio=1.5), "cutoff_ratio"),
        (lambda: EarthAdapterConfig(layers=[]), "layers"),
        (lambda: EarthAdapterConfig(fft_layers=[1, 1]), "fft_layers"),
        (lambda: EarthAdapterConfig(target_modules=["mlp"]), "layers"),
    ],
)
def test_config_validation_names_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_block_indices_are_checked_against_the_backbone():
    with pytest.raises(ValueError, match=r"layers has \[4\]"):
        apply_adapter(create_backbone("dinov2_test"), EarthAdapterConfig(layers=[0, 4]))
    with pytest.raises(ValueError, match="fft_layers .* not among"):
        apply_adapter(create_backbone("dinov2_test"), EarthAdapterConfig(layers=[0, 1], fft_layers=[2]))
