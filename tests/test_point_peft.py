"""Point-PEFT (Tang et al., AAAI 2024) on a tiny Point-MAE: config, shapes, freezing, prior bank, training."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from vadapt.adapters.point_peft import (
    PointPEFTConfig,
    PointPEFTShared,
    inject_point_peft,
    point_prior_features,
)
from vadapt.backbones.point_mae import PointBackbone

TINY = dict(embed_dim=32, depth=2, num_heads=2, num_group=16, group_size=8, encoder_hidden=(16, 32, 64),
            pos_hidden=16, head_hidden=16)
SMALL = dict(prompt_tokens=5, prompt_blocks=1, adapter_dim=4, prior_adapter_dim=4, geo_k=4, geo_heads=2,
             geo_attn_dim=8)


def frozen(seed: int = 0) -> PointBackbone:
    torch.manual_seed(seed)
    backbone = PointBackbone(**TINY)
    backbone.freeze()
    return backbone.eval()


def adapted(seed: int = 0, **kwargs) -> PointBackbone:
    backbone = frozen(seed)
    inject_point_peft(backbone, PointPEFTConfig(**{**SMALL, **kwargs}))
    return backbone


def clouds(batch: int = 3, n: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, n, 3, generator=torch.Generator().manual_seed(seed))


def shared_of(backbone: PointBackbone) -> PointPEFTShared:
    return backbone.point_peft


# ---- config ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("prompt_tokens", 2), ("prompt_blocks", -1), ("adapter_dim", 0), ("prior_adapter_dim", 0), ("geo_k", 0),
    ("geo_heads", 0), ("prompt_dropout", 1.0), ("adapter_dropout", -0.1), ("geo_group_ratio", 0.0),
    ("geo_attn_dim", 7), ("target_modules", ["mlp"]),
])
def test_config_errors_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        PointPEFTConfig(**{field: value})


def test_official_defaults() -> None:
    cfg = PointPEFTConfig()
    official = (10, 6, 16, 0.7, 8)
    assert (cfg.prompt_tokens, cfg.prompt_blocks, cfg.adapter_dim, cfg.adapter_scale, cfg.prior_topk) == official
    assert (cfg.geo_k, cfg.geo_group_ratio, cfg.geo_heads, cfg.geo_attn_dim) == (16, 0.5, 6, 18)


def test_injection_errors() -> None:
    with pytest.raises(ValueError, match="prompt_blocks"):
        adapted(prompt_blocks=3)
    backbone = adapted()
    with pytest.raises(ValueError, match="already has Point-PEFT"):
        inject_point_peft(backbone, PointPEFTConfig(**SMALL))
    with pytest.raises(ValueError, match="geo_k"):
        adapted(geo_k=17)(clouds())


# ---- structure, shapes, init -----------------------------------------------------------------------------------


def test_shapes_and_prompted_blocks() -> None:
    backbone = adapted(prompt_blocks=1)
    tokens = backbone.forward_features(clouds(batch=2))
    assert tokens.shape == (2, 1 + 16, 32)
    assert backbone.pool(tokens).shape == (2, 64)
    assert backbone.blocks[0].prompt.shape == (5, 32) and backbone.blocks[1].prompt is None
    ctx = shared_of(backbone).context
    assert ctx.sub_idx.shape == (2, 8) and ctx.group_idx.shape == (2, 8, 4) and ctx.idw.shape == (2, 16, 8)
    torch.testing.assert_close(ctx.idw.sum(-1), torch.ones(2, 16))


def test_official_init_is_not_identity_but_adapters_are_pure_add_ons() -> None:
    """The official adapters are Xavier-initialised (no zero init), so the adapted output differs at start;
    with no prompts, zero scales and zeroed post-adapter up-projections it equals the frozen output exactly."""
    points = clouds()
    reference = frozen().forward_features(points)
    assert not torch.allclose(adapted().forward_features(points), reference)
    backbone = adapted(prompt_blocks=0, adapter_scale=0.0, geo_prop_scale=0.0)
    with torch.no_grad():
        for block in backbone.blocks:
            block.post_adapter.up.weight.zero_()
            block.post_adapter.up.bias.zero_()
    torch.testing.assert_close(backbone.forward_features(points), reference, rtol=0, atol=0)


def test_disabled_is_the_frozen_backbone() -> None:
    points = clouds()
    backbone = adapted()
    with shared_of(backbone).disabled():
        out = backbone.forward_features(points)
    torch.testing.assert_close(out, frozen().forward_features(points), rtol=0, atol=0)


# ---- training: gradients, frozen backbone, loss ----------------------------------------------------------------


def _adapter_names(backbone: nn.Module) -> set[str]:
    keys = ("point_peft.", "prompt", "adapter.", "post_adapter.", "prior_adapter.", "out_transform.")
    return {n for n, _ in backbone.named_parameters() if any(k in n for k in keys)}


def test_only_adapters_get_gradients_and_backbone_stays_bit_identical() -> None:
    backbone = adapted(prompt_blocks=2)
    backbone.point_peft.build_prior_bank(torch.randn(6, 32), torch.arange(6))
    backbone.train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()
              if not k.startswith("point_peft.") and not any(s in k for s in _ADAPTER_KEYS)}
    trainable = [p for p in backbone.parameters() if p.requires_grad]
    assert {n for n, p in backbone.named_parameters() if p.requires_grad} == _adapter_names(backbone)
    opt = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.05)
    for step in range(2):
        opt.zero_grad()
        backbone.pool(backbone.forward_features(clouds(batch=2, n=32, seed=step))).square().mean().backward()
        for name, p in backbone.named_parameters():
            assert (p.grad is not None) == p.requires_grad, name
        opt.step()
    after = backbone.state_dict()
    assert before and all(torch.equal(v, after[k]) for k, v in before.items())


_ADAPTER_KEYS = ("prompt", ".adapter.", "post_adapter.", "prior_adapter.", "out_transform.")


def test_every_adapter_part_gets_a_gradient() -> None:
    backbone = adapted(prompt_blocks=1, prompt_dropout=0.0)
    backbone.point_peft.build_prior_bank(torch.randn(6, 32), torch.arange(6))
    backbone.train()
    backbone.pool(backbone.forward_features(clouds())).sum().backward()
    for name, p in backbone.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def _sphere_or_cube(label: int, n: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    if label == 1:  # cube surface: scale each direction onto the max-norm unit ball
        v /= np.abs(v).max(axis=1, keepdims=True)
    return v.astype(np.float32)


def test_tiny_training_lowers_the_loss() -> None:
    rng = np.random.default_rng(0)
    labels = torch.tensor([0, 1] * 3)
    points = torch.from_numpy(np.stack([_sphere_or_cube(int(y), 32, rng) for y in labels]))
    backbone = adapted(prompt_blocks=1, prompt_dropout=0.0, adapter_dropout=0.0)
    backbone.point_peft.build_prior_bank(point_prior_features(backbone, points), labels)
    torch.manual_seed(0)
    head = nn.Linear(64, 2)
    params = [p for p in backbone.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=3e-3)
    backbone.train()
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(head(backbone.pool(backbone.forward_features(points))), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


# ---- point-prior bank --------------------------------------------------------------------------------------------


def test_retrieval_equals_brute_force() -> None:
    backbone = adapted(prompt_tokens=6)  # k = 4
    bank = torch.randn(20, 32, generator=torch.Generator().manual_seed(3))
    shared_of(backbone).build_prior_bank(bank, torch.arange(20) % 3)
    query = torch.randn(5, 32, generator=torch.Generator().manual_seed(4))
    got = shared_of(backbone).retrieve(query)
    b, q = bank.double().numpy(), query.double().numpy()
    for i in range(5):
        cos = [float(q[i] @ b[j] / (np.linalg.norm(q[i]) * np.linalg.norm(b[j]))) for j in range(20)]
        order = sorted(range(20), key=lambda j: -cos[j])[:4]
        w = np.exp([cos[j] for j in order])
        w /= w.sum()
        assert got.indices[i].tolist() == order
        np.testing.assert_allclose(got.similarity[i].numpy(), [cos[j] for j in order], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.weights[i].numpy(), w, rtol=1e-5, atol=1e-6)
        fused = sum(wj * b[j] for wj, j in zip(w, order))
        expected = np.stack([q[i], fused] + [b[j] for j in order])
        np.testing.assert_allclose(got.tokens[i].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_forward_query_is_point_prior_features_and_bank_changes_output() -> None:
    points = clouds()
    backbone = adapted()
    empty = backbone.forward_features(points)
    feats = point_prior_features(backbone, points)
    assert feats.shape == (3, 32)
    shared_of(backbone).build_prior_bank(torch.cat([feats, torch.randn(4, 32)]), torch.arange(7))
    filled = backbone.forward_features(points)
    prior = shared_of(backbone).context.prior
    torch.testing.assert_close(prior.query, feats)
    assert prior.indices[:, 0].tolist() == [0, 1, 2]  # each cloud finds itself first
    assert not torch.allclose(filled, empty)
    shared_of(backbone).clear_prior_bank()
    torch.testing.assert_close(backbone.forward_features(points), empty, rtol=0, atol=0)


def test_empty_bank_is_a_no_op() -> None:
    points = clouds()
    backbone = adapted()
    out = backbone.forward_features(points)
    assert shared_of(backbone).context.prior is None
    with torch.no_grad():
        for p in backbone.blocks[0].prior_adapter.parameters():
            p.add_(1.0)
    torch.testing.assert_close(backbone.forward_features(points), out, rtol=0, atol=0)


def test_bank_errors_and_state_dict_round_trip() -> None:
    backbone = adapted()
    shared = shared_of(backbone)
    with pytest.raises(ValueError, match="features must be"):
        shared.build_prior_bank(torch.randn(5, 31), torch.arange(5))
    with pytest.raises(ValueError, match="labels must be"):
        shared.build_prior_bank(torch.randn(5, 32), torch.arange(4))
    with pytest.raises(ValueError, match="at least"):
        shared.build_prior_bank(torch.randn(2, 32), torch.arange(2))
    shared.build_prior_bank(torch.randn(9, 32), torch.arange(9))
    fresh = adapted(seed=5)
    fresh.load_state_dict(backbone.state_dict())
    assert torch.equal(fresh.point_peft.bank_features, shared.bank_features)
    assert torch.equal(fresh.point_peft.bank_labels, shared.bank_labels)
    points = clouds()
    torch.testing.assert_close(fresh.forward_features(points), backbone.forward_features(points))
    clone = copy.deepcopy(backbone)
    assert clone.point_peft.backbone is clone and clone.blocks[0].shared is clone.point_peft


# ---- parameter count at real size ------------------------------------------------------------------------------


def _official_head(num_classes: int) -> int:
    return (768 * 256 + 256) + 512 + (256 * 256 + 256) + 512 + (256 * num_classes + num_classes)


@pytest.mark.parametrize("tune_bias, expected", [(False, 672_319), (True, 710_719)])
def test_real_size_trainable_count(tune_bias: bool, expected: int) -> None:
    """Official 773,017 (15 classes) = ours 710,719 (tune_backbone_bias) + 62,298 official parameters that
    never reach the output (prior adapters 39,216 and prompts 23,040 of blocks 6-11, 12 ad_gate, 30 prompt_cor)."""
    with torch.device("meta"):
        backbone = PointBackbone(num_group=128)
    backbone.freeze()
    inject_point_peft(backbone, PointPEFTConfig(tune_backbone_bias=tune_bias))
    trainable = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    assert trainable + _official_head(15) == expected
    assert expected + (0 if tune_bias else 38_400) + 62_298 == 773_017
