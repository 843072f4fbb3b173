"""The CLI on tiny YAMLs, adapter checkpoints, export (merged, ONNX) and their error messages."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from vadapt.adapters import LoraConfig
from vadapt.checkpoint import AdapterCheckpointError, load_adapter_into, save_adapter
from vadapt.cli import main
from vadapt.data.scene import SceneDataModule
from vadapt.export import export
from vadapt.loading import load_adapter, load_task
from vadapt.tasks import SemanticSegmentationTask

REPO = Path(__file__).resolve().parents[1]
CONF = Path(__file__).parent / "conf"
CONFIGS = sorted(CONF.glob("*.yaml"))  # tiny YAMLs, one per backbone family
SHIPPED = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vadapt.cli", *args], capture_output=True, text=True)


def test_help_lists_every_subcommand():
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("fit", "validate", "test", "predict", "list", "params", "export"):
        assert command in out.stdout


def test_list_backbones_shows_real_entries_and_hides_tiny(capsys):
    main(["list", "backbones"])
    text = capsys.readouterr().out
    assert "sam_vit_b" in text and "vit_base_patch14_dinov2" in text and "dinov2_test" not in text


def with_generated_shapes(cfg: dict, tmp_path: Path) -> dict:
    """A config reading a ``make-shapes`` set (root ``data/shapes*``) that is absent reads a small one made in
    ``tmp_path`` (the configs' own first step: ``vadapt make-shapes --output ROOT``)."""
    from vadapt.data.shapes import make_shapes

    data = cfg["data"]
    root = str(data["init_args"].get("root", ""))
    if root.startswith("data/shapes") and not (REPO / root).is_dir():
        shapes = tmp_path / "shapes"
        args = cfg["model"]["init_args"]
        make_shapes(shapes, classes=args.get("num_classes", args.get("num_categories")), per_class=5, points=256,
                    parts=bool(data["init_args"].get("parts", False)))
        data["init_args"].update(root=str(shapes), num_points=min(256, data["init_args"].get("num_points", 256)),
                                 batch_size=4)
    return cfg


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_fast_dev_run_every_config(config, tmp_path):
    cfg = with_generated_shapes(yaml.safe_load(config.read_text()), tmp_path)
    data_root = str(cfg["data"]["init_args"].get("root", ""))
    if "../shared" in data_root and not (REPO / data_root).is_dir():
        pytest.skip(f"{config.name} reads {data_root}, which is absent")
    path = tmp_path / config.name
    path.write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(path), "--trainer.fast_dev_run", "1", "--trainer.default_root_dir", str(tmp_path)])


@pytest.mark.parametrize("config", SHIPPED, ids=[c.stem for c in SHIPPED])
def test_fast_dev_run_every_shipped_config(config, tmp_path):
    """Each configs/*.yaml runs as written where its weights are here (the quickstart: real EfficientNet-Lite0),
    else on the tiny variant of the same backbone family (torchgeo's way of testing its configs)."""
    from vadapt.backbones import BACKBONES
    from vadapt.weights import WeightsNotFoundError, resolve_weights

    cfg = yaml.safe_load(config.read_text())
    args = cfg["model"]["init_args"]
    entry = BACKBONES.get(args["backbone"])
    if entry.family == "diffusion":  # image / clip / view sizes and tiny bases differ per kind: explicit twins
        pytest.skip(f"{config.name}: its tiny twin in tests/conf runs in test_generation.py / test_diffusion_demo.py")
    try:
        resolve_weights(args.get("weights"), entry.weights, entry.name)
    except WeightsNotFoundError:
        tiny = [n for n in BACKBONES if BACKBONES.get(n).tiny and BACKBONES.get(n).family == entry.family]
        args["backbone"] = tiny[0]
        args["weights"] = None
        if args.pop("img_size", None) and cfg["model"]["class_path"].endswith("PromptableSegmentationTask"):
            args["img_size"] = 64  # SAM-family prompting pads inputs to img_size: shrink inputs with it
            cfg["data"]["init_args"].update(train_size=64, val_size=64)
        adapter = args.get("adapter") or {}
        if str(adapter.get("class_path", "")).endswith("SaltConfig"):  # ViT-B's absolute ranks exceed tiny widths
            for key in ("r", "rank_pattern"):
                adapter["init_args"].pop(key, None)
    cfg = with_generated_shapes(cfg, tmp_path)
    data_root = str(cfg["data"]["init_args"].get("root", ""))
    if data_root and not (REPO / data_root).is_dir():  # e.g. ModelNet40 / ScanObjectNN: not downloadable here
        pytest.skip(f"{config.name} reads {data_root}, which is absent (its model: test_point_configs_params)")
    path = tmp_path / config.name
    path.write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(path), "--trainer.fast_dev_run", "1", "--trainer.default_root_dir", str(tmp_path)])


def test_typo_in_a_config_key_is_named(tmp_path):
    config = yaml.safe_load((CONF / "seg_dinov2_lora.yaml").read_text())
    config["model"]["init_args"]["adapter"]["init_args"]["rank"] = 4
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config))
    out = run_cli("fit", "--config", str(path), "--trainer.fast_dev_run", "1")
    assert out.returncode != 0
    assert "rank" in out.stderr


def test_params_json_counts_adapter_and_head(capsys):
    main(["params", "--config", str(CONF / "seg_dinov2_lora.yaml"), "--json"])
    counts = json.loads(capsys.readouterr().out)
    # LoRA r=4 on the fused qkv (32 -> 96) of 4 blocks: 4 * (4*32 + 96*4)
    assert counts["adapter"] == 4 * (4 * 32 + 96 * 4)
    assert counts["trainable"] == counts["adapter"] + counts["head"]
    assert counts["total"] == counts["backbone"] + counts["trainable"]


@pytest.fixture(scope="module")
def backbone_weights(tmp_path_factory) -> str:
    """Upstream-format weights of the tiny backbones, as a user would have the real ones on disk."""
    from vadapt.backbones import create_backbone

    folder = tmp_path_factory.mktemp("weights")
    for name in ("dinov2_test", "vit_patch16_test"):
        torch.save(create_backbone(name).model.state_dict(), folder / f"{name}.pth")
    return str(folder)


def make_task(weights_dir: str, **overrides) -> SemanticSegmentationTask:
    backbone = overrides.pop("backbone", "dinov2_test")
    kwargs = dict(
        backbone=backbone, weights=f"{weights_dir}/{backbone}.pth", bands=("red", "green", "blue", "nir"),
        num_classes=3, adapter=LoraConfig(r=4), mean=[0.5] * 4, std=[0.5] * 4, lr=5e-3,
    )
    kwargs.update(overrides)
    return SemanticSegmentationTask(**kwargs)


@pytest.fixture
def trained(tmp_path, scene_npz, backbone_weights):
    """A task fitted for two short epochs through Lightning, with its checkpoint and datamodule."""
    data = SceneDataModule([str(scene_npz)], bands=["red", "green", "blue", "nir"], crop_size=28, batch_size=4,
                           samples_per_epoch=16, label_map={1: 1, 2: 2})
    task = make_task(backbone_weights)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", default_root_dir=tmp_path, logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, datamodule=data)
    ckpt = next(tmp_path.rglob("*.ckpt"))
    return task, ckpt, data, trainer


def validate(task, data) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as root:  # the per-epoch picture goes there, not into the repository
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=root)
        return {k: float(v) for k, v in trainer.validate(task, datamodule=data, verbose=False)[0].items()}


def test_lightning_checkpoint_holds_only_trained_tensors_and_exports(trained, tmp_path, backbone_weights):
    task, ckpt, data, _ = trained
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert not any(k.startswith("backbone.") and "lora_" not in k for k in state)
    out = tmp_path / "adapter.safetensors"
    lines = list(export(ckpt, out))
    assert out.is_file() and "wrote" in lines[-1]
    reloaded = load_adapter(out).eval()
    task.eval()
    x = torch.rand(2, 4, 56, 42)
    with torch.no_grad():
        assert torch.equal(task(x), reloaded(x))
    after_reload, after_training = validate(reloaded, data), validate(task, data)
    assert after_reload == pytest.approx(after_training, nan_ok=True, rel=0, abs=0)
    # the backbone weights stayed bit-identical to a fresh frozen backbone
    fresh = make_task(backbone_weights)
    frozen = {k for k, p in task.named_parameters() if not p.requires_grad}
    for k, v in task.state_dict().items():
        if k in frozen:
            assert torch.equal(v, fresh.state_dict()[k]), k


def test_merged_export_matches_and_needs_no_adapter(trained, tmp_path):
    task, ckpt, _, _ = trained
    merged_path = tmp_path / "merged.safetensors"
    list(export(ckpt, merged_path, merge=True))
    merged = load_adapter(merged_path).eval()
    assert merged.adapter_config is None
    x = torch.rand(2, 4, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), task.eval()(x), atol=1e-5, rtol=1e-5)


def test_onnx_export_checked_with_onnxruntime(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    _, ckpt, _, _ = trained
    out = tmp_path / "model.onnx"
    lines = list(export(ckpt, out, onnx=True, input_size=(56, 56)))
    assert out.is_file() and "onnxruntime" in lines[-1]


def test_checkpoint_for_another_model_is_refused_clearly(tmp_path, backbone_weights):
    path = save_adapter(make_task(backbone_weights), tmp_path / "r4.safetensors")
    with pytest.raises(AdapterCheckpointError, match=r"made for .*'r': 4.*wrong shape"):
        load_adapter_into(make_task(backbone_weights, adapter=LoraConfig(r=8)), path)
    with pytest.raises(AdapterCheckpointError, match="vit_patch16_test"):
        load_adapter_into(make_task(backbone_weights, backbone="vit_patch16_test"), path)
    not_ours = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(not_ours))
    with pytest.raises(AdapterCheckpointError, match="without a vadapt manifest"):
        load_task(not_ours)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01garbage")
    with pytest.raises(AdapterCheckpointError, match="not a safetensors file"):
        load_task(junk)


def test_manifest_reproduces_preprocessing(tmp_path, backbone_weights):
    task = make_task(backbone_weights, mean=[0.1, 0.2, 0.3, 0.4], std=[1, 2, 3, 4], class_names=["a", "b", "c"])
    path = save_adapter(task, tmp_path / "a.safetensors")
    from vadapt.checkpoint import read_manifest

    manifest = read_manifest(path)
    assert manifest["bands"] == ["red", "green", "blue", "nir"]
    assert manifest["mean"] == pytest.approx([0.1, 0.2, 0.3, 0.4]) and manifest["std"] == [1, 2, 3, 4]
    assert manifest["class_names"] == ["a", "b", "c"] and manifest["vadapt_version"]
    assert manifest["adapter"]["class_path"].endswith("LoraConfig")
    reloaded = load_adapter(path)
    assert torch.equal(reloaded.input_mean, task.input_mean) and torch.equal(reloaded.input_std, task.input_std)


def test_training_raises_validation_miou(trained, backbone_weights):
    task, _, data, _ = trained
    untrained = make_task(backbone_weights)
    before, after = validate(untrained, data), validate(task, data)
    assert after["val/miou"] > before["val/miou"] + 0.05, (before, after)
    assert after["val/loss"] < before["val/loss"]


def test_cli_fit_then_validate_from_checkpoint(tmp_path):
    config = str(CONF / "seg_dinov2_lora.yaml")
    main(["fit", "--config", config, "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path),
          "--trainer.enable_checkpointing", "true", "--trainer.limit_val_batches", "1"])
    ckpt = next(tmp_path.rglob("*.ckpt"))
    assert (tmp_path / "adapter.safetensors").is_file()
    main(["validate", "--config", config, "--ckpt_path", str(ckpt), "--trainer.limit_val_batches", "1",
          "--trainer.default_root_dir", str(tmp_path / "validate")])
    assert (tmp_path / "validate" / "config.yaml").is_file()


def test_missing_data_folder_stops_with_one_sentence(tmp_path):
    config = yaml.safe_load((Path(__file__).parents[1] / "configs" / "lora_sam_vitb_kvasir.yaml").read_text())
    config["model"]["init_args"].update(backbone="sam_test", weights=None, img_size=None)
    config["data"]["init_args"]["root"] = str(tmp_path / "no_such_folder")
    path = tmp_path / "missing.yaml"
    path.write_text(yaml.safe_dump(config))
    out = run_cli("fit", "--config", str(path))
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "no_such_folder" in last


def test_full_fine_tune_checkpoint_keeps_batchnorm_statistics(tmp_path, scene_npz):
    """freeze_backbone=False (the baselines): the checkpoint carries every trained tensor, BN statistics too."""
    data = SceneDataModule([str(scene_npz)], bands=["red", "green", "blue", "nir"], crop_size=32, batch_size=4,
                           samples_per_epoch=8, label_map={1: 0, 2: 1})
    task = SemanticSegmentationTask(backbone="efficientnet_lite0_test", bands=("red", "green", "blue", "nir"),
                                    num_classes=2, mean=[0.5] * 4, std=[0.5] * 4, head="fpn", head_channels=16,
                                    freeze_backbone=False, adapter=LoraConfig(r=2))
    assert all(p.requires_grad for p in task.backbone.parameters())
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", default_root_dir=tmp_path, enable_checkpointing=False,
                        logger=L.pytorch.loggers.CSVLogger(tmp_path), enable_progress_bar=False)
    trainer.fit(task, datamodule=data)  # a dataclass adapter config + a logger writing hparams.yaml
    assert any("running_mean" in k for k in task.adapter_state_dict())
    path = save_adapter(task, tmp_path / "full.safetensors")
    reloaded = load_adapter(path).eval()
    x = torch.rand(1, 4, 64, 64)
    with torch.no_grad():
        assert torch.equal(task.eval()(x), reloaded(x))


def test_scene_crops_repeat_with_the_seed(scene_npz):
    def crops() -> torch.Tensor:
        L.seed_everything(3)
        data = SceneDataModule([str(scene_npz)], bands=["red", "nir"], crop_size=16, batch_size=4,
                               samples_per_epoch=4, label_map={1: 0, 2: 1})
        data.setup()
        return next(iter(data.train_dataloader()))["image"]

    assert torch.equal(crops(), crops())


@pytest.mark.parametrize(("config", "counts"), [
    # IDPT: prompt module 1,330,176 + cls token / pos 768 (adapter); official head on [cls, prompt, max] -> 40
    ("idpt_pointmae_modelnet40.yaml", {"adapter": 1_330_944, "head": 372_264, "trainable": 1_703_208}),
    # Point-PEFT (G = 128): adapters 404,784 + official head on [cls, max] -> 15 (official registered: 773,017)
    ("pointpeft_pointmae_scanobjectnn.yaml", {"adapter": 404_784, "head": 267_535, "trainable": 672_319}),
    # Any2Point on DINOv2 ViT-B/14: tokenizer + final norm + guided adapters 800,760 (paper: about 0.80 M) + head
    ("any2point_dinov2_modelnet40.yaml", {"adapter": 800_760, "head": 470_568, "trainable": 1_271_328}),
    # Any2Point on CLIP ViT-L/14's text transformer: 948,312 (paper: about 0.95 M) + the 15-class head
    ("any2point_clip_text_scanobjectnn.yaml", {"adapter": 948_312, "head": 464_143, "trainable": 1_412_455}),
])
def test_point_configs_params(config, counts, capsys):
    """The real-size point configs build (meta device, no weights) with the adapters' official counts."""
    main(["params", "--config", str(REPO / "configs" / config), "--json"])
    got = json.loads(capsys.readouterr().out)
    assert {k: got[k] for k in counts} == counts
