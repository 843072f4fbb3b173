"""Cloud-Adapter (Zou et al.): shapes, per-forward context, gradients, parameter count, learning, errors.

The generic adapter suite (identity at init, only adapter parameters train, frozen state unchanged) runs on the
``cloud_adapter-*`` rows of ``CASES`` in test_adapters.py.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vadapt.adapters import apply_adapter
from vadapt.adapters.cloud_adapter import CloudAdaptedBlock, CloudAdapterConfig
from vadapt.backbones import create_backbone

SUPPORTED = ["dinov2_test", "vit_patch16_test", "clip_test", "sam_test", "sam2_test"]


def tiny_config(**overrides) -> CloudAdapterConfig:
    kwargs = dict(context_dim=8, context_depth=2, rank=4, num_heads=2, head_dim=8, norm_groups=4, zero_init=False)
    return CloudAdapterConfig(**{**kwargs, **overrides})


def adapted(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    backbone = create_backbone(name).eval()
    apply_adapter(backbone, tiny_config(**overrides))
    return backbone


def adapter_params(backbone: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in backbone.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", SUPPORTED)
def test_shapes_on_odd_non_square_inputs_and_the_adapter_acts(name):
    torch.manual_seed(0)
    frozen = create_backbone(name).eval()
    backbone = copy.deepcopy(frozen)
    apply_adapter(backbone, tiny_config())
    x = torch.randn(2, 3, 45, 77)
    with torch.no_grad():
        plain, out = frozen(x), backbone(x)
    assert [f.shape for f in out] == [f.shape for f in plain]
    for f, c, s in zip(out, backbone.out_channels, backbone.strides):
        assert f.shape == (2, c, math.ceil(45 / s), math.ceil(77 / s)) and torch.isfinite(f).all()
    assert max((a - b).abs().max() for a, b in zip(out, plain)) > 1e-3  # random init: the adapters change it
    assert all(isinstance(b, CloudAdaptedBlock) for b in backbone.blocks)
    assert backbone.cloud_adapter.slot.context.shape[1] == 8  # (B, context_dim, ...)


def test_context_is_recomputed_every_forward():
    x1, x2 = torch.randn(1, 3, 42, 70), torch.randn(2, 3, 56, 28)  # a new batch size and size too
    backbone = adapted("dinov2_test")
    with torch.no_grad():
        first = backbone(x1)
        second = backbone(x2)
        fresh1 = adapted("dinov2_test")(x1)
        fresh2 = adapted("dinov2_test")(x2)
    for a, b in zip(first + second, fresh1 + fresh2):
        torch.testing.assert_close(a, b)


def test_prefix_tokens_pass_unchanged():
    backbone = adapted("dinov2_test")
    block = backbone.blocks[0]
    seen = {}
    block.base_layer.register_forward_hook(lambda m, i, o: seen.setdefault("base", o))
    block.register_forward_hook(lambda m, i, o: seen.setdefault("wrapped", o))
    with torch.no_grad():
        backbone(torch.randn(2, 3, 28, 42))
    p = backbone.num_prefix_tokens
    assert torch.equal(seen["wrapped"][:, :p], seen["base"][:, :p])
    assert not torch.allclose(seen["wrapped"][:, p:], seen["base"][:, p:])


@pytest.mark.parametrize("zero_init", [False, True])
def test_gradients_reach_only_the_adapter(zero_init):
    backbone = adapted("dinov2_test", zero_init=zero_init).train()
    sum(f.square().mean() for f in backbone(torch.randn(2, 3, 42, 56))).backward()
    for n, p in backbone.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, n
            continue
        assert n.startswith("cloud_adapter.") or ".adapter." in n, n
        # with zero init only the zero factors get a gradient at the first step; otherwise every adapter tensor
        assert (p.grad.abs().sum() > 0) == (not zero_init or n.endswith("out_proj.up.weight")), n


def test_gradient_checkpointing_gives_the_same_gradients():
    x = torch.randn(2, 3, 42, 56)
    grads = []
    for ckpt in (False, True):
        backbone = adapted("dinov2_test").train()
        backbone.grad_checkpointing = ckpt
        sum(f.square().mean() for f in backbone(x)).backward()
        grads.append({n: p.grad for n, p in adapter_params(backbone).items()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-6, rtol=1e-5)


def _expected_count(bands: int, widths: list[int], d: int, depth: int, rank: int | None, inner: int) -> int:
    convnet = (3 * bands + bands * d + 2 * d) + (depth + 1) * (10 * d * d + 4 * d)
    if rank is None:
        per_block = [inner * (2 * c + 2 * d) for c in widths]
    else:
        per_block = [rank * (2 * c + 2 * d + 4 * inner) for c in widths]
    return convnet + sum(per_block)


@pytest.mark.parametrize(
    "name, overrides, widths",
    [
        ("dinov2_test", {}, [32] * 4),
        ("dinov2_test", {"rank": None, "layers": [1, -1]}, [32] * 2),
        ("sam2_test", {}, [16, 32, 64, 64, 128]),  # Hiera: one module per block, sized to its stage
    ],
)
def test_parameter_count_formula(name, overrides, widths):
    backbone = adapted(name, **overrides)
    config = tiny_config(**overrides)
    inner = config.num_heads * config.head_dim
    expected = _expected_count(3, widths, config.context_dim, config.context_depth, config.rank, inner)
    assert sum(p.numel() for p in adapter_params(backbone).values()) == expected
    assert sum(isinstance(b, CloudAdaptedBlock) for b in backbone.blocks) == len(widths)


def test_official_vit_large_configuration_is_0_6_percent():
    with torch.device("meta"):
        backbone = create_backbone("vit_large_patch14_dinov2", weights=None, img_size=512)
        total = sum(p.numel() for p in backbone.parameters())
        apply_adapter(backbone, CloudAdapterConfig())
    trainable = sum(p.numel() for p in adapter_params(backbone).values())
    assert trainable == _expected_count(3, [1024] * 24, 64, 4, 16, 512) == 1_828_425
    assert round(100 * trainable / total, 1) == 0.6


def _cloud_task() -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images with smooth bright "clouds"; the label is cloud cover > 50% in each 14×14 patch."""
    g = torch.Generator().manual_seed(0)
    clouds = F.interpolate(torch.randn(2, 1, 3, 5, generator=g), size=(42, 70), mode="bilinear") > 0.3
    x = torch.randn(2, 3, 42, 70, generator=g) + 2.0 * clouds
    return x, (F.avg_pool2d(clouds.float(), 14)[:, 0] > 0.5).long()


def _train(adapt: bool, steps: int = 8) -> list[float]:
    torch.manual_seed(0)
    backbone = create_backbone("dinov2_test")
    if adapt:
        apply_adapter(backbone, tiny_config(zero_init=True))
    torch.manual_seed(1)
    head = nn.Conv2d(backbone.out_channels[-1], 2, 1)
    params = list(adapter_params(backbone).values()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    x, y = _cloud_task()
    backbone.train()
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(head(backbone(x)[-1]), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_a_tiny_model_learns_more_than_the_frozen_backbone_with_a_head():
    ours, frozen = _train(True), _train(False)
    assert ours[0] == pytest.approx(frozen[0])  # zero init: the same start
    assert ours[-1] < 0.8 * ours[0]
    assert ours[-1] < frozen[-1] - 0.05


def test_refuses_conv_layout_backbones():
    with pytest.raises(ValueError, match="Cloud-Adapter cross-attends"):
        apply_adapter(create_backbone("efficientnet_lite0_test"), tiny_config())


def test_refuses_a_second_injection_and_bad_layers():
    backbone = adapted("dinov2_test")
    with pytest.raises(ValueError, match="already has a Cloud-Adapter"):
        apply_adapter(backbone, tiny_config())
    with pytest.raises(ValueError, match="layers has 4"):
        apply_adapter(create_backbone("dinov2_test"), tiny_config(layers=[0, 4]))
    with pytest.raises(ValueError, match="twice"):
        apply_adapter(create_backbone("dinov2_test"), tiny_config(layers=[3, -1]))


def test_blocks_outside_a_backbone_forward_say_what_to_call():
    backbone = create_backbone("dinov2_test")
    apply_adapter(backbone, tiny_config())
    with pytest.raises(RuntimeError, match=r"call the backbone itself"):
        backbone.forward_features(torch.randn(1, 3, 28, 28))


def test_set_bands_after_injection_is_reported():
    backbone = adapted("sam_test")
    backbone.set_bands(["red", "green", "blue", "nir"])
    with pytest.raises(ValueError, match="built for 3 input bands"):
        backbone(torch.randn(1, 4, 32, 32))


def test_multispectral_input_and_deepcopy_after_a_training_forward():
    torch.manual_seed(0)
    backbone = create_backbone("vit_patch16_test", bands=["red", "green", "blue", "nir"])
    apply_adapter(backbone, tiny_config())
    x = torch.randn(2, 4, 40, 40)
    backbone.train()
    backbone(x)  # leaves a context with autograd history in the shared slot
    twin = copy.deepcopy(backbone).eval()
    backbone.eval()
    assert twin.cloud_adapter.slot is twin.blocks[0].slot is not backbone.cloud_adapter.slot
    with torch.no_grad():
        for a, b in zip(twin(x), backbone(x)):
            torch.testing.assert_close(a, b)
    assert all(k in backbone.state_dict() for k in adapter_params(backbone))


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"rank": 0}, "CloudAdapterConfig.rank"),
        ({"context_dim": 0}, "context_dim"),
        ({"context_depth": -1}, "context_depth"),
        ({"norm_groups": 3}, "norm_groups"),
        ({"layers": []}, "layers"),
        ({"target_modules": ["qkv"]}, "layers"),
    ],
)
def test_config_validation_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        CloudAdapterConfig(**overrides)
