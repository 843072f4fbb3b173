"""Point-MAE pretraining (tasks/point_pretrain.py): masking, Chamfer-L2, learning, official-format export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vadapt.backbones import create_backbone
from vadapt.data.points import PointFolderDataModule
from vadapt.data.shapes import make_shapes
from vadapt.tasks.point_pretrain import (
    PointMAEPretrainTask,
    chamfer_l2,
    num_masked,
    pretrain_points,
    random_mask,
    split_by_mask,
)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """3 classes x 12 clouds of 128 points."""
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, classes=3, per_class=12, points=128, seed=0, parts=False)
    return root


def tiny_task(**overrides) -> PointMAEPretrainTask:
    return PointMAEPretrainTask(**{"backbone": "point_mae_test", "export_on_fit_end": False, **overrides})


def test_random_mask_counts_and_randomness():
    assert num_masked(64, 0.6) == 38 and num_masked(16, 0.6) == 9  # int(), as the official _mask_center_rand
    mask = random_mask(32, 64, 0.6)
    assert mask.shape == (32, 64) and mask.dtype == torch.bool
    assert (mask.sum(1) == 38).all()
    assert len({tuple(row.tolist()) for row in mask}) == 32  # a different draw per sample
    vis, masked = split_by_mask(mask)
    assert vis.shape == (32, 26) and masked.shape == (32, 38)
    assert (vis.diff(dim=1) > 0).all() and (masked.diff(dim=1) > 0).all()  # the order of x[~mask] / x[mask]
    assert mask.gather(1, masked).all() and not mask.gather(1, vis).any()
    seeded = [random_mask(4, 64, 0.6, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(*seeded)
    with pytest.raises(ValueError, match="mask_ratio"):
        random_mask(2, 64, 1.0)


def test_chamfer_matches_brute_force_and_is_zero_on_identical_sets():
    a, b = torch.randn(5, 7, 3, dtype=torch.float64), torch.randn(5, 9, 3, dtype=torch.float64)
    d1 = [min(float(((p - q) ** 2).sum()) for q in b[s]) for s in range(5) for p in a[s]]
    d2 = [min(float(((p - q) ** 2).sum()) for p in a[s]) for s in range(5) for q in b[s]]
    reference = sum(d1) / len(d1) + sum(d2) / len(d2)  # ChamferDistanceL2: mean(dist1) + mean(dist2)
    assert float(chamfer_l2(a, b)) == pytest.approx(reference, rel=1e-12)
    assert float(chamfer_l2(a, a[:, torch.randperm(7)])) == 0.0
    x = a.clone().requires_grad_(True)
    chamfer_l2(x, a).backward()  # finite gradients at zero distance
    assert torch.isfinite(x.grad).all()


def test_forward_shapes_encoder_sees_visible_tokens_only():
    task = tiny_task().eval()
    bb = task.backbone
    seen: list[int] = []
    bb.blocks[0].register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[1]))
    out = task(torch.randn(3, 128, 3))
    g, k, m = bb.num_group, bb.group_size, num_masked(bb.num_group, 0.6)
    assert out["pred"].shape == out["target"].shape == (3, m, k, 3)
    assert seen == [g - m]  # no class token, no masked tokens in the encoder
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    assert not bb.cls_token.requires_grad and all(p.requires_grad for p in bb.model.blocks.parameters())


def test_a_few_steps_lower_the_reconstruction_loss(shapes):
    torch.manual_seed(0)
    task = tiny_task(lr=3e-3, warmup_steps=0).train()
    data = PointFolderDataModule(str(shapes), num_points=128, batch_size=16, val_fraction=0.0, augment=False)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))["points"]
    mask = random_mask(len(batch), task.backbone.num_group, 0.6)
    optimizer = torch.optim.AdamW(task.parameters(), lr=3e-3)
    with torch.no_grad():
        before = float(task.eval()(batch, mask=mask)["loss"])
    task.train()
    for _ in range(8):
        loss = task(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = float(task.eval()(batch, mask=mask)["loss"])
    assert after < 0.5 * before, (before, after)


def test_official_format_round_trip(tmp_path):
    task = tiny_task()
    with torch.no_grad():  # move every encoder weight away from any initialisation
        for p in task.backbone.model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = task.save_encoder(tmp_path / "pretrain.pth")
    saved = torch.load(path, weights_only=True)
    assert set(saved) >= {"base_model"}
    keys = set(saved["base_model"])
    assert all(k.startswith(("MAE_encoder.", "mask_token", "decoder_pos_embed.", "MAE_decoder.", "increase_dim."))
               for k in keys)
    assert "MAE_encoder.blocks.blocks.0.attn.qkv.weight" in keys and "MAE_encoder.cls_token" not in keys

    fresh = create_backbone("point_mae_test", num_classes=5)
    report = fresh.load_pretrained(str(path))
    head = [k for k in fresh.model.state_dict() if k.startswith("cls_head_finetune.")]
    assert sorted(report.missing) == sorted(["cls_token", "cls_pos", *head])
    assert report.ignored and all(not k.startswith("MAE_encoder.") for k in report.ignored)
    trained = task.backbone.model.state_dict()
    for key, value in fresh.model.state_dict().items():
        if not key.startswith(("cls_token", "cls_pos", "cls_head_finetune.")):
            assert torch.equal(value, trained[key]), key

    loaded = create_backbone("point_mae_test", weights=str(path))  # the registry path too
    assert torch.equal(loaded.model.norm.weight, task.backbone.model.norm.weight)


def test_pretrain_points_writes_a_loadable_file(shapes, tmp_path):
    out = tmp_path / "enc" / "pretrain.pth"
    written = pretrain_points(shapes, out, backbone="point_mae_test", epochs=1, batch_size=8, points=128,
                              accelerator="cpu", progress_bar=False, log_dir=tmp_path / "logs")
    assert written == out and out.is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["pretrain.pth"]  # no temporary left behind
    metrics = next((tmp_path / "logs").rglob("metrics.csv")).read_text()
    assert "train/loss" in metrics and "val/loss" in metrics
    create_backbone("point_mae_test", weights=str(out))


def test_no_partial_file_on_error(shapes, tmp_path, monkeypatch):
    out = tmp_path / "pretrain.pth"
    out.write_bytes(b"old")

    def broken_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        pretrain_points(shapes, out, backbone="point_mae_test", epochs=1, batch_size=8, points=128, max_steps=1,
                        accelerator="cpu", progress_bar=False, log_dir=tmp_path / "logs", val_fraction=0.0)
    assert out.read_bytes() == b"old"  # the old file is untouched, no partial new one
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["pretrain.pth"]
    monkeypatch.undo()

    missing = tmp_path / "new.pth"
    with pytest.raises(Exception):  # noqa: B017 - a bad data folder fails before anything is written
        pretrain_points(tmp_path / "no_such_data", missing, backbone="point_mae_test", epochs=1,
                        accelerator="cpu", progress_bar=False, log_dir=tmp_path / "logs")
    assert not missing.exists()


def test_backbone_batch_norms_train():
    """create_backbone freezes (batch norms to eval); the pretraining encoder must update its statistics."""
    task = tiny_task()
    norms = [m for m in task.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert norms and all(m.training for m in norms)
    before = norms[0].running_mean.clone()
    task(torch.randn(2, 128, 3))
    assert not torch.equal(before, norms[0].running_mean)
