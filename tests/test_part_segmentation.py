"""Point-cloud part segmentation: output shapes, the part-IoU metric on a hand example, the frozen backbone,
learning on synthetic shapes with parts, the CLI on the tiny YAML and adapter checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import assert_backbone_frozen_while_head_and_lora_train, train_steps

from vadapt.adapters import IDPTConfig, LoraConfig
from vadapt.checkpoint import read_manifest, save_adapter
from vadapt.cli import main
from vadapt.data.points import PointFolderDataModule
from vadapt.data.shapes import make_shapes
from vadapt.loading import load_task
from vadapt.tasks.part_segmentation import PartIoU, PartSegmentationTask, interpolate_three_nn

CONF = Path(__file__).parent / "conf"
# make_shapes part ids follow the given class order: table [0, 1], mug [2, 3], lamp [4, 5, 6]; the datamodule's
# categories are the sorted names (lamp 0, mug 1, table 2)
CLASSES = ["table", "mug", "lamp"]
CATEGORY_PARTS = [[4, 5, 6], [2, 3], [0, 1]]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """3 multi-part classes x 8 clouds of 128 points (6 train, 2 test each), with part labels."""
    root = tmp_path_factory.mktemp("shapes_parts")
    make_shapes(root, classes=CLASSES, per_class=8, points=128, seed=0, parts=True)
    return root


def make_task(**overrides) -> PartSegmentationTask:
    kwargs = dict(backbone="point_mae_test", num_parts=7, num_categories=3, category_parts=CATEGORY_PARTS,
                  propagation_dims=[32, 32], head_dims=[32, 16], lr=3e-3)
    kwargs.update(overrides)
    return PartSegmentationTask(**kwargs)


def full_split(root: Path, split: str = "train") -> dict[str, torch.Tensor]:
    data = PointFolderDataModule(str(root), parts=True, num_points=64, val_fraction=0.25, augment=False)
    data.setup("fit")
    assert data.category_parts == CATEGORY_PARTS
    dataset = data.datasets[split]
    return next(iter(torch.utils.data.DataLoader(dataset, batch_size=len(dataset))))


def test_output_shapes_feature_blocks_and_official_widths():
    task = make_task().eval()
    assert task.feature_blocks == [0, 1]  # both blocks of the 2-block tiny backbone
    x, category = torch.rand(3, 64, 3) * 2 - 1, torch.tensor([0, 1, 2])
    with torch.no_grad():
        assert task(x, category).shape == (3, 7, 64)
        assert task.predict_step({"points": x, "category": category}, 0).shape == (3, 64)
    assert torch.equal(task.normalise(x), x) and task.input_mean.numel() == 0
    # official widths by default: F = 2 * 32 features per centre; propagation (F + 3) -> 4C -> 1024; head
    # (1024 + 2F + 64) -> 512 -> 256 -> parts
    head = make_task(propagation_dims=None, head_dims=None).head
    assert head.propagation.mlp[0].in_channels == 64 + 3 and head.propagation.mlp[0].out_channels == 4 * 32
    assert head.classifier[0].in_channels == 1024 + 2 * 64 + 64 and head.classifier[-1].out_channels == 7
    assert make_task(feature_blocks=[1]).head.propagation.mlp[0].in_channels == 32 + 3
    with pytest.raises(ValueError, match="feature_blocks"):
        make_task(feature_blocks=[5])
    with pytest.raises(ValueError, match="category"):
        with torch.no_grad():
            task(x)  # the head embeds the category
    no_category = make_task(num_categories=0, category_parts=None).eval()
    with torch.no_grad():
        assert no_category(x).shape == (3, 7, 64)
    with pytest.raises(ValueError, match="outside"):
        make_task(category_parts={0: [9]})


def test_idpt_prompt_token_is_skipped_by_the_head():
    """IDPT inserts a prompt token before the last block; only the G patch tokens reach the head."""
    task = make_task(adapter=IDPTConfig(k=4)).eval()
    with torch.no_grad():
        assert task(torch.rand(2, 64, 3), torch.tensor([0, 2])).shape == (2, 7, 64)


def test_three_nn_interpolation():
    centres = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]])
    features = torch.arange(4.0).view(1, 4, 1)
    points = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0.5, 0.5, 0]]])
    out = interpolate_three_nn(points, centres, features)
    assert out[0, 0, 0] == pytest.approx(0.0, abs=1e-6) and out[0, 1, 0] == pytest.approx(1.0, abs=1e-6)
    # equidistant from centres 1 and 2 (d^2 = 0.5), then centre 0 (d^2 = 0.5): the mean of 0, 1, 2
    assert out[0, 2, 0] == pytest.approx(1.0, abs=1e-5)
    one = interpolate_three_nn(points, centres[:, :1], features[:, :1] + 7)
    assert torch.equal(one, torch.full((1, 3, 1), 7.0))


def test_part_iou_on_a_hand_example():
    """Parts: category 0 -> {0, 1, 2}, category 1 -> {3, 4}.
    A (cat 0): part 0 IoU 1/2, part 1 IoU 2/3, part 2 in neither -> 1: shape IoU 13/18.
    B (cat 0): all part 2, right; parts 0, 1 in neither -> 1.  C (cat 1): parts swapped -> 0.
    instance = (13/18 + 1 + 0) / 3; class = mean(cat 0: (13/18 + 1) / 2, cat 1: 0)."""
    pred = torch.tensor([[0, 1, 1, 1], [2, 2, 2, 2], [4, 4, 3, 3]])
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 2], [3, 3, 4, 4]])
    category = torch.tensor([0, 0, 1])
    metric = PartIoU(num_parts=5, num_categories=2, category_parts={0: [0, 1, 2], 1: [3, 4]})
    metric.update(pred[:2], target[:2], category[:2])  # two batches = one
    metric.update(pred[2:], target[2:], category[2:])
    out = metric.compute()
    assert float(out["instance_miou"]) == pytest.approx((13 / 18 + 1) / 3, abs=1e-6)
    assert float(out["class_miou"]) == pytest.approx((13 / 18 + 1) / 4, abs=1e-6)
    assert metric.per_category().tolist() == pytest.approx([(13 / 18 + 1) / 2, 0.0])
    # without category parts: only the parts in prediction or truth count (A: (1/2 + 2/3) / 2)
    loose = PartIoU(num_parts=5)
    loose.update(pred[:1], target[:1])
    assert float(loose.compute()["instance_miou"]) == pytest.approx(7 / 12, abs=1e-6)
    metric.reset()
    assert not metric.count.any()
    with pytest.raises(ValueError, match="category"):
        metric.update(pred, target, torch.tensor([0, 0, 2]))


def test_predictions_keep_to_the_category_parts():
    task = make_task()
    logits = torch.zeros(2, 7, 1)
    logits[:, 6] = 5.0  # part 6 (a lamp part) wins overall
    logits[0, 1], logits[1, 3] = 1.0, 1.0
    assert task.predict_parts(logits, torch.tensor([2, 1])).flatten().tolist() == [1, 3]  # table, mug
    assert task.predict_parts(logits, torch.tensor([0, 0])).flatten().tolist() == [6, 6]


def test_frozen_backbone_is_bit_identical_and_only_head_and_adapter_train(shapes):
    task = make_task(adapter=LoraConfig(r=2))
    assert_backbone_frozen_while_head_and_lora_train(task, full_split(shapes))


def test_training_lowers_loss_and_raises_miou(shapes):
    """Tiny frozen backbone + LoRA, 25 steps on the 18 training clouds (3 categories, 7 parts): the loss at least
    halves and the instance mIoU (about 0.1-0.2 untrained) rises by 0.2 or more."""
    task = make_task(adapter=LoraConfig(r=2), head_dropout=0.0)
    train = full_split(shapes)

    def miou() -> float:
        task.eval()
        metric = PartIoU(7, 3, CATEGORY_PARTS)
        with torch.no_grad():
            metric.update(task.predict_parts(task(train["points"], train["category"]), train["category"]),
                          train["parts"], train["category"])
        return float(metric.compute()["instance_miou"])

    before = miou()
    losses = train_steps(task, train, steps=25, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0], losses
    after = miou()  # eval mode: the head's batch norms use their running statistics
    assert after >= before + 0.2, (before, after)


def test_cli_fit_fast_dev_run_reads_category_parts_from_the_data(shapes, tmp_path, capsys):
    cfg = yaml.safe_load((CONF / "parts_pointmae_test.yaml").read_text())
    cfg["model"]["init_args"].update(num_parts=7)  # the fixture's classes: 7 parts
    path = tmp_path / "parts.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(path), "--data.init_args.root", str(shapes), "--trainer.fast_dev_run", "1",
                 "--trainer.default_root_dir", str(tmp_path)]) == 0
    capsys.readouterr()
    # too few parts for the data is named: one sentence, exit code 2
    assert main(["fit", "--config", str(CONF / "parts_pointmae_test.yaml"), "--data.init_args.root", str(shapes),
                 "--trainer.fast_dev_run", "1", "--trainer.default_root_dir", str(tmp_path)]) == 2
    assert "error: the data has 7 part ids but the task num_parts=3" in capsys.readouterr().err


def test_adapter_checkpoint_round_trip(shapes, weights, tmp_path):
    """category_parts adopted from the data travels in the manifest; the reloaded task predicts the same."""
    task = make_task(weights=weights, adapter=LoraConfig(r=2), category_parts=None)
    task.set_category_parts({0: [4, 5, 6], 1: [2, 3], 2: [0, 1]})
    batch = full_split(shapes)
    train_steps(task, batch, steps=2)
    path = save_adapter(task, tmp_path / "adapter.safetensors")
    manifest = read_manifest(path)
    assert manifest["task"] == "vadapt.tasks.part_segmentation.PartSegmentationTask"
    assert manifest["init_args"]["category_parts"] == CATEGORY_PARTS
    reloaded = load_task(path).eval()
    task.eval()
    x, category = batch["points"][:4], batch["category"][:4]
    with torch.no_grad():
        assert torch.equal(task(x, category), reloaded(x, category))
    assert torch.equal(reloaded.category_mask, task.category_mask)
