"""Segmentation task pieces: heads on every backbone family, mmseg-equal metrics, the prediction picture."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from vadapt.backbones import BACKBONES, create_backbone
from vadapt.data.scene import SceneDataModule
from vadapt.tasks import SemanticSegmentationTask
from vadapt.tasks.heads import FPNHead, LinearHead, UPerNetHead
from vadapt.tasks.metrics import segmentation_scores, stat_scores

POINT_FAMILIES = ("point", "any2point", "diffusion")  # not image backbones
TINY = [n for n in BACKBONES if BACKBONES.get(n).tiny and BACKBONES.get(n).family not in POINT_FAMILIES]  # images


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("head", ["uper", "fpn", "linear"])
def test_heads_give_logits_at_the_finest_stride(name, head):
    backbone = create_backbone(name)
    feats = backbone(torch.randn(2, 3, 70, 90))
    cls = {"uper": UPerNetHead, "fpn": FPNHead, "linear": LinearHead}[head]
    module = cls(backbone.out_channels, backbone.strides, 5, 32) if head == "uper" else (
        cls(backbone.out_channels, 5, 32) if head == "fpn" else cls(backbone.out_channels, 5))
    out = module(feats)
    finest = min(backbone.strides)
    expected = feats[backbone.strides.index(finest)].shape[-2:]
    if head == "uper" and len(set(backbone.strides)) == 1:  # ViT maps: the pyramid starts at stride s / 4
        expected = (expected[0] * 4, expected[1] * 4)
    assert out.shape[:2] == (2, 5) and tuple(out.shape[-2:]) == tuple(expected)


def test_metrics_equal_mmsegmentation():
    pytest.importorskip("mmseg", reason="the mmseg extra (vadapt[mmseg]) is not installed")
    from mmseg.evaluation.metrics import IoUMetric

    gen = torch.Generator().manual_seed(0)
    num_classes, ignore = 4, 255
    preds, truths = [], []
    for _ in range(3):
        truth = torch.randint(0, 3, (32, 40), generator=gen)  # class 3 never occurs in truth
        truth[:4] = ignore
        pred = torch.where(torch.rand(32, 40, generator=gen) < 0.7, truth, torch.randint(0, 4, (32, 40), generator=gen))
        pred[truth == ignore] = torch.randint(0, 4, (4, 40), generator=gen).flatten()
        preds.append(pred)
        truths.append(truth)
    reference = IoUMetric(iou_metrics=["mIoU", "mDice"], ignore_index=ignore)
    reference.dataset_meta = {"classes": [str(i) for i in range(num_classes)]}
    ours = stat_scores(num_classes, ignore)
    for pred, truth in zip(preds, truths):
        reference.process([{}], [{"pred_sem_seg": {"data": pred[None]}, "gt_sem_seg": {"data": truth[None]}}])
        ours.update(pred, truth)
    expected = reference.compute_metrics(reference.results)
    tp, fp, _, fn, _ = ours.compute().unbind(-1)
    got = segmentation_scores(tp, fp, fn)
    # mmseg reports percentages rounded to two decimals
    for ours_key, mmseg_key in (("miou", "mIoU"), ("mdice", "mDice"), ("macc", "mAcc"), ("aacc", "aAcc")):
        assert round(100 * float(got[ours_key]), 2) == pytest.approx(float(expected[mmseg_key]), abs=0.011)
    assert float(got["iou"][3]) == 0.0  # predicted but never true: IoU 0 (not NaN), as in mmseg


def test_class_absent_everywhere_is_left_out_of_means():
    scores = segmentation_scores(torch.tensor([5, 0]), torch.tensor([1, 0]), torch.tensor([2, 0]))
    assert np.isnan(float(scores["iou"][1]))
    assert float(scores["miou"]) == pytest.approx(5 / 8)


def test_validation_writes_a_prediction_picture(tmp_path, scene_npz):
    data = SceneDataModule([str(scene_npz)], bands=["red", "green", "blue", "nir"], crop_size=28, batch_size=2,
                           samples_per_epoch=4, label_map={1: 0, 2: 1})
    task = SemanticSegmentationTask(backbone="dinov2_test", bands=("red", "green", "blue", "nir"), num_classes=2,
                                    mean=[0.5] * 4, std=[0.5] * 4, head="fpn", head_channels=16, preview_images=3)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", default_root_dir=tmp_path, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, datamodule=data)
    from PIL import Image

    pictures = sorted((tmp_path / "predictions").glob("epoch_*.png"))
    assert [p.name for p in pictures] == ["epoch_000.png", "epoch_001.png"]
    width, height = Image.open(pictures[-1]).size
    assert height > 2 * 28 and width > 3 * 28  # three rows of input | truth | prediction
    logged = trainer.callback_metrics
    assert {"val/miou", "val/mdice", "val/aacc", "val/iou_0", "val/iou_1", "train/miou"} <= set(logged)


def test_validation_tiles_count_every_held_out_pixel_once(scene_npz):
    data = SceneDataModule([str(scene_npz)], bands=["red", "nir"], crop_size=40, batch_size=4,
                           samples_per_epoch=4, label_map={1: 0, 2: 1}, val_fraction=0.25)
    data.setup()
    counted = sum(int((batch["mask"] != 255).sum()) for batch in data.val_dataloader())
    assert counted == 24 * 96  # the bottom quarter of a 96×96 scene, each pixel exactly once


def test_class_weights_weigh_the_cross_entropy():
    torch.manual_seed(0)
    batch = {"image": torch.randn(2, 3, 32, 32), "mask": torch.randint(0, 2, (2, 32, 32))}
    kwargs = {"backbone": "vit_patch16_test", "num_classes": 2, "mean": [0.0] * 3, "std": [1.0] * 3, "head": "linear"}
    plain = SemanticSegmentationTask(**kwargs)
    torch.manual_seed(0)
    weighted = SemanticSegmentationTask(**kwargs, class_weights=[1.0, 5.0])
    weighted.load_state_dict(plain.state_dict(), strict=False)  # same model, only the loss differs
    logits = plain(batch["image"])
    expected = torch.nn.functional.cross_entropy(logits, batch["mask"], weight=torch.tensor([1.0, 5.0]))
    torch.testing.assert_close(weighted.criterion(logits, batch["mask"]), expected)
    assert not torch.allclose(plain.criterion(logits, batch["mask"]), expected)
    with pytest.raises(ValueError, match="class_weights needs one value"):
        SemanticSegmentationTask(**kwargs, class_weights=[1.0])


def test_full_fine_tuning_trains_batch_norm_statistics():
    """Freezing put the backbone's batch norms in eval mode; unfreezing must undo it (Lightning keeps modes)."""
    kwargs = {"backbone": "efficientnet_lite0_test", "num_classes": 2, "mean": [0.0] * 3, "std": [1.0] * 3,
              "head": "linear"}
    norms = [m for m in SemanticSegmentationTask(**kwargs, freeze_backbone=False).backbone.modules()
             if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.training for m in norms)
    frozen = [m for m in SemanticSegmentationTask(**kwargs).backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert frozen and not any(m.training for m in frozen)
