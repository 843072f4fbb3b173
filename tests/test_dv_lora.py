"""EndoDAC (arXiv:2405.08672): DV-LoRA on Linears and 1x1 convolutions and Convolutional Necks after blocks.

The layer equals its float64 formula ``W x + b + s x (diag(U) A)^T (diag(V) B)^T``, both start as the frozen model
bit for bit, the warm-up / vector phases train exactly their factors (and the necks), checkpoints keep the frozen
phase's factors, merging folds DV-LoRA (not the necks), parameter counts (also DINOv2 / Depth Anything ViT-S and ViT-B
on the meta device), the tiny DINOv2 (tokens) and EfficientNet-Lite (conv) backbones, and clear errors.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from vadapt.adapters import apply_adapter, can_merge, merge_adapter
from vadapt.adapters.dv_lora import (
    ConvNeck,
    DVLoraConfig,
    DVLoraConv2d,
    DVLoraLinear,
    NeckedBlock,
    conv_neck_parameter_count,
    dv_lora_parameter_count,
    dv_lora_vector_phase,
    merge_dv_lora,
    set_dv_lora_phase,
)
from vadapt.adapters.layers import AdapterLayer
from vadapt.backbones import create_backbone

pytestmark = pytest.mark.usefixtures("one_thread")

#: tiny backbone -> config (the paper's necks [2, 5, 8, 11] do not exist on 4 / 8 blocks)
BACKBONES = {
    "dinov2_test": dict(r=2, lora_alpha=4.0, neck_blocks=[1, -1], neck_reduction=4),
    "efficientnet_lite0_test": dict(r=2, neck_blocks=[2, 5, 7]),
}
FACTORS = ("lora_A", "lora_B", "lora_U", "lora_V")


def frozen_linear(d_in: int = 12, d_out: int = 20, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(d_in, d_out).requires_grad_(False)


def perturb(module: nn.Module, seed: int = 1, scale: float = 0.3, backbone: bool = False) -> None:
    """Move every adapter tensor (parameters and the frozen phase's buffers) away from its init: all but the
    ``base_layer`` of a layer or neck, only the DV-LoRA factors and necks of a ``backbone``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            ours = ("lora_" in name or ".adapter." in name) if backbone else "base_layer" not in name
            if ours and t.is_floating_point():
                t.add_(scale * torch.randn(t.shape, generator=g).to(t))


def adapted(name: str, **overrides) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    backbone = create_backbone(name).eval()
    apply_adapter(backbone, DVLoraConfig(**{**BACKBONES[name], **overrides}))
    return backbone, torch.randn(2, 3, 56, 70, generator=torch.Generator().manual_seed(1))


def saved_keys(module: nn.Module) -> set[str]:
    """What an adapter checkpoint keeps (BaseTask.adapter_state_dict): trainable parameters and the buffers of
    every module that owns one."""
    keys = {n for n, p in module.named_parameters() if p.requires_grad}
    for name, m in module.named_modules():
        if any(p.requires_grad for p in m.parameters(recurse=False)):
            keys.update(f"{name}.{b}" if name else b for b, _ in m.named_buffers(recurse=False))
    return keys


def trainable_kinds(module: nn.Module) -> set[str]:
    """Which adapter tensors train: factor names, or ``neck`` for neck parameters."""
    kinds = set()
    for n, p in module.named_parameters():
        if p.requires_grad:
            kinds.add(n.rsplit(".", 1)[-1] if ".lora_" in n else "neck" if ".adapter." in n else n)
    return kinds


# ---- the layer ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vectors", [True, False])
def test_linear_layer_matches_the_float64_formula(vectors):
    base = frozen_linear()
    layer = DVLoraLinear(base, r=3, scaling=2.5, vectors=vectors)
    perturb(layer)
    x = torch.randn(4, 5, 12)
    a, b = layer.lora_A.double(), layer.lora_B.double()
    if vectors:
        a, b = layer.lora_U.double()[:, None] * a, layer.lora_V.double()[:, None] * b
    expected = x.double() @ base.weight.double().T + base.bias.double() + 2.5 * (x.double() @ a.T) @ b.T
    torch.testing.assert_close(layer(x).double(), expected, atol=1e-5, rtol=1e-5)
    assert (layer(x) - base(x)).abs().max() > 1e-2


def test_conv_layer_is_the_linear_layer_at_every_pixel():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 1).requires_grad_(False)
    layer = DVLoraConv2d(conv, r=2, scaling=1.5)
    perturb(layer)
    linear = nn.Linear(6, 10).requires_grad_(False)
    with torch.no_grad():
        linear.weight.copy_(conv.weight[:, :, 0, 0])
        linear.bias.copy_(conv.bias)
    reference = DVLoraLinear(linear, r=2, scaling=1.5)
    reference.load_state_dict({k: v for k, v in layer.state_dict().items() if "lora_" in k}, strict=False)
    x = torch.randn(2, 6, 5, 7)
    expected = reference(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_init_is_the_official_one_and_the_layer_starts_as_the_frozen_one():
    base = frozen_linear(d_in=50, d_out=30)
    layer = DVLoraLinear(base, r=4)
    x = torch.randn(3, 50)
    assert torch.equal(layer(x), base(x))
    assert torch.equal(layer.lora_B, torch.zeros(30, 4))
    assert layer.lora_A.abs().max() <= 1 / math.sqrt(50)  # kaiming-uniform, a = sqrt 5: bound 1 / sqrt(fan_in)
    for v in (layer.lora_U, layer.lora_V):  # kaiming-uniform on (n, 1): fan-in 1, bound 1
        assert v.abs().max() <= 1 and v.std() > 0.3
    assert layer.lora_U.shape == (4,) and layer.lora_V.shape == (30,)


def test_phases_train_their_factors_and_keep_state_dict_keys():
    layer = DVLoraLinear(frozen_linear(), r=2)
    keys = set(layer.state_dict())
    assert {n for n, _ in layer.named_parameters()} == {"base_layer.weight", "base_layer.bias", "lora_A", "lora_B"}
    assert {n for n, _ in layer.named_buffers()} == {"lora_U", "lora_V"}
    perturb(layer)
    x = torch.randn(3, 12)
    before, values = layer(x), {k: v.clone() for k, v in layer.state_dict().items()}
    a = layer.lora_A
    layer.set_phase(False)  # same phase: nothing changes, the parameter objects stay
    assert layer.lora_A is a
    layer.set_phase(True)
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == {"lora_U", "lora_V"}
    assert {n for n, _ in layer.named_buffers()} == {"lora_A", "lora_B"}
    assert set(layer.state_dict()) == keys
    assert all(torch.equal(layer.state_dict()[k], v) for k, v in values.items())
    assert torch.equal(layer(x), before)


def test_plain_lora_has_no_vectors_and_always_trains_a_and_b():
    layer = DVLoraLinear(frozen_linear(), r=2, vectors=False, vector_phase=True)
    for phase in (True, False, True):
        layer.set_phase(phase)
        assert {n for n, p in layer.named_parameters() if p.requires_grad} == {"lora_A", "lora_B"}
    assert not hasattr(layer, "lora_U") and layer.num_adapter_parameters() == dv_lora_parameter_count(12, 20, 2, False)


@pytest.mark.parametrize("make", [lambda: nn.Conv2d(4, 4, 3), lambda: nn.Conv2d(4, 4, 1, stride=2),
                                  lambda: nn.Conv2d(4, 4, 1, groups=2), lambda: nn.Conv2d(4, 4, 1, padding=1)])
def test_conv_layer_refuses_convolutions_that_are_not_pointwise(make):
    with pytest.raises(TypeError, match="1x1, stride-1"):
        DVLoraConv2d(make())


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_merge_equals_unmerged_and_leaves_the_base_untouched(kind):
    torch.manual_seed(0)
    if kind == "linear":
        base, x, cls = nn.Linear(16, 24).requires_grad_(False), torch.randn(5, 16), DVLoraLinear
    else:
        base, x, cls = nn.Conv2d(16, 24, 1).requires_grad_(False), torch.randn(2, 16, 6, 5), DVLoraConv2d
    original = {k: v.clone() for k, v in base.state_dict().items()}
    layer = cls(base, r=4, scaling=0.5)
    perturb(layer)
    layer.set_phase(True)
    merged = layer.merge()
    assert type(merged) is type(base) and not any(p.requires_grad for p in merged.parameters())
    torch.testing.assert_close(merged(x), layer(x), atol=1e-5, rtol=1e-5)
    assert all(torch.equal(base.state_dict()[k], v) for k, v in original.items())
    assert (merged(x) - base(x)).abs().max() > 1e-2


# ---- the neck ----------------------------------------------------------------------------------------------------


def _official_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The official channels-first LayerNorm (eps 1e-6), written out."""
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    return weight[:, None, None] * (x - u) / torch.sqrt(s + 1e-6) + bias[:, None, None]


def test_neck_is_zero_at_init_and_matches_the_official_block_in_float64():
    torch.manual_seed(0)
    neck = ConvNeck(32, reduction=8)
    x = torch.randn(2, 32, 5, 6)
    assert torch.equal(neck(x), torch.zeros_like(x))
    assert neck.conv1.bias is None and neck.conv2.kernel_size == (3, 3) and neck.conv3.out_channels == 32
    assert sum(p.numel() for p in neck.parameters()) == conv_neck_parameter_count(32, 8)
    perturb(neck)
    neck.double()
    gelu = nn.functional.gelu
    h = gelu(_official_layer_norm(nn.functional.conv2d(x.double(), neck.conv1.weight), neck.norm1.weight,
                                  neck.norm1.bias))
    h = gelu(_official_layer_norm(nn.functional.conv2d(h, neck.conv2.weight, padding=1), neck.norm2.weight,
                                  neck.norm2.bias))
    expected = _official_layer_norm(nn.functional.conv2d(h, neck.conv3.weight), neck.norm3.weight, neck.norm3.bias)
    torch.testing.assert_close(neck(x.double()), expected, atol=1e-10, rtol=1e-8)


def test_neck_adds_to_patch_tokens_only():
    backbone, x = adapted("dinov2_test")
    blocks = [b for b in backbone.blocks if isinstance(b, NeckedBlock)]
    assert [i for i, b in enumerate(backbone.blocks) if isinstance(b, NeckedBlock)] == [1, 3]
    perturb(blocks[0].adapter)
    captured = {}
    blocks[0].base_layer.register_forward_hook(lambda m, i, o: captured.update(base=o))
    blocks[0].register_forward_hook(lambda m, i, o: captured.update(wrapped=o))
    with torch.no_grad():
        backbone(x)
    p = backbone.num_prefix_tokens
    assert torch.equal(captured["wrapped"][:, :p], captured["base"][:, :p])
    assert (captured["wrapped"][:, p:] - captured["base"][:, p:]).abs().max() > 1e-2


# ---- on backbones ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BACKBONES))
def test_starts_bit_identical_to_the_frozen_backbone(name):
    torch.manual_seed(0)
    backbone = create_backbone(name).eval()
    x = torch.randn(2, 3, 56, 70, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = backbone(x)
        apply_adapter(backbone, DVLoraConfig(**BACKBONES[name]))
        out = backbone(x)
    assert all(torch.equal(a, b) for a, b in zip(plain, out))
    assert sum(isinstance(m, NeckedBlock) for m in backbone.modules()) == len(BACKBONES[name]["neck_blocks"])


@pytest.mark.parametrize("name", list(BACKBONES))
def test_each_phase_trains_its_factors_and_necks_and_nothing_else(name):
    backbone, x = adapted(name)
    upstream = {k: v.clone() for k, v in backbone.state_dict().items() if "lora_" not in k and ".adapter." not in k}
    targets = [torch.randn_like(f) for f in backbone(x)]
    with torch.no_grad():
        start = backbone(x)
    for vectors, kinds in [(False, {"lora_A", "lora_B", "neck"}), (True, {"lora_U", "lora_V", "neck"})]:
        set_dv_lora_phase(backbone, vectors)
        assert trainable_kinds(backbone) == kinds
        frozen_factors = {n: t.clone() for n, t in backbone.named_buffers() if ".lora_" in n}
        optimizer = torch.optim.SGD([p for p in backbone.parameters() if p.requires_grad], lr=0.5)
        backbone.train()
        for _ in range(3):
            optimizer.zero_grad()
            sum(nn.functional.mse_loss(f, t) for f, t in zip(backbone(x), targets)).backward()
            for n, p in backbone.named_parameters():
                assert (p.grad is not None) == p.requires_grad, n
            optimizer.step()
        assert all(torch.equal(dict(backbone.named_buffers())[n], t) for n, t in frozen_factors.items())
    backbone.eval()
    with torch.no_grad():
        end = backbone(x)
    assert max((a - b).abs().max() for a, b in zip(start, end)) > 1e-4
    state = backbone.state_dict()
    assert all(torch.equal(state[k], v) for k, v in upstream.items()), "a frozen backbone tensor changed"


@pytest.mark.parametrize("vector_phase", [False, True])
def test_checkpoint_of_either_phase_restores_the_model(vector_phase):
    backbone, x = adapted("dinov2_test")
    set_dv_lora_phase(backbone, vector_phase)
    perturb(backbone, backbone=True)
    keys = saved_keys(backbone)
    assert sum(f".{n}" in k for k in keys for n in FACTORS) == 4 * 4 * 2  # 4 blocks x fc1, fc2 x 4 factors
    with torch.no_grad():
        reference = backbone(x)
    fresh, _ = adapted("dinov2_test")  # the default (warm-up) phase, different adapter values
    state = backbone.state_dict()
    result = fresh.load_state_dict({k: state[k] for k in keys}, strict=False)
    assert not result.unexpected_keys
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(fresh(x), reference))


@pytest.mark.parametrize("name", list(BACKBONES))
def test_merge_folds_dv_lora_and_keeps_the_necks(name):
    backbone, x = adapted(name)
    config = DVLoraConfig(**BACKBONES[name])
    assert not can_merge(config)
    with pytest.raises(ValueError, match="cannot be folded"):
        merge_adapter(backbone, config)
    with torch.no_grad():
        plain = backbone(x)
    perturb(backbone, scale=0.05, backbone=True)  # as training would, not to a blow-up through 8 blocks
    with torch.no_grad():
        unmerged = backbone(x)
        merge_dv_lora(backbone)
        merged = backbone(x)
    assert not any(isinstance(m, DVLoraLinear) for m in backbone.modules())
    assert all(isinstance(m, AdapterLayer) and isinstance(m, NeckedBlock)
               for m in backbone.modules() if isinstance(m, AdapterLayer))
    assert not any(p.requires_grad for p in backbone.parameters())
    assert max((a - b).abs().max() for a, b in zip(plain, unmerged)) > 1e-3, "the update did nothing"
    for a, b in zip(unmerged, merged):
        torch.testing.assert_close(b, a, atol=1e-5 * max(1.0, a.abs().max().item()), rtol=1e-5)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_parameter_count_is_the_formula(name):
    torch.manual_seed(0)
    backbone = create_backbone(name)
    config = DVLoraConfig(**BACKBONES[name])
    default = ["fc1", "fc2"] if backbone.block_layout == "tokens" else ["conv_pw", "conv_pwl"]
    shapes = [m.weight.shape for n, m in backbone.model.named_modules() if n.rsplit(".", 1)[-1] in default]
    widths = [backbone.blocks[i].mlp.fc2.out_features if backbone.block_layout == "tokens" else
              backbone.blocks[i].conv_pwl.out_channels for i in config.neck_blocks]
    apply_adapter(backbone, config)
    layers = [m for m in backbone.modules() if isinstance(m, DVLoraLinear)]
    assert len(layers) == len(shapes) > 0
    expected_lora = sum(dv_lora_parameter_count(s[1], s[0], config.r) for s in shapes)
    expected_necks = sum(conv_neck_parameter_count(c, config.neck_reduction) for c in widths)
    assert sum(m.num_adapter_parameters() for m in layers) == expected_lora
    necks = sum(p.numel() for m in backbone.modules() if isinstance(m, NeckedBlock) for p in m.adapter.parameters())
    assert necks == expected_necks
    warm_up = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    assert warm_up == sum(config.r * (s[0] + s[1]) for s in shapes) + expected_necks


@pytest.mark.parametrize("size, dim, lora, necks", [
    ("small", 384, 207_456, 234_240),  # 12 x (10 r C + 2 r + 5 C); 4 x (2 C b + 9 b^2 + 4 b + 2 C), b = C / 8
    ("base", 768, 414_816, 929_280),
])
def test_depth_anything_sized_vits_count_as_endodac(size, dim, lora, necks):
    with torch.device("meta"):
        backbone = create_backbone(f"vit_{size}_patch14_dinov2", weights=None)
        apply_adapter(backbone, DVLoraConfig())
    layers = [m for m in backbone.modules() if isinstance(m, DVLoraLinear)]
    assert len(layers) == 24 and {tuple(m.weight.shape) for m in layers} == {(4 * dim, dim), (dim, 4 * dim)}
    assert sum(m.num_adapter_parameters() for m in layers) == lora
    assert sum(p.numel() for m in backbone.modules() if isinstance(m, NeckedBlock)
               for p in m.adapter.parameters()) == necks
    assert [i for i, b in enumerate(backbone.blocks) if isinstance(b, NeckedBlock)] == [2, 5, 8, 11]


def test_vector_phase_follows_the_warm_up_schedule():
    config = DVLoraConfig(warm_up_steps=100)
    assert [dv_lora_vector_phase(config, s) for s in (0, 99, 100, 5000)] == [False, False, True, True]
    assert not dv_lora_vector_phase(DVLoraConfig(vectors=False, warm_up_steps=0), 10)
    backbone, _ = adapted("dinov2_test", warm_up_steps=0)  # no warm-up: the vectors train from the start
    assert trainable_kinds(backbone) == {"lora_U", "lora_V", "neck"}


def test_no_necks_and_plain_lora():
    backbone, x = adapted("efficientnet_lite0_test", neck_blocks=[], vectors=False)
    assert not any(isinstance(m, NeckedBlock) for m in backbone.modules())
    set_dv_lora_phase(backbone, True)
    assert trainable_kinds(backbone) == {"lora_A", "lora_B"}


# ---- errors ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("blocks, match", [([4], r"neck_blocks has \[4\].*4 blocks"), ([-5], r"has \[-5\]"),
                                           ([1, -3], "names a block twice")])
def test_bad_neck_indices(blocks, match):
    with pytest.raises(ValueError, match=match):
        apply_adapter(create_backbone("dinov2_test"), DVLoraConfig(neck_blocks=blocks))


def test_matching_nothing_or_nothing_usable_is_an_error():
    with pytest.raises(ValueError, match=r"target_modules=\['q_proj'\] .*matched no module"):
        apply_adapter(create_backbone("dinov2_test"), DVLoraConfig(neck_blocks=[], target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="matched only other modules"):
        apply_adapter(create_backbone("efficientnet_lite0_test"),
                      DVLoraConfig(neck_blocks=[], target_modules=["conv_dw"]))
    backbone = create_backbone("dinov2_test")
    with pytest.warns(UserWarning, match=r"skips .*norm1"):
        apply_adapter(backbone, DVLoraConfig(neck_blocks=[], target_modules=["fc1", "norm1"]))
    assert sum(isinstance(m, DVLoraLinear) for m in backbone.modules()) == 4


def test_grid_layout_needs_explicit_targets_and_twice_is_refused():
    with pytest.raises(ValueError, match="no default target_modules for 'grid'"):
        apply_adapter(create_backbone("sam_test"), DVLoraConfig(neck_blocks=[]))
    backbone = create_backbone("dinov2_test")
    apply_adapter(backbone, DVLoraConfig(neck_blocks=[0]))
    with warnings.catch_warnings(), pytest.raises(ValueError, match="already has a DV-LoRA"):
        apply_adapter(backbone, DVLoraConfig(neck_blocks=[]))


@pytest.mark.parametrize("kwargs, field", [(dict(r=0), "r"), (dict(lora_alpha=0), "lora_alpha"),
                                           (dict(vectors=1), "vectors"), (dict(warm_up_steps=-1), "warm_up_steps"),
                                           (dict(neck_blocks=[1.5]), "neck_blocks"),
                                           (dict(neck_reduction=0), "neck_reduction")])
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"DVLoraConfig.{field} "):
        DVLoraConfig(**kwargs)
