"""SALT (Elsayed et al., 2025, arXiv:2503.16055): SVD, identity at init, the paper's update, merging, parameter
counts (also on the real SAM ViT-B, built on the meta device), learning, and config errors.

The generic adapter suite (only adapter parameters train, identity at init, frozen state unchanged, merged ==
unmerged) runs on the ``salt-*`` rows of ``CASES`` in test_adapters.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vadapt.adapters import apply_adapter, merge_adapter
from vadapt.adapters.salt import SaltConfig, SaltLinear, salt_parameter_count
from vadapt.backbones import create_backbone

SAM_OFFICIAL_TARGETS = ["attn.qkv", "attn.proj", "mlp.lin1", "mlp.lin2"]


def linear(out_features: int = 24, in_features: int = 40, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(in_features, out_features)
    layer.requires_grad_(False)
    return layer


def perturb(layer: SaltLinear, seed: int = 1) -> None:
    """Move every trainable tensor away from its init (as training would)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.adapter.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (32, 32)])
def test_svd_buffers_reconstruct_the_frozen_weight(shape):
    base = linear(*shape)
    k = min(shape)
    layer = SaltLinear(base, r=k, lora_r=4)  # r = k keeps every singular value in s_top
    assert layer.U.shape == (shape[0], k) and layer.Vh.shape == (k, shape[1]) and layer.s_top.shape == (k,)
    torch.testing.assert_close((layer.U * layer.s_top) @ layer.Vh, base.weight, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.U.T @ layer.U, torch.eye(k), atol=1e-5, rtol=0)
    assert torch.all(layer.s_top[:-1] >= layer.s_top[1:])  # descending: the top-r are the largest
    assert layer.adapter.lora_A is None  # no residual directions left
    # buffers are rebuilt at injection, never saved
    assert not any(k in layer.state_dict() for k in ("U", "Vh", "s_top"))


def test_identity_at_init_is_exact():
    base = linear()
    layer = SaltLinear(base, r=5, lora_r=3)
    x = torch.randn(2, 7, 40)
    assert torch.equal(layer.delta_weight(), torch.zeros(24, 40))
    assert torch.equal(layer(x), base(x))


def test_update_is_the_papers_singular_value_form():
    """W' = U diag(relu(alpha * s_top + beta), s_rest) Vh + c * U_rest (B A) Vh_rest, built densely."""
    base = linear()
    r, lora_r, c = 6, 3, 0.5
    layer = SaltLinear(base, r=r, lora_r=lora_r, lora_scaling=c)
    perturb(layer)
    p = layer.adapter
    u, s, vh = torch.linalg.svd(base.weight.double(), full_matrices=False)
    sigma = torch.diag(torch.cat([F.relu(p.scale.double() * s[:r] + p.shift.double()), s[r:]]))
    sigma[r:, r:] += c * p.lora_B.double() @ p.lora_A.double()
    expected = u @ sigma @ vh  # (out, in)
    adapted = base.weight + layer.delta_weight()
    torch.testing.assert_close(adapted.double(), expected, atol=1e-5, rtol=1e-5)
    x = torch.randn(5, 40)
    torch.testing.assert_close(layer(x), F.linear(x, expected.float(), base.bias), atol=1e-5, rtol=1e-5)


def test_relu_keeps_scaled_singular_values_non_negative():
    base = linear()
    layer = SaltLinear(base, r=4, lora_r=0)
    with torch.no_grad():
        layer.adapter.shift.fill_(-1e3)  # would make the top singular values negative without the ReLU
    u, s, vh = torch.linalg.svd(base.weight, full_matrices=False)
    # the top-4 directions are removed, not flipped
    torch.testing.assert_close(base.weight + layer.delta_weight(), (u[:, 4:] * s[4:]) @ vh[4:], atol=1e-5, rtol=1e-5)


def test_only_scale_shift_and_lora_train():
    base = linear()
    layer = SaltLinear(base, r=5, lora_r=3)
    trainable = {n: p.shape for n, p in layer.named_parameters() if p.requires_grad}
    k = 24  # min(out, in)
    assert trainable == {
        "adapter.scale": (5,), "adapter.shift": (5,), "adapter.lora_A": (3, k - 5), "adapter.lora_B": (k - 5, 3),
    }
    layer(torch.randn(3, 40)).square().sum().backward()
    assert base.weight.grad is None and all(p.grad is not None for p in layer.adapter.parameters())


def test_merged_linear_equals_unmerged_forward():
    base = linear()
    layer = SaltLinear(base, r=5, lora_r=3)
    perturb(layer)
    x = torch.randn(4, 9, 40)
    with torch.no_grad():
        unmerged = layer(x)
        merged = layer.merge()
    assert type(merged) is nn.Linear and not any(p.requires_grad for p in merged.parameters())
    assert (unmerged - base(x)).abs().max() > 1e-3
    torch.testing.assert_close(merged(x), unmerged, atol=1e-5, rtol=1e-5)


def test_merge_adapter_on_a_backbone_folds_scale_shift_and_lora():
    torch.manual_seed(0)
    backbone = create_backbone("sam_test").eval()
    config = SaltConfig(r=8, lora_r=4, target_modules=SAM_OFFICIAL_TARGETS)
    apply_adapter(backbone, config)
    for m in backbone.modules():
        if isinstance(m, SaltLinear):
            perturb(m)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        unmerged = backbone(x)
        merge_adapter(backbone, config)
        merged = backbone(x)
    assert not any(isinstance(m, SaltLinear) for m in backbone.modules())
    assert isinstance(backbone.blocks[0].attn.qkv, nn.Linear)
    for a, b in zip(unmerged, merged):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "out_features, in_features, r, lora_r",
    [(24, 40, 5, 3), (40, 24, 5, 3), (24, 40, 24, 3), (24, 40, 0, 3), (24, 40, 5, 0), (96, 32, 31, 8)],
)
def test_parameter_count_formula_matches_the_module(out_features, in_features, r, lora_r):
    layer = SaltLinear(linear(out_features, in_features), r=r, lora_r=lora_r)
    k = min(out_features, in_features)
    formula = 2 * r + (2 * lora_r * (k - r) if k > r else 0)
    assert layer.num_adapter_parameters() == salt_parameter_count(out_features, in_features, r, lora_r) == formula


def _sam_vit_b_counts(config: SaltConfig) -> tuple[int, int, list[SaltLinear]]:
    with torch.device("meta"):  # shapes only: no weights, no memory, SVD of meta tensors is free
        backbone = create_backbone("sam_vit_b", weights=None)
        total = sum(p.numel() for p in backbone.parameters())
        apply_adapter(backbone, config)
    layers = [m for m in backbone.modules() if isinstance(m, SaltLinear)]
    return total, sum(p.numel() for p in backbone.parameters() if p.requires_grad), layers


def test_trainable_parameters_on_sam_vit_b():
    """SAM ViT-B image encoder (89,670,912 frozen parameters).

    Paper / official README: "only 3.9% trainable parameters" (README table: LoRA r=256 14.08 %, S-SAM 0.40 %,
    SALT 3.90 %); the denominator is not stated and the official SAM (ViT) training script also trains every
    norm, ``pos_embed`` and a text-prompt affine, so the figure is not SALT's own count. The official SAM encoder
    setting (commented out in the released ``image_encoder.py`` / ``common.py``): qkv and proj r=760, lin1 / lin2
    r=50, r_lora=256 everywhere, i.e. per block 2 x (2*760 + 2*256*8) + 2 x (2*50 + 2*256*718).
    """
    official = SaltConfig(r=760, lora_r=256, rank_pattern={"lin1": 50, "lin2": 50}, target_modules=SAM_OFFICIAL_TARGETS)
    total, trainable, layers = _sam_vit_b_counts(official)
    per_block = (
        salt_parameter_count(2304, 768, 760, 256) + salt_parameter_count(768, 768, 760, 256)  # qkv, proj
        + salt_parameter_count(3072, 768, 50, 256) + salt_parameter_count(768, 3072, 50, 256)  # lin1, lin2
    )
    assert total == 89_670_912 and len(layers) == 48
    assert per_block == 2 * 5_616 + 2 * 367_716
    assert trainable == 12 * per_block == 8_959_968 == sum(m.num_adapter_parameters() for m in layers)
    print(f"SALT on SAM ViT-B, official SAM setting: {trainable:,} = {100 * trainable / total:.2f} % (paper: 3.9 %)")

    # vadapt's default: the backbone's lora_targets (qkv), r = int(0.1 * 768) = 76, lora_r = 256
    total, trainable, layers = _sam_vit_b_counts(SaltConfig())
    assert len(layers) == 12 and {m.r for m in layers} == {76}
    assert trainable == 12 * (2 * 76 + 2 * 256 * (768 - 76)) == 4_253_472
    print(f"SALT on SAM ViT-B, default (qkv, r=76, lora_r=256): {trainable:,} = {100 * trainable / total:.2f} %")


def test_training_a_tiny_sam_lowers_the_loss_and_moves_every_part():
    torch.manual_seed(0)
    backbone = create_backbone("sam_test")
    apply_adapter(backbone, SaltConfig(r=8, lora_r=4, target_modules=SAM_OFFICIAL_TARGETS))
    frozen = {k: v.clone() for k, v in backbone.state_dict().items() if ".adapter." not in k}
    params = [p for p in backbone.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        target = torch.randn_like(backbone(x)[-1])
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    backbone.train()
    losses = []
    for _ in range(10):
        loss = F.mse_loss(backbone(x)[-1], target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.95 * losses[0], losses
    assert all(not torch.equal(p, s) for p, s in zip(params, start))  # scale, shift, A and B all learn
    for k, v in backbone.state_dict().items():
        if k in frozen:
            assert torch.equal(v, frozen[k]), k


def test_non_linear_matches_are_skipped_with_a_warning_and_conv_only_is_an_error():
    backbone = create_backbone("sam_test")
    with pytest.warns(UserWarning, match="patch_embed.proj"):  # suffix "proj" also matches the patch conv
        apply_adapter(backbone, SaltConfig(r=4, lora_r=2, target_modules=["proj"]))
    assert sum(isinstance(m, SaltLinear) for m in backbone.modules()) == 2  # the two attn.proj
    with pytest.raises(ValueError, match="nn.Linear"):
        apply_adapter(create_backbone("sam_test"), SaltConfig(target_modules=["patch_embed.proj"]))


def test_rank_larger_than_the_matrix_names_the_module():
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv.*min\(out, in\)=32"):
        apply_adapter(create_backbone("sam_test"), SaltConfig(r=33, lora_r=2))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(r=-1), "SaltConfig.r"),
        (dict(r=2.5), "SaltConfig.r"),
        (dict(r_ratio=0.0), "r_ratio"),
        (dict(lora_r=-2), "lora_r"),
        (dict(lora_alpha=0.0), "lora_alpha"),
        (dict(r=0, lora_r=0), "nothing would train"),
        (dict(rank_pattern={"lin1": -3}), "rank_pattern"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SaltConfig(**kwargs)


def test_rank_pattern_and_lora_scaling():
    config = SaltConfig(r=10, lora_r=4, lora_alpha=8, rank_pattern={"lin1": 3})
    assert config.rank_for("blocks.0.mlp.lin1", 32) == 3 and config.rank_for("blocks.0.attn.qkv", 32) == 10
    assert config.lora_scaling == 2.0 and SaltConfig().lora_scaling == 1.0
    assert SaltConfig().rank_for("qkv", 768) == 76
