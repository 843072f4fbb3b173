"""Point-cloud classification: head width after the adapter, frozen backbone, learning on synthetic shapes,
test-time voting, adapter checkpoints and the CLI on the tiny YAML and the quickstart."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import assert_backbone_frozen_while_head_and_lora_train, train_steps

from vadapt.adapters import LoraConfig
from vadapt.checkpoint import read_manifest, save_adapter
from vadapt.cli import main
from vadapt.data.points import PointFolderDataModule
from vadapt.data.shapes import make_shapes
from vadapt.loading import load_task
from vadapt.tasks.point_classification import PointClassificationTask, scale_and_translate

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["cube", "cylinder", "sphere"]  # make_shapes(classes=3): sphere, cube, cylinder; labels sorted


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """3 classes x 20 clouds of 128 points (16 train, 4 test each)."""
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, classes=3, per_class=20, points=128, seed=0, parts=False)
    return root


def make_task(**overrides) -> PointClassificationTask:
    kwargs = dict(backbone="point_mae_test", num_classes=3, class_names=CLASSES, head_hidden=16, lr=3e-3)
    kwargs.update(overrides)
    return PointClassificationTask(**kwargs)


def datamodule(root: Path, **overrides) -> PointFolderDataModule:
    kwargs = dict(num_points=64, val_fraction=0.25, batch_size=8)
    kwargs.update(overrides)
    return PointFolderDataModule(str(root), **kwargs)


def a_batch(root: Path) -> dict[str, torch.Tensor]:
    data = datamodule(root, batch_size=12)
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def test_shapes_head_width_and_no_image_normalisation():
    task = make_task().eval()
    assert task.head[0].in_features == 2 * 32  # [cls, max] of the 32-d tiny backbone
    assert task.head[-1].out_features == 3 and len(task.head) == 9  # the official cls_head_finetune
    x = torch.rand(2, 64, 3) * 2 - 1
    with torch.no_grad():
        assert task(x).shape == (2, 3)
    assert torch.equal(task.normalise(x), x)
    assert task.input_mean.numel() == 0 and task.input_std.numel() == 0
    with pytest.raises(ValueError, match="class_names"):
        make_task(class_names=["a"])
    with pytest.raises(ValueError, match="vote"):
        make_task(vote=-1)


def test_head_width_follows_the_idpt_prompt_token():
    """IDPT pools [cls, prompt, max]: the head is built for 3C and the task runs end to end."""
    from vadapt.adapters import IDPTConfig

    assert make_task().head[0].in_features == 2 * 32
    task = make_task(adapter=IDPTConfig(k=4)).eval()
    assert task.head[0].in_features == 3 * 32
    with torch.no_grad():
        assert task(torch.rand(3, 64, 3)).shape == (3, 3)


def test_frozen_backbone_is_bit_identical_and_only_head_and_adapter_train(shapes):
    task = make_task(adapter=LoraConfig(r=2))
    assert_backbone_frozen_while_head_and_lora_train(task, a_batch(shapes))


def full_split(root: Path, split: str) -> dict[str, torch.Tensor]:
    """A whole split of the shapes as one batch (128 points, no augmentation)."""
    data = datamodule(root, num_points=128, augment=False)
    data.setup("fit")
    return next(iter(torch.utils.data.DataLoader(data.datasets[split], batch_size=len(data.datasets[split]))))


def test_training_lowers_loss_and_raises_accuracy(shapes):
    """Frozen tiny backbone + LoRA, 60 steps on the 36 training clouds: the training loss halves, the clouds are
    fitted, and held-out accuracy rises well above chance (the held-out loss is not compared: 12 clouds, and the
    untrained head's near-zero logits sit exactly at ln 3)."""
    task = make_task(adapter=LoraConfig(r=2), head_dropout=0.0)
    train, val = full_split(shapes, "train"), full_split(shapes, "val")

    def accuracy(batch: dict[str, torch.Tensor]) -> float:
        task.eval()
        with torch.no_grad():
            return (task(batch["points"]).argmax(1) == batch["label"]).float().mean().item()

    before = accuracy(val)
    losses = train_steps(task, train, steps=60, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0], losses
    assert accuracy(train) >= 0.8
    assert accuracy(val) >= before + 0.2, (before, accuracy(val))


def test_fit_writes_adapter_and_checkpoints_that_round_trip(shapes, weights, tmp_path):
    task = make_task(weights=weights, adapter=LoraConfig(r=2))
    data = datamodule(shapes)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", default_root_dir=tmp_path, logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, datamodule=data)
    assert list((tmp_path / "predictions").glob("epoch_*.png"))  # the per-epoch preview picture
    adapter = tmp_path / "adapter.safetensors"  # written when fit ends
    manifest = read_manifest(adapter)
    assert manifest["task"] == "vadapt.tasks.point_classification.PointClassificationTask"
    assert manifest["bands"] == [] and manifest["mean"] == [] and manifest["std"] == []
    assert manifest["backbone"]["modality"] == "points" and manifest["class_names"] == CLASSES
    x = torch.rand(4, 64, 3) * 2 - 1
    task.eval()
    for path in (adapter, next(tmp_path.rglob("*.ckpt"))):
        reloaded = load_task(path).eval()
        with torch.no_grad():
            assert torch.equal(task(x), reloaded(x)), path


def test_adapter_checkpoint_of_an_unfrozen_backbone_round_trips(shapes, weights, tmp_path):
    """freeze_backbone=False: the file carries every backbone weight and batch-norm statistic."""
    task = make_task(weights=weights, freeze_backbone=False)
    assert all(p.requires_grad for p in task.backbone.parameters())
    train_steps(task, a_batch(shapes), steps=2)
    state = task.adapter_state_dict()
    assert any(k.startswith("backbone.") and "running_mean" in k for k in state)
    reloaded = load_task(save_adapter(task, tmp_path / "full.safetensors")).eval()
    x = torch.rand(2, 64, 3)
    with torch.no_grad():
        assert torch.equal(task.eval()(x), reloaded(x))


def test_vote_averages_augmented_passes(shapes):
    task = make_task(vote=3).eval()
    batch = a_batch(shapes)
    calls = []
    task.head.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        task._shared_step(batch, "val")
        assert len(calls) == 1
        task._shared_step(batch, "test")
        assert len(calls) == 4
        torch.manual_seed(5)
        voted = task.vote_logits(batch["points"])
        torch.manual_seed(5)
        manual = torch.stack([task(scale_and_translate(batch["points"])) for _ in range(3)]).mean(0)
        assert torch.equal(voted, manual)
        assert torch.equal(task.vote_logits(batch["points"], passes=0), task(batch["points"]))
    moved = scale_and_translate(batch["points"])
    assert moved.shape == batch["points"].shape and not torch.equal(moved, batch["points"])
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_test_batches=1)
    scores = trainer.test(task, datamodule=datamodule(shapes), verbose=False)[0]
    assert 0.0 <= scores["test/oa"] <= 1.0 and 0.0 <= scores["test/macc"] <= 1.0


def test_cli_fit_and_test_on_the_tiny_yaml(shapes, tmp_path):
    config = str(REPO / "tests" / "conf" / "points_pointmae_test.yaml")
    for command in ("fit", "test"):
        main([command, "--config", config, "--data.init_args.root", str(shapes), "--trainer.fast_dev_run", "1",
              "--trainer.default_root_dir", str(tmp_path)])


def test_quickstart_config_runs_on_the_tiny_backbone(shapes, tmp_path):
    main(["fit", "--config", str(REPO / "configs" / "points_quickstart.yaml"),
          "--model.init_args.backbone", "point_mae_test", "--model.init_args.num_classes", "3",
          "--model.init_args.class_names", "[cube, cylinder, sphere]",
          "--data.init_args.root", str(shapes), "--data.init_args.num_points", "64",
          "--data.init_args.batch_size", "4", "--trainer.fast_dev_run", "1",
          "--trainer.default_root_dir", str(tmp_path)])


def test_point_peft_checkpoint_with_a_filled_prior_bank_round_trips(tmp_path, weights):
    """The prior bank's size comes from the data: the adapter file keeps it and loading takes its size."""
    from vadapt.adapters import PointPEFTConfig
    from vadapt.adapters.point_peft import point_prior_features

    config = PointPEFTConfig(prompt_tokens=5, prompt_blocks=1, adapter_dim=4, prior_adapter_dim=4, geo_k=4,
                             geo_heads=2, geo_attn_dim=8)
    task = make_task(weights=weights, adapter=config).eval()
    clouds = torch.rand(6, 64, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        task.backbone.point_peft.build_prior_bank(point_prior_features(task.backbone, clouds),
                                                  torch.tensor([0, 1, 2, 0, 1, 2]))
    loaded = load_task(save_adapter(task, tmp_path / "peft.safetensors")).eval()
    assert loaded.backbone.point_peft.bank_size == 6
    with torch.no_grad():
        torch.testing.assert_close(loaded(clouds[:2]), task(clouds[:2]))


def test_fit_fills_the_point_peft_prior_bank_from_the_training_set(shapes, weights, tmp_path):
    """``vadapt fit`` with Point-PEFT trains with the point prior: the bank holds one frozen feature per training
    cloud, equal to the frozen encoder's feature of that cloud."""
    from vadapt.adapters import PointPEFTConfig
    from vadapt.adapters.point_peft import point_prior_features

    config = PointPEFTConfig(prompt_tokens=5, prompt_blocks=1, adapter_dim=4, prior_adapter_dim=4, geo_k=4,
                             geo_heads=2, geo_attn_dim=8)
    task = make_task(weights=weights, adapter=config)
    data = datamodule(shapes)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", default_root_dir=tmp_path, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(task, datamodule=data)
    bank = task.backbone.point_peft
    labels = torch.tensor([item["label"] for item in data.make_dataset("train", None)])
    assert bank.bank_size == len(labels) > 0  # one entry per training cloud
    assert torch.equal(bank.bank_labels.sort().values, labels.sort().values)
    assert torch.isfinite(bank.bank_features).all()
    # the entries are the frozen encoder's features of the un-augmented training clouds, in order
    clouds = torch.stack([item["points"] for item in data.make_dataset("train", None)])
    torch.testing.assert_close(bank.bank_features, point_prior_features(task.backbone, clouds))


@pytest.mark.parametrize("backbone", ["any2point_test", "any2point_clip_test"])
def test_any2point_task_trains_only_its_parts_and_round_trips(tmp_path, backbone):
    """Any2Point (2D ViT or 1D CLIP text transformer): the frozen base stays bit-identical, its tokenizer /
    adapters / head train, the file reloads."""
    from vadapt.backbones import create_backbone

    base = tmp_path / "base.pth"  # the base model's upstream-format file, as a user has the DINOv2 / CLIP file
    torch.save(create_backbone(backbone).base.model.state_dict(), base)
    torch.manual_seed(0)
    task = PointClassificationTask(backbone=backbone, weights=str(base), num_classes=3, head_hidden=16, lr=3e-3)
    frozen = {n: p.detach().clone() for n, p in task.backbone.base.named_parameters()}
    assert not any(p.requires_grad for p in task.backbone.base.parameters())
    trained = {n: p.detach().clone() for n, p in task.backbone.named_parameters() if p.requires_grad}
    assert trained
    clouds = torch.rand(4, 128, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    losses = train_steps(task, {"points": clouds, "label": torch.tensor([0, 1, 2, 0])}, 3)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(torch.equal(p, frozen[n]) for n, p in task.backbone.base.named_parameters())
    moved = [n for n, p in task.backbone.named_parameters() if n in trained and not torch.equal(p, trained[n])]
    assert len(moved) > len(trained) // 2  # tokenizer, adapters (parameters with no gradient yet may not move)
    loaded = load_task(save_adapter(task.eval(), tmp_path / "any2point.safetensors")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(clouds), task(clouds))
