"""The offline recipes (configs/*_efficientnet_lora.yaml: the real EfficientNet-Lite0 from a pip package, no
downloads) run through the CLI, and the options they rely on: ``dice_weight`` of the segmentation task,
``class_weights`` and ``change_threshold`` of the change-detection task."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vadapt.adapters import LoraConfig
from vadapt.cli import main
from vadapt.tasks import ChangeDetectionTask, SemanticSegmentationTask
from vadapt.tasks.segmentation import soft_dice_loss

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SHARED = REPO.parent / "shared" / "data"

pytestmark = pytest.mark.usefixtures("one_thread")


def fit_fast_dev_run(config: str, tmp_path: Path, *overrides: str) -> None:
    """``vadapt fit --config configs/<config> --trainer.fast_dev_run 1`` with outputs in ``tmp_path``."""
    main(["fit", "--config", str(CONFIGS / config), "--trainer.fast_dev_run", "1",
          "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
          *overrides])


@pytest.mark.parametrize("config", ["kvasir_efficientnet_lora.yaml", "levir_cd_efficientnet_lora.yaml",
                                    "map_roads_efficientnet_lora.yaml"])
def test_recipe_header_says_what_to_run(config):
    text = (CONFIGS / config).read_text()
    assert text.startswith("# ") and f"vadapt fit --config configs/{config}" in text
    assert "weights: pretrained" in text and "backbone: efficientnet_lite0" in text


def test_map_roads_recipe_fits_on_the_shipped_tiles(tmp_path):
    """Never skips: the tiles are in the repository (data/historical_roads)."""
    fit_fast_dev_run("map_roads_efficientnet_lora.yaml", tmp_path, "--data.init_args.batch_size", "2",
                     "--data.init_args.train_size", "64", "--model.init_args.preview_images", "0")


def test_map_roads_recipe_reads_pure_white_as_background_and_holds_one_tile_out():
    from vadapt.data.stats import datamodule_from_config

    data = datamodule_from_config(CONFIGS / "map_roads_efficientnet_lora.yaml")
    data.setup("fit")
    assert (len(data.datasets["train"]), len(data.datasets["val"])) == (2, 1)
    mask = torch.as_tensor(data.datasets["val"][0]["mask"])
    assert not (mask == 255).any()  # nodata: null; the files' nodata 255 would make pure-white pixels "unknown"
    assert 0.005 < float((mask == 1).float().mean()) < 0.05  # roads: a few percent


@pytest.mark.skipif(not (SHARED / "kvasir_seg").is_dir(), reason=f"Kvasir-SEG not found at {SHARED / 'kvasir_seg'} "
                    "(research-only data, not shipped)")
def test_kvasir_recipe_fits(tmp_path):
    fit_fast_dev_run("kvasir_efficientnet_lora.yaml", tmp_path, "--data.init_args.batch_size", "2",
                     "--data.init_args.val_batch_size", "2", "--data.init_args.train_size", "64",
                     "--data.init_args.val_size", "64", "--data.init_args.check_files", "false",
                     "--model.init_args.preview_images", "0")


@pytest.mark.skipif(not (SHARED / "levir_cd").is_dir(), reason=f"LEVIR-CD sample not found at {SHARED / 'levir_cd'} "
                    "(research-only data, not shipped)")
def test_levir_cd_recipe_fits(tmp_path):
    fit_fast_dev_run("levir_cd_efficientnet_lora.yaml", tmp_path, "--data.init_args.batch_size", "2",
                     "--data.init_args.val_batch_size", "1", "--data.init_args.train_size", "64",
                     "--model.init_args.preview_images", "0")


# ---- dice_weight ------------------------------------------------------------------------------------------------
SEG = {"backbone": "efficientnet_lite0_test", "num_classes": 3, "mean": [0.0] * 3, "std": [1.0] * 3, "head": "fpn",
       "head_channels": 8, "adapter": LoraConfig(r=2)}


def test_soft_dice_loss_scores_overlap_of_foreground_classes_and_skips_ignored_pixels():
    mask = torch.tensor([[[0, 1], [2, 255]]])
    perfect = torch.nn.functional.one_hot(torch.tensor([[[0, 1], [2, 0]]]), 3).permute(0, 3, 1, 2).float() * 50
    assert float(soft_dice_loss(perfect, mask, 255)) == pytest.approx(0.0, abs=1e-6)
    # the ignored pixel predicts class 1 with certainty: excluded, it changes nothing
    other = perfect.clone()
    other[0, :, 1, 1] = torch.tensor([0.0, 50.0, 0.0])
    assert float(soft_dice_loss(other, mask, 255)) == pytest.approx(0.0, abs=1e-6)
    # everything background: Dice of classes 1 and 2 = smooth / (1 + smooth) = 0.5 each
    background = torch.zeros(1, 3, 2, 2)
    background[:, 0] = 50
    assert float(soft_dice_loss(background, mask, 255)) == pytest.approx(0.5, abs=1e-6)


def test_dice_weight_adds_a_trainable_dice_term_to_the_loss():
    torch.manual_seed(0)
    batch = {"image": torch.rand(2, 3, 32, 32), "mask": torch.randint(0, 3, (2, 32, 32))}
    batch["mask"][:, :4] = 255
    plain = SemanticSegmentationTask(**SEG)
    dice = SemanticSegmentationTask(**SEG, dice_weight=2.0)
    dice.load_state_dict(plain.state_dict(), strict=False)  # same model, only the loss differs
    plain.train(), dice.train()
    loss_plain, loss_dice = plain._shared_step(batch, "train"), dice._shared_step(batch, "train")
    expected = loss_plain + 2.0 * soft_dice_loss(plain(batch["image"]), batch["mask"], 255)
    torch.testing.assert_close(loss_dice, expected)
    assert loss_dice.item() > loss_plain.item()
    loss_plain.backward()
    loss_dice.backward()
    grads = [(p.grad, q.grad) for p, q in zip(plain.parameters(), dice.parameters()) if p.requires_grad]
    assert grads and all(g is not None and h is not None for g, h in grads)
    assert all(torch.isfinite(h).all() for _, h in grads)
    assert any(not torch.allclose(g, h) for g, h in grads)  # the Dice term reaches the adapter and the head
    with pytest.raises(ValueError, match="dice_weight"):
        SemanticSegmentationTask(**SEG, dice_weight=-1.0)


# ---- change detection: class_weights, change_threshold --------------------------------------------------------------
def change_task(**kwargs) -> ChangeDetectionTask:
    """A tiny PeftCD task in eval mode, its decoder batch norms calibrated on one random batch (an untrained
    decoder's default statistics would make every pixel the same)."""
    torch.manual_seed(0)
    task = ChangeDetectionTask(backbone="efficientnet_lite0_test", decoder_channels=8, mean=[0.5] * 3,
                               std=[0.25] * 3, adapter=LoraConfig(r=2), preview_images=0, **kwargs)
    for module in task.decoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 1.0
    task.train()
    torch.manual_seed(1)
    with torch.no_grad():
        task(torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32))
    return task.eval()


@torch.no_grad()
def test_change_threshold_moves_the_decision_in_every_prediction_path():
    from vadapt.inference.engine import Predictor

    base = change_task()
    torch.manual_seed(2)
    a, b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    p_changed = base(a, b).softmax(1)[:, 1]
    assert 0 < float((p_changed > 0.5).float().mean()) < 1  # a mix of decisions to move
    plain = base(a, b).argmax(1)
    torch.testing.assert_close(base.class_logits(a, b), base(a, b))  # 0.5: today's behaviour, exactly
    batch = {"image_a": a, "image_b": b}
    for threshold in (0.9, 0.3):
        task = change_task(change_threshold=threshold)
        task.load_state_dict(base.state_dict())
        torch.testing.assert_close(task(a, b), base(a, b))  # forward stays raw
        decided = task.class_logits(a, b).argmax(1)
        assert torch.equal(decided, (p_changed > threshold).long())
        assert torch.equal(task.predict_step(batch, 0), decided)
        probs = Predictor(task, "cpu", merge=False, fold_norms=False)(torch.cat([a, b], 1))
        assert torch.equal(probs.argmax(1), decided)  # what vadapt infer and the app decide
        more, fewer = (decided, plain) if threshold < 0.5 else (plain, decided)
        assert int(fewer.sum()) < int(more.sum())
    base.set_change_threshold(0.9)  # a trained task, moved afterwards: decides as if built with 0.9
    assert torch.equal(base.class_logits(a, b).argmax(1), (p_changed > 0.9).long())
    assert base.plain_hparams()["change_threshold"] == 0.9  # what adapter checkpoints store
    with pytest.raises(ValueError, match="change_threshold"):
        change_task(change_threshold=1.0)
    with pytest.raises(ValueError, match="change_threshold"):
        base.set_change_threshold(0.0)


@torch.no_grad()
def test_change_threshold_applies_to_the_logged_metrics():
    base = change_task()
    strict = change_task(change_threshold=0.9)
    strict.load_state_dict(base.state_dict())
    torch.manual_seed(3)
    batch = {"image_a": torch.rand(2, 3, 32, 32), "image_b": torch.rand(2, 3, 32, 32),
             "mask": torch.randint(0, 2, (2, 32, 32))}
    for task in (base, strict):
        task.log = task.log_dict = lambda *args, **kwargs: None  # no trainer attached
        task._shared_step(batch, "test")
    positives = [int(t.stats["test"].compute()[1, 0] + t.stats["test"].compute()[1, 1]) for t in (base, strict)]
    assert positives[1] < positives[0]  # tp + fp of "changed": fewer predicted at 0.9


def test_change_class_weights_weigh_the_cross_entropy():
    task = change_task(class_weights=[1.0, 4.0])
    logits, mask = torch.randn(2, 2, 8, 8), torch.randint(0, 2, (2, 8, 8))
    expected = torch.nn.functional.cross_entropy(logits, mask, weight=torch.tensor([1.0, 4.0]))
    torch.testing.assert_close(task.criterion(logits, mask), expected)
    with pytest.raises(ValueError, match="class_weights"):
        change_task(class_weights=[1.0])
