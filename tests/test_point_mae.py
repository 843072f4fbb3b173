"""Point-MAE backbone (Pang et al., ECCV 2022): grouping, shapes, size, official checkpoint format, bad input."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from vadapt.backbones import create_backbone
from vadapt.backbones.point_mae import (
    PointBackbone,
    encoder_parameter_count,
    farthest_point_sample,
    knn_indices,
)
from vadapt.weights import WeightsMismatchError

TINY = dict(embed_dim=32, depth=2, num_heads=2, num_group=16, group_size=8, encoder_hidden=(16, 32, 64),
            pos_hidden=16, head_hidden=16)


def tiny(**kwargs) -> PointBackbone:
    return PointBackbone(**{**TINY, **kwargs}).eval()


# ---- grouping ---------------------------------------------------------------------------------------------


def _fps_reference(points: torch.Tensor, n: int) -> list[int]:
    """Textbook FPS on one cloud (N, 3), starting at point 0."""
    chosen = [0]
    dist = [float("inf")] * len(points)
    for _ in range(n - 1):
        last = points[chosen[-1]]
        dist = [min(d, float(((p - last) ** 2).sum())) for d, p in zip(dist, points)]
        chosen.append(max(range(len(points)), key=lambda i: dist[i]))
    return chosen


def test_fps_picks_the_extreme_points_first_and_is_batched():
    gen = torch.Generator().manual_seed(1)
    cloud = 0.05 * torch.randn(40, 3, generator=gen)  # a small blob at the origin ...
    cloud[0] = torch.tensor([-1.0, 0.0, 0.0])  # ... and three far points; FPS starts at point 0
    cloud[17] = torch.tensor([1.0, 0.0, 0.0])
    cloud[29] = torch.tensor([0.0, 0.0, 1.2])
    perm = torch.cat([torch.zeros(1, dtype=torch.long), torch.randperm(39, generator=gen) + 1])
    batch = torch.stack([cloud, cloud[perm]])
    idx = farthest_point_sample(batch, 5)
    assert idx.shape == (2, 5)
    assert idx[0, :3].tolist() == [0, 17, 29]
    assert perm[idx[1, :3]].tolist() == [0, 17, 29]  # same picks in the shuffled copy
    rand = torch.randn(3, 50, 3, generator=gen)
    got = farthest_point_sample(rand, 10)
    assert [got[b].tolist() for b in range(3)] == [_fps_reference(rand[b], 10) for b in range(3)]


def test_knn_groups_equal_brute_force():
    points = torch.randn(2, 60, 3, generator=torch.Generator().manual_seed(2))
    backbone = tiny()
    centres, groups = backbone.group(points)
    assert centres.shape == (2, 16, 3) and groups.shape == (2, 16, 8, 3)
    fps = farthest_point_sample(points, 16)
    assert torch.equal(centres, torch.stack([points[b, fps[b]] for b in range(2)]))
    for b in range(2):
        for g in range(16):
            dists = [(float(((p - centres[b, g]) ** 2).sum()), i) for i, p in enumerate(points[b])]
            nearest = [i for _, i in sorted(dists)[:8]]
            assert torch.allclose(groups[b, g], points[b, nearest] - centres[b, g], atol=1e-6)
    assert torch.equal(groups[:, :, 0], torch.zeros(2, 16, 3))  # each centre is its own nearest point
    assert knn_indices(points, centres, 8).shape == (2, 16, 8)


# ---- architecture -----------------------------------------------------------------------------------------


def test_shapes_of_every_stage():
    backbone = tiny(num_classes=5)
    points = torch.randn(3, 64, 3)
    centres, groups = backbone.group(points)
    tokens = backbone.tokenize(groups)
    assert tokens.shape == (3, 16, 32)
    assert backbone.pos_embed(centres).shape == (3, 16, 32)
    assert backbone.cls_token.shape == backbone.cls_pos.shape == (1, 1, 32)
    assert isinstance(backbone.blocks, nn.ModuleList) and len(backbone.blocks) == 2
    feats = backbone.forward_features(points)
    assert feats.shape == (3, 17, 32) and torch.isfinite(feats).all()
    assert backbone.last_pos.shape == (3, 17, 32) and backbone.last_centres.shape == (3, 16, 3)
    assert backbone.pool(feats).shape == (3, 64)
    assert backbone(points).shape == (3, 5)
    assert tiny()(points).shape == (3, 64)  # no head: pooled [cls, max] features


def test_real_size_parameter_count():
    with torch.device("meta"):
        backbone = PointBackbone()
        classifier = PointBackbone(num_classes=40)
    # tokenizer + position MLP + 12 blocks + final norm = the official pretrain ``MAE_encoder``
    assert encoder_parameter_count(backbone) == 21_825_024
    assert sum(p.numel() for p in backbone.parameters()) == 21_825_024 + 2 * 384  # + cls_token, cls_pos
    head = 768 * 256 + 256 + 2 * 256 + 256 * 256 + 256 + 2 * 256 + 256 * 40 + 40
    assert sum(p.numel() for p in classifier.parameters()) == 21_825_024 + 2 * 384 + head
    assert [len(backbone.blocks), backbone.blocks[0].attn.qkv.bias] == [12, None]
    assert [b.drop_path.p for b in backbone.blocks[1:]][-1] == pytest.approx(0.1)


# ---- the official checkpoint format -----------------------------------------------------------------------


class _OfficialBlock(nn.Module):
    """Names of the official ``Block`` (attention without qkv bias)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)


class _OfficialPointMAE(nn.Module):
    """The module tree of the official pretrain model ``Point_MAE`` (names only, no forward)."""

    def __init__(self, dim: int, depth: int, group_size: int, hidden=(16, 32, 64), pos_hidden=16) -> None:
        super().__init__()
        h1, h2, h3 = hidden
        enc = self.MAE_encoder = nn.Module()
        enc.encoder = nn.Module()
        enc.encoder.first_conv = nn.Sequential(nn.Conv1d(3, h1, 1), nn.BatchNorm1d(h1), nn.ReLU(),
                                               nn.Conv1d(h1, h2, 1))
        enc.encoder.second_conv = nn.Sequential(nn.Conv1d(2 * h2, h3, 1), nn.BatchNorm1d(h3), nn.ReLU(),
                                                nn.Conv1d(h3, dim, 1))
        enc.pos_embed = nn.Sequential(nn.Linear(3, pos_hidden), nn.GELU(), nn.Linear(pos_hidden, dim))
        enc.blocks = nn.Module()
        enc.blocks.blocks = nn.ModuleList(_OfficialBlock(dim) for _ in range(depth))
        enc.norm = nn.LayerNorm(dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, dim))
        self.MAE_decoder = nn.Module()
        self.MAE_decoder.blocks = nn.ModuleList(_OfficialBlock(dim) for _ in range(2))
        self.MAE_decoder.norm = nn.LayerNorm(dim)
        self.increase_dim = nn.Sequential(nn.Conv1d(dim, 3 * group_size, 1))


def _official_pretrain_file(tmp_path: Path, prefix: str = "module.") -> tuple[Path, dict]:
    official = _OfficialPointMAE(dim=32, depth=2, group_size=8)
    for name, buf in official.named_buffers():
        if "running" in name:
            buf.uniform_(0.5, 1.5)  # so loaded statistics are distinguishable from the defaults
    state = official.state_dict()
    path = tmp_path / "pretrain.pth"
    torch.save({"base_model": {prefix + k: v for k, v in state.items()}, "epoch": 299,
                "metrics": {"acc": 0.0}, "best_metrics": {}}, path)  # as the official save_checkpoint
    return path, state


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_official_pretrain_checkpoint_roundtrip(tmp_path, prefix):
    path, state = _official_pretrain_file(tmp_path, prefix)
    backbone = tiny(num_classes=5)
    report = backbone.load_pretrained(str(path))
    head = {k for k in backbone.model.state_dict() if k.startswith("cls_head_finetune.")}
    assert set(report.missing) == {"cls_token", "cls_pos"} | head and len(head) == 16
    assert report.ignored and all(k.startswith(("MAE_decoder.", "mask_token", "decoder_pos_embed.",
                                                "increase_dim.")) for k in report.ignored)
    own = backbone.model.state_dict()
    for key, value in state.items():
        if key.startswith("MAE_encoder."):
            assert torch.equal(own[key[len("MAE_encoder."):]], value), key
    assert set(tiny().load_pretrained(str(path)).missing) == {"cls_token", "cls_pos"}  # headless backbone


def test_finetuned_checkpoint_loads_fully_and_bad_keys_raise(tmp_path):
    source = tiny(num_classes=5)
    path = tmp_path / "modelnet.pth"
    torch.save({"base_model": {"module." + k: v for k, v in source.model.state_dict().items()}}, path)
    target = tiny(num_classes=5)
    assert target.load_pretrained(str(path)).missing == []
    points = torch.randn(2, 64, 3)
    expected = source(points)
    assert torch.allclose(target(points), expected)
    bad = {k.replace("norm1", "norm_1"): v for k, v in source.model.state_dict().items()}
    torch.save({"base_model": bad}, path)
    with pytest.raises(WeightsMismatchError, match="norm_1"):
        tiny(num_classes=5).load_pretrained(str(path))


# ---- bad input --------------------------------------------------------------------------------------------


def test_too_few_points_are_resampled_with_one_warning():
    backbone = tiny()
    with pytest.warns(UserWarning, match="resampled with replacement"):
        out = backbone.forward_features(torch.randn(2, 5, 3))  # fewer than G = 16 and k = 8
    assert out.shape == (2, 17, 32) and torch.isfinite(out).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backbone.forward_features(torch.randn(2, 12, 3))  # fewer than G again: no second warning


def test_nan_or_empty_cloud_raises():
    backbone = tiny()
    points = torch.randn(2, 64, 3)
    points[1, 7, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        backbone(points)
    with pytest.raises(ValueError, match="empty"):
        backbone(torch.empty(2, 0, 3))
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        backbone(torch.randn(2, 64, 4))


# ---- registry and training --------------------------------------------------------------------------------


def test_registry_builds_frozen_and_gradients_reach_unfrozen_blocks():
    backbone = create_backbone("point_mae_test")
    assert isinstance(backbone, PointBackbone) and backbone.name == "point_mae_test"
    assert not any(p.requires_grad for p in backbone.parameters())
    with pytest.raises(ValueError, match="no bands"):
        backbone.set_bands(["red", "green", "blue", "nir"])
    backbone.train()
    assert not backbone.model.encoder.first_conv[1].training  # frozen batch norm keeps its statistics
    for p in backbone.blocks[1].parameters():
        p.requires_grad_(True)
    assert backbone.first_trainable_block() == 1
    backbone.forward_features(torch.randn(2, 64, 3)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.blocks[1].parameters())
    assert all(p.grad is None for p in backbone.blocks[0].parameters())
    for p in backbone.blocks.parameters():
        p.requires_grad_(True)
    backbone.forward_features(torch.randn(2, 64, 3)).square().mean().backward()
    assert backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
