"""IDPT (Zha et al., ICCV 2023): DGCNN prompt module, insertion before the last Point-MAE block, pooling,
parameter counts against the official code, frozen backbone, gradients and a tiny training run."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from vadapt.adapters import apply_adapter
from vadapt.adapters.base import ADAPTERS
from vadapt.adapters.idpt import DGCNNPrompt, IDPTBlock, IDPTConfig
from vadapt.adapters.idpt.layer import edge_features, feature_knn
from vadapt.backbones import create_backbone

C, G = 32, 16  # point_mae_test: embed_dim 32, 16 patch tokens of 8 points, 2 blocks


def tiny_idpt(**config) -> nn.Module:
    backbone = create_backbone("point_mae_test")
    apply_adapter(backbone, IDPTConfig(**{"k": 8, **config}))
    return backbone


def official_head(in_dim: int, num_classes: int, hidden: int = 256) -> nn.Sequential:
    """The official ``cls_head_finetune`` (``cls_type: all`` -> input ``3C``)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(hidden, num_classes),
    )


def count(params) -> int:
    return sum(p.numel() for p in params)


# ---- config and registry ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"k": 0}, "k"), ({"k": 2.5}, "k"), ({"prompt_block": "last"}, "prompt_block"),
     ({"edgeconv_dims": []}, "edgeconv_dims"), ({"edgeconv_dims": [64, 0]}, "edgeconv_dims"),
     ({"negative_slope": -0.1}, "negative_slope"), ({"target_modules": ["mlp"]}, "prompt_block")],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        IDPTConfig(**kwargs)


def test_registered_with_defaults_of_the_official_code():
    assert ADAPTERS.get("idpt").config_class is IDPTConfig
    cfg = IDPTConfig()
    assert (cfg.k, cfg.prompt_block, cfg.edgeconv_dims, cfg.negative_slope) == (20, -1, None, 0.2)
    assert cfg.train_cls_tokens and not cfg.train_prompt_pos


# ---- parameter counts -----------------------------------------------------------------------------------


def test_real_size_parameter_counts_match_the_official_model():
    """Official ScanObjectNN config (G = 128, 15 classes): 1,696,783 trainable parameters =
    DGCNN prompt module 1,330,176 + head (1152 -> 256 -> 256 -> 15, two BN) 365,839 + cls_token, cls_pos 768
    (``only_new`` trains names with "cls"; ``prompt_pos`` is not among them)."""
    backbone = create_backbone("point_mae", num_group=128)
    frozen = count(backbone.parameters())
    apply_adapter(backbone, IDPTConfig())
    block = backbone.blocks[-1]
    assert isinstance(block, IDPTBlock) and len(block.prompt.edge_convs) == 3
    assert count(block.prompt.parameters()) == 1_330_176
    assert "prompt_pos" in dict(block.named_buffers()) and block.prompt_pos.shape == (1, 1, 384)
    adapter = count(p for p in backbone.parameters() if p.requires_grad)
    assert adapter == 1_330_176 + 2 * 384
    assert count(p for p in backbone.parameters() if not p.requires_grad) == frozen - 2 * 384
    head = official_head((backbone.num_prefix_tokens + 1) * backbone.embed_dim, 15)
    assert count(head.parameters()) == 365_839
    assert adapter + count(head.parameters()) == 1_696_783
    # the options: prompt module alone, or with a learned prompt position
    assert count(DGCNNPrompt(384).parameters()) == 1_330_176
    trainable = tiny_idpt(train_cls_tokens=False, train_prompt_pos=True)
    names = {n for n, p in trainable.named_parameters() if p.requires_grad}
    assert "model.blocks.blocks.1.prompt_pos" in names and not any("cls" in n for n in names)


# ---- the prompt module ------------------------------------------------------------------------------------


def test_edge_features_and_feature_space_knn_match_a_loop():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7)  # (B, D, N)
    idx = feature_knn(x, 3)
    assert idx.shape == (2, 7, 3) and (idx[..., 0] == torch.arange(7)).all()  # a token is its own nearest
    for b in range(2):
        dist = torch.cdist(x[b].T, x[b].T)
        for i in range(7):
            assert set(idx[b, i].tolist()) == set(dist[i].argsort()[:3].tolist())
    feats = edge_features(x, idx)  # (B, 2D, N, k)
    assert feats.shape == (2, 10, 7, 3)
    for b, i, j in [(0, 0, 1), (1, 6, 2), (1, 3, 0)]:
        nb = idx[b, i, j]
        torch.testing.assert_close(feats[b, :, i, j], torch.cat([x[b, :, nb] - x[b, :, i], x[b, :, i]]))


def test_prompt_module_shapes_and_too_large_k():
    module = DGCNNPrompt(C, k=4, edgeconv_dims=[16, 24]).eval()
    assert module(torch.randn(3, 10, C)).shape == (3, 1, C)
    assert module.fuse.conv.in_channels == 40
    with pytest.raises(ValueError, match="k=4"):
        module(torch.randn(3, 3, C))
    with pytest.raises(ValueError, match="k=20 exceeds the 16 patch tokens"):
        tiny_idpt(k=20)


# ---- injection --------------------------------------------------------------------------------------------


def test_shapes_prefix_and_pool_read_cls_prompt_max():
    backbone = tiny_idpt().eval()
    assert backbone.num_prefix_tokens == 2
    with torch.no_grad():
        tokens = backbone.forward_features(torch.randn(3, 64, 3))
        pooled = backbone.pool(tokens)
        assert tokens.shape == (3, 2 + G, C) and pooled.shape == (3, 3 * C)
        torch.testing.assert_close(pooled, torch.cat([tokens[:, 0], tokens[:, 1], tokens[:, 2:].amax(1)], -1))
        torch.testing.assert_close(backbone(torch.randn(3, 64, 3)).shape, torch.Size([3, 3 * C]))


def test_forward_equals_the_official_prompt_layer():
    """Re-run the official ``TransformerPromptEncoderLayerI`` order by hand with the same modules."""
    torch.manual_seed(0)
    backbone = tiny_idpt().eval()
    wrapped = backbone.blocks[-1]
    points = torch.randn(2, 64, 3)
    with torch.no_grad():
        ours = backbone.forward_features(points)
        centres, neighbourhoods = backbone.group(points)
        x = backbone.tokenize(neighbourhoods)
        x = torch.cat([backbone.cls_token.expand(2, -1, -1), x], 1)
        pos = torch.cat([backbone.cls_pos.expand(2, -1, -1), backbone.pos_embed(centres)], 1)
        for block in list(backbone.blocks)[:-1]:
            x = block(x + pos)
        prompt = wrapped.prompt(x[:, -G:])  # the residual stream, without positions
        x = torch.cat([x[:, :1], prompt, x[:, -G:]], 1)
        pos = torch.cat([pos[:, :1], wrapped.prompt_pos.expand(2, -1, -1), pos[:, -G:]], 1)
        reference = backbone.norm(wrapped.base_layer(x + pos))
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_only_the_last_block_unheaded_backbones_and_one_injection():
    with pytest.raises(ValueError, match="prompt_block=0"):
        tiny_idpt(prompt_block=0)
    with pytest.raises(ValueError, match="prompt_block=5"):
        tiny_idpt(prompt_block=5)
    assert isinstance(tiny_idpt(prompt_block=1).blocks[1], IDPTBlock)
    with pytest.raises(ValueError, match="num_classes=0"):
        apply_adapter(create_backbone("point_mae_test", num_classes=4), IDPTConfig(k=8))
    with pytest.raises(ValueError, match="already"):
        apply_adapter(tiny_idpt(), IDPTConfig(k=8))


def test_deepcopy_and_a_rebuilt_model_reproduce_the_outputs():
    torch.manual_seed(0)
    backbone = tiny_idpt().eval()
    clone = copy.deepcopy(backbone)
    assert clone.blocks[-1].positions.backbone is clone
    points = torch.randn(2, 64, 3)
    with torch.no_grad():
        torch.testing.assert_close(clone.pool(clone.forward_features(points)),
                                   backbone.pool(backbone.forward_features(points)))
    # adapter checkpoints keep trainable weights only: the fixed prompt position must come back the same
    torch.testing.assert_close(tiny_idpt().blocks[-1].prompt_pos, backbone.blocks[-1].prompt_pos)


# ---- training ---------------------------------------------------------------------------------------------


def sphere_or_cube(n: int, points: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` clouds ``(n, points, 3)`` on a unit sphere (label 0) or a cube surface (label 1), randomly scaled."""
    labels = np.arange(n) % 2
    clouds = []
    for label in labels:
        p = rng.normal(size=(points, 3))
        if label == 0:
            p /= np.linalg.norm(p, axis=1, keepdims=True)
        else:
            p = rng.uniform(-1, 1, size=(points, 3))
            axis = rng.integers(0, 3, size=points)
            p[np.arange(points), axis] = rng.choice([-1.0, 1.0], size=points)
        clouds.append(p * rng.uniform(0.7, 1.0))
    return torch.tensor(np.stack(clouds), dtype=torch.float32), torch.tensor(labels)


@pytest.mark.parametrize("train_cls_tokens", [True, False])
def test_training_lowers_the_loss_only_the_adapter_learns_and_the_backbone_stays_bit_identical(train_cls_tokens):
    torch.manual_seed(0)
    backbone = create_backbone("point_mae_test")
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    apply_adapter(backbone, IDPTConfig(k=8, train_cls_tokens=train_cls_tokens))
    last = len(backbone.blocks) - 1
    assert backbone.first_trainable_block() == (0 if train_cls_tokens else last)
    head = nn.Sequential(nn.Linear(3 * C, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    expected = {n for n, _ in backbone.named_parameters() if ".prompt." in n}
    if train_cls_tokens:
        expected |= {"model.cls_token", "model.cls_pos"}
    params = [p for p in backbone.parameters() if p.requires_grad]
    assert {n for n, p in backbone.named_parameters() if p.requires_grad} == expected
    optimizer = torch.optim.AdamW([*params, *head.parameters()], lr=3e-3)
    clouds, labels = sphere_or_cube(16, 64, np.random.default_rng(0))
    test_clouds, test_labels = sphere_or_cube(16, 64, np.random.default_rng(1))

    def eval_loss() -> float:
        backbone.eval(), head.eval()
        with torch.no_grad():
            return nn.functional.cross_entropy(head(backbone.pool(backbone.forward_features(test_clouds))),
                                               test_labels).item()

    start = eval_loss()
    losses = []
    for step in range(12):
        backbone.train(), head.train()
        loss = nn.functional.cross_entropy(head(backbone.pool(backbone.forward_features(clouds))), labels)
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            with_grad = {n for n, p in backbone.named_parameters() if p.grad is not None}
            assert with_grad == expected
            assert all(backbone.get_parameter(n).grad.abs().sum() > 0 for n in with_grad)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    # 12 fast steps leave the batch-norm running statistics behind: recompute them once, then evaluate held out
    norms = [m for m in [*backbone.modules(), *head.modules()] if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    backbone.train(), head.train()
    for m in norms:
        if any(p.requires_grad for p in m.parameters()):
            m.reset_running_stats(), setattr(m, "momentum", None)
    with torch.no_grad():
        head(backbone.pool(backbone.forward_features(clouds)))
    assert eval_loss() < 0.7 * start
    after = {k.replace("base_layer.", ""): v for k, v in backbone.model.state_dict().items() if ".prompt." not in k}
    after.pop(f"blocks.blocks.{last}.prompt_pos")
    assert after.keys() == before.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == ({"cls_token", "cls_pos"} if train_cls_tokens else set())
    backbone.train()
    assert not backbone.model.encoder.first_conv[1].training and backbone.blocks[-1].prompt.fuse.norm.training
