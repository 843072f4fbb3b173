"""QV-DoRA (MapSAM, arXiv:2411.06971; DoRA, arXiv:2402.09353): DoRA on the q / v row blocks of a fused qkv
Linear. The k output is the frozen layer's bit for bit, identity at init, the update equals peft's DoRA on the
same rows, merging, parameter counts (also on the real SAM ViT-B, built on the meta device), learning, errors.

The generic adapter suite (only adapter parameters train, identity at init, frozen state unchanged, merged ==
unmerged) runs on the ``qv_dora-*`` rows of ``CASES`` in test_adapters.py (SAM and SAM 2 Hiera, whose
stage-transition blocks widen ``qkv`` from ``dim`` to ``3 * 2 dim``).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vadapt.adapters import apply_adapter, merge_adapter
from vadapt.adapters.qv_dora import QVDoraConfig, QVDoraLinear, qv_dora_parameter_count
from vadapt.backbones import create_backbone

D_IN, D_OUT = 20, 12  # a widening fused qkv, (3 * 12, 20), as in Hiera's stage-transition blocks


def fused(d_out: int = D_OUT, d_in: int = D_IN, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(d_in, 3 * d_out)
    layer.requires_grad_(False)
    return layer


def perturb(layer: QVDoraLinear, seed: int = 1) -> None:
    """Move every trainable tensor away from its init (as training would)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.adapter.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))


def split(y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return y.split(y.shape[-1] // 3, dim=-1)


@pytest.mark.parametrize("shape", [(D_OUT, D_IN), (16, 16)])
@pytest.mark.parametrize("use_dora", [True, False])
def test_k_output_is_the_frozen_layers_bit_for_bit_and_q_v_change(shape, use_dora):
    base = fused(*shape)
    layer = QVDoraLinear(base, r=3, scaling=2.0, use_dora=use_dora)
    x = torch.randn(2, 5, shape[1])
    for seed in range(3):  # any trained values of A, B and m
        perturb(layer, seed)
        q, k, v = split(layer(x))
        q0, k0, v0 = split(base(x))
        assert torch.equal(k, k0)
        assert (q - q0).abs().max() > 1e-2 and (v - v0).abs().max() > 1e-2


def test_q_and_v_change_once_b_is_nonzero():
    base = fused()
    layer = QVDoraLinear(base, r=4)
    x = torch.randn(3, D_IN)
    with torch.no_grad():
        layer.adapter.lora_A["q"].normal_()  # A alone does nothing while B is zero
        assert torch.equal(layer(x), base(x))
        layer.adapter.lora_B["v"].normal_(std=0.1)
        q, k, v = split(layer(x))
    q0, k0, v0 = split(base(x))
    assert torch.equal(q, q0) and torch.equal(k, k0) and not torch.allclose(v, v0, atol=1e-3)


@pytest.mark.parametrize("use_dora", [True, False])
def test_identity_at_init_is_exact(use_dora):
    base = fused()
    layer = QVDoraLinear(base, r=4, use_dora=use_dora)
    x = torch.randn(2, 7, D_IN)
    assert torch.equal(layer(x), base(x))
    assert torch.equal(layer.adapted_weight(), base.weight)
    if use_dora:  # m starts at the row norms of W_q / W_v
        torch.testing.assert_close(layer.adapter.lora_magnitude["v"], base.weight[-D_OUT:].norm(dim=1))


def test_only_a_b_and_m_train():
    base = fused()
    layer = QVDoraLinear(base, r=4)
    trainable = {n: tuple(p.shape) for n, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {
        "adapter.lora_A.q": (4, D_IN), "adapter.lora_A.v": (4, D_IN),
        "adapter.lora_B.q": (D_OUT, 4), "adapter.lora_B.v": (D_OUT, 4),
        "adapter.lora_magnitude.q": (D_OUT,), "adapter.lora_magnitude.v": (D_OUT,),
    }
    assert not any(p.requires_grad for p in base.parameters())
    assert set(layer.state_dict()) == {"base_layer.weight", "base_layer.bias"} | set(trainable)


def test_update_is_standard_dora_per_output_row():
    """W_s' = m_s * (W_s + c B_s A_s) / ||W_s + c B_s A_s|| (row norms), k rows and bias untouched."""
    base = fused()
    layer = QVDoraLinear(base, r=2, scaling=0.5)
    perturb(layer)
    p = layer.adapter
    rows = dict(zip("qkv", base.weight.split(D_OUT)))
    expected = []
    for s in "qkv":
        if s == "k":
            expected.append(rows[s])
            continue
        direction = rows[s] + 0.5 * p.lora_B[s] @ p.lora_A[s]
        expected.append(p.lora_magnitude[s][:, None] * direction / direction.norm(dim=1, keepdim=True))
    weight = torch.cat(expected)
    x = torch.randn(4, D_IN)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x @ weight.T + base.bias, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer.adapted_weight(), weight, atol=1e-6, rtol=1e-6)


def test_matches_peft_dora_on_the_same_rows_values_and_gradients():
    """Each slice is peft's DoRA Linear on those rows: same output and same gradients (norm detached)."""
    import peft

    base = fused()
    layer = QVDoraLinear(base, r=3, scaling=2.0)
    perturb(layer)
    x = torch.randn(2, 5, D_IN)
    out = layer(x)
    out.square().sum().backward()
    for i, s in ((0, "q"), (2, "v")):
        holder = nn.Module()
        holder.lin = nn.Linear(D_IN, D_OUT)
        with torch.no_grad():
            holder.lin.weight.copy_(base.weight[i * D_OUT:(i + 1) * D_OUT])
            holder.lin.bias.copy_(base.bias[i * D_OUT:(i + 1) * D_OUT])
        holder.lin.requires_grad_(False)
        config = peft.LoraConfig(r=3, lora_alpha=6, use_dora=True, target_modules=["lin"])
        peft.inject_adapter_in_model(config, holder)
        lin = holder.lin
        ours = {"A": layer.adapter.lora_A[s], "B": layer.adapter.lora_B[s], "m": layer.adapter.lora_magnitude[s]}
        theirs = {"A": lin.lora_A["default"].weight, "B": lin.lora_B["default"].weight,
                  "m": lin.lora_magnitude_vector["default"].weight}
        with torch.no_grad():
            for key in ours:
                theirs[key].copy_(ours[key])
        reference = lin(x)
        torch.testing.assert_close(split(out)[i], reference, atol=1e-5, rtol=1e-5)
        # same loss contribution: sum of squares of this slice
        reference.square().sum().backward()
        for key in ours:
            torch.testing.assert_close(ours[key].grad, theirs[key].grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("use_dora", [True, False])
def test_merged_equals_unmerged_and_keeps_k_rows(use_dora):
    base = fused()
    layer = QVDoraLinear(base, r=4, use_dora=use_dora)
    perturb(layer)
    merged = layer.merge()
    x = torch.randn(2, 6, D_IN)
    assert type(merged) is nn.Linear and not any(p.requires_grad for p in merged.parameters())
    assert torch.equal(merged.weight[D_OUT:2 * D_OUT], base.weight[D_OUT:2 * D_OUT])
    assert torch.equal(merged.bias, base.bias)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), layer(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "slices, use_dora", [(("q", "v"), True), (("q", "v"), False), (("k",), True), (("q", "k", "v"), True)]
)
def test_trainable_count_per_layer(slices, use_dora):
    layer = QVDoraLinear(fused(), r=4, slices=slices, use_dora=use_dora)
    per_slice = 4 * (D_IN + D_OUT) + (D_OUT if use_dora else 0)
    assert layer.num_adapter_parameters() == len(slices) * per_slice
    assert qv_dora_parameter_count(D_OUT, D_IN, 4, len(slices), use_dora) == len(slices) * per_slice


def test_sam_vit_b_parameter_count_is_mapsams():
    """MapSAM on SAM ViT-B: 12 blocks x 2 slices x (4 * (768 + 768) + 768) = 165,888 trainable parameters."""
    with torch.device("meta"):
        backbone = create_backbone("sam_vit_b", weights=None)
        apply_adapter(backbone, QVDoraConfig())
    wrapped = [m for m in backbone.modules() if isinstance(m, QVDoraLinear)]
    trainable = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    assert len(wrapped) == 12 and all(m.d_out == m.d_in == 768 for m in wrapped)
    assert trainable == 12 * 2 * (4 * (768 + 768) + 768) == 165_888
    assert trainable == 12 * qv_dora_parameter_count(768, 768, 4)


def test_short_training_run_on_sam_lowers_the_loss_and_keeps_k():
    torch.manual_seed(0)
    backbone = create_backbone("sam_test")
    apply_adapter(backbone, QVDoraConfig())
    layers = [m for m in backbone.modules() if isinstance(m, QVDoraLinear)]
    assert len(layers) == 2
    before = {n: p.detach().clone() for n, p in backbone.named_parameters() if p.requires_grad}
    assert all(any(part in n for part in ("lora_A", "lora_B", "lora_magnitude")) for n in before)
    head = nn.Conv2d(backbone.out_channels[-1], 2, 1)
    optimizer = torch.optim.AdamW([p for p in backbone.parameters() if p.requires_grad] + list(head.parameters()),
                                  lr=1e-2)
    x = torch.randn(2, 3, 64, 64)
    target = torch.randint(0, 2, (2, 4, 4))
    backbone.train()
    losses = []
    for _ in range(6):
        loss = nn.functional.cross_entropy(head(backbone(x)[-1]), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(not torch.equal(p, before[n]) for n, p in backbone.named_parameters() if p.requires_grad)
    tokens = torch.randn(2, 4, 4, 32)
    with torch.no_grad():
        for layer in layers:
            assert torch.equal(split(layer(tokens))[1], split(layer.base_layer(tokens))[1])
        unmerged = backbone(x)
        merge_adapter(backbone, QVDoraConfig())
        torch.testing.assert_close(backbone(x)[-1], unmerged[-1], atol=1e-5, rtol=1e-5)
    assert not any(isinstance(m, QVDoraLinear) for m in backbone.modules())


def test_slices_are_kept_in_qkv_order_and_alpha_defaults_to_scale_one():
    config = QVDoraConfig(slices=["v", "q"])
    assert config.slices == ("q", "v") and config.scaling == 1.0
    assert QVDoraConfig(r=4, lora_alpha=8).scaling == 2.0


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"r": 0}, "QVDoraConfig.r"),
        ({"r": 2.5}, "QVDoraConfig.r"),
        ({"lora_alpha": 0}, "QVDoraConfig.lora_alpha"),
        ({"slices": ("q", "x")}, "QVDoraConfig.slices"),
        ({"slices": ()}, "QVDoraConfig.slices"),
        ({"slices": ("q", "q")}, "QVDoraConfig.slices"),
        ({"slices": "qv"}, "QVDoraConfig.slices"),
        ({"use_dora": "yes"}, "QVDoraConfig.use_dora"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        QVDoraConfig(**kwargs)


def test_non_fused_linear_is_an_error_naming_module_and_shape():
    with pytest.raises(ValueError, match=r"divisible by 3.*\(10, 8\)"):
        QVDoraLinear(nn.Linear(8, 10))
    backbone = create_backbone("sam_test")  # mlp.lin1 is (128, 32): 128 is not divisible by 3
    with pytest.raises(ValueError, match=r"sam_test\.blocks\.0\.mlp\.lin1.*\(128, 32\)"):
        apply_adapter(backbone, QVDoraConfig(target_modules=["qkv", "lin1"]))


def test_non_linear_targets_are_skipped_with_a_warning():
    backbone = create_backbone("sam_test")
    with pytest.warns(UserWarning, match="not nn.Linear"):
        apply_adapter(backbone, QVDoraConfig(target_modules=["qkv", "patch_embed.proj"]))
    assert sum(isinstance(m, QVDoraLinear) for m in backbone.modules()) == 2
    with pytest.raises(ValueError, match="matched only other modules"):
        apply_adapter(create_backbone("sam_test"), QVDoraConfig(target_modules=["patch_embed.proj"]))


def test_autocast_keeps_the_frozen_layers_dtype():
    base = fused()
    layer = QVDoraLinear(base)
    perturb(layer)
    x = torch.randn(2, D_IN)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, frozen = layer(x), base(x)
    assert out.dtype == frozen.dtype == torch.bfloat16
    assert torch.equal(split(out)[1], split(frozen)[1])
