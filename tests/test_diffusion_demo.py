"""The offline diffusion demo: ``pretrain_diffusion_base`` / ``vadapt pretrain-diffusion`` and the ResAdapter
shapes configs (benchmarks/bench_resadapter.py measures the demo itself)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from vadapt.cli import main
from vadapt.tasks.diffusion_pretrain import pretrain_diffusion_base
from vadapt.tasks.generation import DiffusionAdapterTask

REPO = Path(__file__).resolve().parents[1]
TINY = dict(backbone="pixel_test", resolution=8, epochs=1, batch_size=2, num_samples=4, progress_bar=False,
            accelerator="cpu")


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "base"
    return pretrain_diffusion_base(out, **TINY)


def test_pretrained_base_is_a_diffusers_folder_that_loads_as_weights(tiny_base):
    assert (tiny_base / "model_index.json").is_file() and (tiny_base / "unet" / "config.json").is_file()
    assert json.loads((tiny_base / "pretrain.json").read_text())["steps"] == 2
    assert not (tiny_base / "vae").exists()  # pixel space
    assert [p.name for p in tiny_base.parent.iterdir()] == ["base"]  # no temporary folder left behind
    task = DiffusionAdapterTask(backbone="pixel_test", weights=str(tiny_base))
    random = DiffusionAdapterTask(backbone="pixel_test", weights=None)
    trained = dict(task.backbone.unet.named_parameters())
    assert all(not p.requires_grad for p in trained.values())  # loaded frozen
    assert any(not torch.equal(p, trained[k]) for k, p in random.backbone.unet.named_parameters())
    images = task.generate(["a red circle"], 8, 8, num_inference_steps=2, guidance_scale=1.0)
    assert images.shape == (1, 3, 8, 8)


def test_written_weights_are_the_moving_average_not_the_last_step():
    from types import SimpleNamespace

    from vadapt.tasks.diffusion_pretrain import UNetEMA

    unet = torch.nn.Linear(3, 3)
    module = SimpleNamespace(backbone=SimpleNamespace(unet=unet))
    ema = UNetEMA(0.999)
    ema.on_fit_start(None, module)
    for value in (0.0, 1.0):  # two optimiser steps: the weights become 0, then 1
        with torch.no_grad():
            for p in unet.parameters():
                p.fill_(value)
        ema.on_train_batch_end(None, module)
    ema.on_fit_end(None, module)
    for p in unet.parameters():  # diffusers' warm-up: the average of step 2 weighs both steps
        assert (0 < p).all() and (p < 1).all() and torch.allclose(p, p.flatten()[0].expand_as(p))
    with pytest.raises(ValueError, match="ema_decay"):
        UNetEMA(1.0)


def test_pretrain_refuses_an_existing_output_and_bad_arguments(tiny_base, tmp_path):
    with pytest.raises(FileExistsError, match="already exists"):
        pretrain_diffusion_base(tiny_base, **TINY)
    with pytest.raises(ValueError, match="max_minutes"):
        pretrain_diffusion_base(tmp_path / "x", max_minutes=0, **TINY)
    assert not (tmp_path / "x").exists()


def test_cli_pretrain_diffusion_writes_the_base(tmp_path, capsys):
    out = tmp_path / "cli_base"
    code = main(["pretrain-diffusion", "--output", str(out), "--backbone", "pixel_test", "--resolution", "8",
                 "--epochs", "3", "--steps", "1", "--num-samples", "2", "--batch-size", "2", "--ema-decay", "0.9"])
    assert code == 0 and (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    record = json.loads((out / "pretrain.json").read_text())
    assert record["steps"] == 1 and record["ema_decay"] == 0.9
    assert "weights:" in capsys.readouterr().out


def test_cli_pretrain_diffusion_errors_are_one_sentence(tmp_path, capsys):
    existing = tmp_path / "exists"
    existing.mkdir()
    assert main(["pretrain-diffusion", "--output", str(existing), "--backbone", "pixel_test"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["pretrain-diffusion", "--output", str(tmp_path / "a"), "--backbone", "no_such_base"]) == 2
    assert "no_such_base" in capsys.readouterr().err
    assert main(["pretrain-diffusion", "--output", str(tmp_path / "b"), "--epochs", "0"]) == 2
    assert "epochs" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: a non-integer resolution
        main(["pretrain-diffusion", "--output", str(tmp_path / "c"), "--resolution", "big"])
    assert not any((tmp_path / n).exists() for n in "abc")


def test_tiny_resadapter_shapes_config_fast_dev_run(tmp_path):
    main(["fit", "--config", str(REPO / "tests" / "conf" / "resadapter_shapes_test.yaml"),
          "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path)])


def test_demo_config_runs_on_the_tiny_base(tiny_base, tmp_path):
    """configs/resadapter_shapes_demo.yaml as written, bar the base (the tiny one pretrained above)."""
    cfg = yaml.safe_load((REPO / "configs" / "resadapter_shapes_demo.yaml").read_text())
    assert cfg["model"]["init_args"]["backbone"] == "pixel_demo"
    cfg["model"]["init_args"].update(backbone="pixel_test", weights=str(tiny_base))
    cfg["data"]["init_args"].update(num_samples=8, batch_size=2)
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(path), "--trainer.fast_dev_run", "true", "--trainer.default_root_dir",
          str(tmp_path)])


def test_pixel_demo_base_has_resadapter_targets():
    from vadapt.adapters.resadapter import ResAdapterConfig

    task = DiffusionAdapterTask(backbone="pixel_demo", adapter=ResAdapterConfig())
    assert task.backbone.vae is None and task.backbone.vae_scale_factor == 1
    names = [n for n, p in task.named_parameters() if p.requires_grad]
    assert sum("lora_A" in n for n in names) == 4  # 2 down- + 2 up-sampler convs
    assert 0 < sum(p.numel() for p in task.parameters() if p.requires_grad) < task.backbone.parameter_counts()["unet"]
