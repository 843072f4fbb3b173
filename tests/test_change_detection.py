"""PeftCD change detection: the task, its decoders and exchange, the pair datamodule, the CLI and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from vadapt.adapters import BottleneckConfig, LoraConfig
from vadapt.backbones import Backbone
from vadapt.cli import main
from vadapt.data.change import ChangeDetectionDataModule
from vadapt.data.io import DataError
from vadapt.loading import load_task
from vadapt.tasks import ChangeDetectionTask
from vadapt.tasks.change_heads import exchange_levels

REPO = Path(__file__).resolve().parents[1]
CD_CONFIGS = sorted((REPO / "tests" / "conf").glob("cd_*.yaml"))
PEFTCD_CONFIGS = sorted((REPO / "configs").glob("peftcd_*.yaml"))
LEVIR = REPO.parent / "shared" / "data" / "levir_cd"


pytestmark = pytest.mark.usefixtures("one_thread")


def make_pairs(root: Path, names: list[str], size: int = 48, seed: int = 0) -> Path:
    """Pairs ``A/``, ``B/``, ``label/``: grey texture in A, the same plus a white square in B (= change)."""
    rng = np.random.default_rng(seed)
    for folder in ("A", "B", "label"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name in names:
        a = rng.integers(90, 150, (size, size, 3), dtype=np.uint8)
        b = np.clip(a.astype(int) + rng.integers(-8, 9, a.shape), 0, 255).astype(np.uint8)
        label = np.zeros((size, size), np.uint8)
        k = int(rng.integers(size // 6, size // 3))
        y, x = rng.integers(0, size - k, 2)
        b[y : y + k, x : x + k] = 255
        label[y : y + k, x : x + k] = 255
        Image.fromarray(a).save(root / "A" / name)
        Image.fromarray(b).save(root / "B" / name)
        Image.fromarray(label).save(root / "label" / name)
    return root


@pytest.fixture
def pairs(tmp_path: Path) -> Path:
    names = [f"train_{i}.png" for i in range(6)] + ["val_0.png", "val_1.png", "test_0.png", "test_1.png"]
    return make_pairs(tmp_path / "cd", names)


def tiny_task(backbone: str = "sam2_test", **kwargs) -> ChangeDetectionTask:
    kwargs.setdefault("adapter", LoraConfig(r=2))
    return ChangeDetectionTask(backbone=backbone, decoder_channels=16, mean=[0.5] * 3, std=[0.25] * 3, **kwargs)


def calibrated(task: ChangeDetectionTask, size: int = 56) -> ChangeDetectionTask:
    """In eval mode, with statistics of one random batch in the decoder's batch norms (an untrained decoder's
    default statistics shrink its activations to nothing, so outputs would hardly depend on the input)."""
    for module in task.decoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 1.0
    task.train()
    with torch.no_grad():
        task(torch.rand(4, 3, size, size), torch.rand(4, 3, size, size))
    return task.eval()


# ---- model ---------------------------------------------------------------------------------------------------
def test_exchange_swaps_the_chosen_levels_only():
    a = [torch.full((1, 2, 4, 4), float(i)) for i in range(4)]
    b = [torch.full((1, 2, 4, 4), 10.0 + i) for i in range(4)]
    out_a, out_b = exchange_levels(a, b, (0, 2))
    assert [float(t[0, 0, 0, 0]) for t in out_a] == [10.0, 1.0, 12.0, 3.0]
    assert [float(t[0, 0, 0, 0]) for t in out_b] == [0.0, 11.0, 2.0, 13.0]
    assert out_a[0] is b[0] and out_b[2] is a[2] and [float(t[0, 0, 0, 0]) for t in a] == [0, 1, 2, 3]


@pytest.mark.parametrize(("backbone", "decoder", "levels"), [
    ("sam2_test", "PyramidChangeDecoder", (0, 2)),
    ("dinov2_test", "DepthFusionChangeDecoder", (0, 2)),
    ("efficientnet_lite0_test", "PyramidChangeDecoder", (0, 2)),
])
def test_logits_at_input_size_for_any_backbone(backbone, decoder, levels):
    task = calibrated(tiny_task(backbone))
    assert type(task.decoder).__name__ == decoder and task.exchange == levels
    a, b = torch.rand(2, 3, 45, 70), torch.rand(2, 3, 45, 70)
    with torch.no_grad():
        logits = task(a, b)
        assert logits.shape == (2, 2, 45, 70)
        # the exchange makes the two branches mirror images: swapping the dates swaps them, the mean stays
        assert torch.allclose(logits, task(b, a), atol=1e-5)
    assert task.hparams["class_names"] == ("unchanged", "changed") and task.hparams["num_classes"] == 2
    assert ChangeDetectionTask.CAPABILITIES.num_inputs == 2


def test_exchange_is_where_the_dates_meet():
    """Without exchange each branch decodes one date alone; with it, branch A's logits depend on date B."""
    task = calibrated(tiny_task("dinov2_test"))
    a, b, b2 = torch.rand(1, 3, 28, 28), torch.rand(1, 3, 28, 28), torch.rand(1, 3, 28, 28)
    with torch.no_grad():
        assert not torch.allclose(task.branch_logits(a, b)[0], task.branch_logits(a, b2)[0])
        task.exchange = ()
        assert torch.allclose(task.branch_logits(a, b)[0], task.branch_logits(a, b2)[0])


def test_siamese_encoder_is_one_module_run_once_on_both_dates():
    task = tiny_task("sam2_test")
    assert sum(isinstance(m, Backbone) for m in task.modules()) == 1
    seen = []
    task.backbone.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    task(torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32))
    assert seen == [6]  # one call, both dates in one batch: the same weights by construction


def test_bad_exchange_levels_and_classes_are_named():
    with pytest.raises(ValueError, match=r"exchange_levels \[5\]"):
        tiny_task("sam2_test", exchange_levels=[0, 5])
    with pytest.raises(ValueError, match="num_classes=3"):
        tiny_task("sam2_test", num_classes=3)


@pytest.mark.parametrize("adapter", [LoraConfig(r=2, lora_dropout=0.1), BottleneckConfig(adapter_dim=8)],
                         ids=["lora", "bottleneck"])
def test_only_adapter_and_decoder_train_and_backbone_stays_bit_identical(adapter):
    task = tiny_task("sam2_test", adapter=adapter)
    frozen = {k: v.clone() for k, v in task.backbone.state_dict().items()
              if "lora_" not in k and "adapter" not in k}
    trainable = {n for n, p in task.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("decoder.") or "lora_" in n or "adapter" in n for n in trainable)
    assert any(n.startswith("backbone.") for n in trainable) and any(n.startswith("decoder.") for n in trainable)
    optimizer = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-2)
    task.train()
    for _ in range(3):
        batch = {"image_a": torch.rand(2, 3, 32, 32), "image_b": torch.rand(2, 3, 32, 32),
                 "mask": torch.randint(0, 2, (2, 32, 32))}
        optimizer.zero_grad()
        task._shared_step(batch, "train").backward()
        for name, p in task.named_parameters():
            assert (p.grad is not None) == (name in trainable), name
        optimizer.step()
    after = task.backbone.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen.items())


def f1_of_change(pred: torch.Tensor, truth: torch.Tensor) -> float:
    return 2 * float(((pred == 1) & (truth == 1)).sum()) / max(float((pred == 1).sum() + (truth == 1).sum()), 1.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[ChangeDetectionTask, list[float], list[float]]:
    """sam2_test + LoRA trained for 30 steps on six synthetic 48×48 pairs (32×32 crops): task, losses, F1s."""
    torch.manual_seed(0)
    root = make_pairs(tmp_path_factory.mktemp("cd"), [f"train_{i}.png" for i in range(6)])
    data = ChangeDetectionDataModule(str(root), train_images="train_*.png", scale=1 / 255, train_size=32,
                                     batch_size=6)
    data.setup("fit")
    task = ChangeDetectionTask(backbone="sam2_test", adapter=LoraConfig(r=4), decoder_channels=16,
                               tile_size=48, tile_stride=24)
    optimizer = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-2)
    losses, f1s = [], []
    task.train()
    for _ in range(30):
        batch = next(iter(data.train_dataloader()))  # all six pairs, new crops and flips each time
        optimizer.zero_grad()
        logits_a, logits_b = task.branch_logits(batch["image_a"], batch["image_b"])
        loss = (task.criterion(logits_a, batch["mask"]) + task.criterion(logits_b, batch["mask"])) / 2
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        f1s.append(f1_of_change((logits_a + logits_b).argmax(1), batch["mask"]))
    return task.eval(), losses, f1s


def test_loss_falls_and_f1_rises_on_synthetic_changes(trained):
    _, losses, f1s = trained
    assert np.mean(losses[-3:]) < 0.4 * np.mean(losses[:3])
    assert np.mean(f1s[-3:]) > 0.6 and np.mean(f1s[:3]) < 0.4


def test_sliding_window_equals_one_pass_on_one_tile_and_is_close_on_larger(trained, tmp_path):
    task = calibrated(tiny_task("dinov2_test", tile_size=56, tile_stride=28))
    a, b = torch.rand(1, 3, 56, 56), torch.rand(1, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(task.tiled_logits(a, b), task(a, b))
    # a trained model on a 96×84 pair (tile 48, stride 24): tiles see less context, the change map barely moves
    task = trained[0]
    data = ChangeDetectionDataModule(str(make_pairs(tmp_path, ["big.png"], size=96, seed=3)), test_images="*",
                                     scale=1 / 255)
    data.setup("test")
    batch = data.datasets["test"][0]
    a, b, truth = batch["image_a"][None, :, :, :84], batch["image_b"][None, :, :, :84], batch["mask"][None]
    with torch.no_grad():
        tiled, whole = task.tiled_logits(a, b), task(a, b)
    assert tiled.shape == whole.shape == (1, 2, 96, 84) and not torch.equal(tiled, whole)
    assert (tiled.argmax(1) == whole.argmax(1)).float().mean() > 0.95
    assert f1_of_change(tiled.argmax(1), truth[..., :84]) > 0.6


# ---- data ----------------------------------------------------------------------------------------------------
def test_augmentation_is_identical_for_both_dates_and_the_label(tmp_path):
    """A codes each pixel's position, B = A + 10, label = A's red > 128: any geometric mismatch shows."""
    (tmp_path / "A").mkdir(), (tmp_path / "B").mkdir(), (tmp_path / "label").mkdir()
    yy, xx = np.mgrid[:40, :48]
    a = np.stack([yy * 5, xx * 5, (yy + xx) * 2], -1).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "A" / "p.png")
    Image.fromarray(a + 10).save(tmp_path / "B" / "p.png")
    Image.fromarray(np.where(a[..., 0] > 128, 255, 0).astype(np.uint8)).save(tmp_path / "label" / "p.png")
    data = ChangeDetectionDataModule(str(tmp_path), train_images="*.png", train_size=32)
    data.setup("fit")
    dataset, seen = data.datasets["train"], set()
    for _ in range(24):
        item = dataset[0]
        image_a, image_b, mask = item["image_a"], item["image_b"], item["mask"]
        assert image_a.shape == image_b.shape == (3, 32, 32) and mask.shape == (32, 32)
        assert torch.equal(image_b - image_a, torch.full_like(image_a, 10.0))
        assert torch.equal(mask, (image_a[0] > 128).long())
        seen.add(tuple(image_a[:, 0, 0].tolist()))
    assert len(seen) > 4  # crops / flips / rotations really vary


def test_missing_partner_and_size_mismatch_are_data_errors_naming_the_file(pairs):
    (pairs / "B" / "train_3.png").unlink()
    with pytest.raises(DataError, match=r"train_3\.png.*no date B partner"):
        ChangeDetectionDataModule(str(pairs), train_images="train_*.png").setup("fit")
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(pairs / "B" / "train_3.png")
    with pytest.raises(DataError, match=r"date B .*train_3\.png is 40x48 but date A .* is 48x48"):
        ChangeDetectionDataModule(str(pairs), train_images="train_*.png").setup("fit")
    (pairs / "B" / "train_3.png").unlink()
    (pairs / "A" / "val_9.png").write_bytes((pairs / "A" / "val_0.png").read_bytes())
    with pytest.raises(DataError, match=r"val_9\.png.*no date B partner"):
        ChangeDetectionDataModule(str(pairs), train_images="train_0.png", val_images="val_*.png").setup("validate")
    Image.fromarray(np.full((48, 48), 7, np.uint8)).save(pairs / "label" / "train_0.png")
    with pytest.raises(DataError, match=r"train_0\.png has values 7"):
        ChangeDetectionDataModule(str(pairs), train_images="train_0.png").setup("fit")


def test_splits_from_patterns_list_files_and_split_folders(tmp_path):
    flat = make_pairs(tmp_path / "flat", ["a.png", "b.png", "c.png"], size=16)
    (flat / "train.txt").write_text("a.png\n\nc.png\n")
    (flat / "val.txt").write_text(f"{flat}/A/b.png  {flat}/B/b.png  {flat}/label/b.png\n")  # PeftCD's lists
    data = ChangeDetectionDataModule(str(flat), train_list="train.txt", val_list="val.txt", test_images="[bc].png")
    assert data.names("train") == ["a.png", "c.png"] and data.names("val") == ["b.png"]
    assert data.names("test") == ["b.png", "c.png"]
    for split, names in (("train", ["x.png", "y.png"]), ("test", ["z.png"])):
        make_pairs(tmp_path / "nested" / split, names, size=16)
    data = ChangeDetectionDataModule(str(tmp_path / "nested"))
    data.setup()
    assert {s: [p.name for p in d.pairs] for s, d in data.datasets.items()} == {
        "train": ["x.png", "y.png"], "test": ["z.png"]}
    assert not data.has_split("val") and data.val_dataloader() == []
    with pytest.raises(DataError, match="no train pairs: set train_images"):
        ChangeDetectionDataModule(str(flat)).setup("fit")


def test_band_statistics_cover_both_dates_of_the_training_pairs(tmp_path):
    from vadapt.data.stats import compute_band_stats

    root = make_pairs(tmp_path / "cd", ["train_0.png", "train_1.png", "val_0.png"], size=16)
    data = ChangeDetectionDataModule(str(root), train_images="train_*.png", scale=1 / 255)
    stats = compute_band_stats(data)
    pixels = [np.asarray(Image.open(root / d / f"train_{i}.png"), dtype=np.float64) / 255
              for d in "AB" for i in range(2)]
    assert stats.pixels == 4 * 16 * 16
    assert np.allclose(stats.mean, np.mean(pixels, axis=(0, 1, 2)), atol=1e-6)


@pytest.mark.skipif(not LEVIR.is_dir(), reason=f"LEVIR-CD sample not found at {LEVIR} (research-only data)")
def test_levir_cd_sample_reads_as_pairs_of_0_1_labels():
    data = ChangeDetectionDataModule(str(LEVIR), train_images="train_*.png", val_images="val_*.png",
                                     test_images="test_*.png", scale=1 / 255, batch_size=4)
    data.setup()
    assert {s: len(d) for s, d in data.datasets.items()} == {"train": 3, "val": 1, "test": 7}
    batch = next(iter(data.test_dataloader()))
    assert batch["image_a"].shape == (4, 3, 256, 256) and batch["mask"].shape == (4, 256, 256)
    assert set(batch["mask"].unique().tolist()) <= {0, 1} and float(batch["image_a"].max()) <= 1.0


# ---- CLI, pictures, checkpoints ------------------------------------------------------------------------------
def _synthetic_overrides(pairs: Path, tmp_path: Path) -> list[str]:
    return ["--data.init_args.root", str(pairs), "--data.init_args.num_workers", "0",
            "--trainer.default_root_dir", str(tmp_path)]


@pytest.mark.parametrize("config", CD_CONFIGS, ids=[c.stem for c in CD_CONFIGS])
def test_fast_dev_run_every_cd_config(config, pairs, tmp_path):
    main(["fit", "--config", str(config), "--trainer.fast_dev_run", "1", *_synthetic_overrides(pairs, tmp_path)])


@pytest.mark.parametrize("config", PEFTCD_CONFIGS, ids=[c.stem for c in PEFTCD_CONFIGS])
def test_shipped_peftcd_configs_build_and_run_on_tiny_variants(config, pairs, tmp_path):
    cfg = yaml.safe_load(config.read_text())
    args = cfg["model"]["init_args"]
    assert args["adapter"]["init_args"] == {"r": 8, "lora_alpha": 32, "lora_dropout": 0.1, "target_modules": ["qkv"]}
    args.update(backbone="sam2_test" if "sam2" in args["backbone"] else "dinov2_test", weights=None)
    path = tmp_path / config.name
    path.write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(path), "--trainer.fast_dev_run", "1", "--data.init_args.train_size", "32",
          *_synthetic_overrides(pairs, tmp_path)])


def test_params_of_the_real_dinov2_config_on_the_meta_device(capsys):
    main(["params", "--config", str(REPO / "configs" / "peftcd_dinov2_levir.yaml"), "--json"])
    counts = json.loads(capsys.readouterr().out)
    # LoRA r=8 on 24 qkv (1024 -> 3072): 786,432, equal to the official DINOv3 ViT-L count; decoder 1,934,598
    assert (counts["adapter"], counts["head"], counts["backbone"]) == (786_432, 1_934_598, 304_367_616)


def test_fit_writes_pictures_and_an_adapter_that_reproduces_outputs_then_predict_writes_masks(pairs, tmp_path):
    from vadapt.backbones import create_backbone

    weights = tmp_path / "sam2_test.pth"  # fixed backbone weights, as a user has the real ones on disk
    torch.save(create_backbone("sam2_test").model.state_dict(), weights)
    task = ChangeDetectionTask(backbone="sam2_test", weights=str(weights), adapter=LoraConfig(r=2, lora_dropout=0.1),
                               decoder_channels=16, preview_images=2)
    data = ChangeDetectionDataModule(str(pairs), train_images="train_*.png", val_images="val_*.png", scale=1 / 255,
                                     train_size=32, batch_size=2, val_batch_size=1)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", default_root_dir=tmp_path, logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, datamodule=data)
    picture = Image.open(tmp_path / "predictions" / "epoch_000.png")
    # two rows of A | B | truth | prediction, 48 px tiles enlarged x5 for reading, under a title and legend strip
    assert picture.width == 4 * 240 + 3 * 4 and picture.height > 2 * 240 + 4

    a, b = torch.rand(2, 3, 40, 56), torch.rand(2, 3, 40, 56)
    ckpt = next(tmp_path.rglob("*.ckpt"))
    with torch.no_grad():
        expected = task.eval()(a, b)
        for path in (tmp_path / "adapter.safetensors", ckpt):
            reloaded = load_task(path, raw_inputs=False).eval()  # values as the datamodule fed them (x 1/255)
            assert isinstance(reloaded, ChangeDetectionTask) and torch.equal(reloaded(a, b), expected)
            raw = load_task(path).eval()  # by default: 8-bit file values, scaled as training scaled them
            assert torch.allclose(raw(a * 255, b * 255), expected, atol=1e-5)
        untrained = ChangeDetectionTask(backbone="sam2_test", weights=str(weights), decoder_channels=16,
                                        adapter=LoraConfig(r=2, lora_dropout=0.1)).eval()
        assert not torch.allclose(untrained(a, b), expected)

    config = yaml.safe_load((REPO / "tests" / "conf" / "cd_sam2_lora.yaml").read_text())
    config["model"]["init_args"]["weights"] = str(weights)
    config["trainer"]["callbacks"] = [{"class_path": "vadapt.tasks.change_detection.ChangeMaskWriter",
                                       "init_args": {"output_dir": str(tmp_path / "masks")}}]
    (tmp_path / "cd.yaml").write_text(yaml.safe_dump(config))
    main(["predict", "--config", str(tmp_path / "cd.yaml"), "--ckpt_path", str(ckpt), "--data.init_args.predict_a",
          "A", "--data.init_args.predict_b", "B", *_synthetic_overrides(pairs, tmp_path)])
    written = sorted(p.name for p in (tmp_path / "masks").glob("*.png"))
    assert written == sorted(p.name for p in (pairs / "A").glob("*.png"))
    mask = np.asarray(Image.open(tmp_path / "masks" / "val_0.png"))
    assert mask.shape == (48, 48) and set(np.unique(mask).tolist()) <= {0, 255}


def test_lightning_validation_logs_change_metrics(pairs, tmp_path):
    data = ChangeDetectionDataModule(str(pairs), train_images="train_*.png", val_images="val_*.png",
                                     scale=1 / 255, train_size=32, batch_size=3)
    task = tiny_task("dinov2_test", preview_images=0)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", default_root_dir=tmp_path, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, datamodule=data)
    logged = dict(trainer.callback_metrics)
    trainer.test(task, datamodule=ChangeDetectionDataModule(str(pairs), test_images="test_*.png",
                                                            train_images="train_0.png", scale=1 / 255))
    logged.update(trainer.callback_metrics)
    for stage in ("train", "val", "test"):
        assert {f"{stage}/{k}" for k in ("precision", "recall", "f1", "iou", "oa")} <= set(logged)
    assert 0.0 <= float(logged["test/oa"]) <= 1.0 and "val/loss" in logged
