"""Shared fixtures: tiny models and small data made by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and immune to a busy second core (idle OpenMP threads spin; 3x
    slower under load). Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def scene_npz(tmp_path: Path) -> Path:
    """A 96×96 4-band scene whose mask is learnable from the bands: class = (nir > red) + bright."""
    rng = np.random.default_rng(0)
    h = w = 96
    yy, xx = np.mgrid[:h, :w]
    red = (np.sin(xx / 7.0) > 0).astype(np.float32)
    nir = (np.cos(yy / 9.0) > 0).astype(np.float32)
    img = np.stack([red, 1 - red, 0.5 * np.ones_like(red), nir], -1) + 0.05 * rng.standard_normal((h, w, 4))
    msk = (nir > red).astype(np.uint8) + 1  # codes 1, 2
    path = tmp_path / "scene.npz"
    np.savez(path, img=img.astype(np.float32), msk=msk, bands=np.array(["red", "green", "blue", "nir"]))
    return path


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch) -> None:
    """Configs name data/ relative to the repository, as users run them from there."""
    monkeypatch.chdir(REPO)


def train_steps(task, batch: dict, steps: int, lr: float = 3e-3) -> list[float]:
    """``steps`` AdamW steps of ``task._shared_step(batch, "train")`` on the trainable parameters; the losses."""
    import torch

    optimizer = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=lr)
    task.train()
    losses = []
    for _ in range(steps):
        loss = task._shared_step(batch, "train")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> str:
    """Upstream-format weights of the tiny Point-MAE, so a reloaded point task has the very same frozen backbone."""
    import torch

    from vadapt.backbones import create_backbone

    path = tmp_path_factory.mktemp("weights") / "point_mae_test.pth"
    torch.save(create_backbone("point_mae_test").model.state_dict(), path)
    return str(path)


@pytest.fixture(scope="session")
def effnet_weights(tmp_path_factory) -> str:
    """Upstream-format weights of the tiny EfficientNet, so a reloaded task has the very same frozen backbone."""
    import torch

    from vadapt.backbones import create_backbone

    path = tmp_path_factory.mktemp("weights") / "efficientnet_lite0_test.pth"
    torch.save(create_backbone("efficientnet_lite0_test").model.state_dict(), path)
    return str(path)


def assert_backbone_frozen_while_head_and_lora_train(task, batch: dict) -> None:
    """A few training steps of a task with a LoRA adapter: the backbone's other state (weights and batch-norm
    statistics) stays bit-identical, gradients reach exactly the trainable parameters, which are the head's and
    LoRA's, and the parameter counts add up."""
    import math

    import torch

    frozen = {k: v.clone() for k, v in task.state_dict().items() if k.startswith("backbone.") and "lora_" not in k}
    assert all(math.isfinite(v) for v in train_steps(task, batch, steps=3))
    for k, v in task.state_dict().items():
        if k in frozen:
            assert torch.equal(v, frozen[k]), k
    with_grad = {k for k, p in task.named_parameters() if p.grad is not None}
    trainable = {k for k, p in task.named_parameters() if p.requires_grad}
    assert with_grad == trainable
    assert all(k.startswith("head.") or "lora_" in k for k in trainable)
    assert any(k.startswith("head.") for k in trainable) and any("lora_" in k for k in trainable)
    counts = task.parameter_counts()
    assert counts["trainable"] == counts["adapter"] + counts["head"] and counts["adapter"] > 0


def sam_upstream_state(task) -> dict:
    """A promptable task's frozen SAM in the official checkpoint's key layout (``image_encoder.*``,
    ``prompt_encoder.*``, ``mask_decoder.*``): what a reloaded task with random frozen weights must be given."""
    state = {f"image_encoder.{k}": v for k, v in task.backbone.model.state_dict().items()}
    state.update({f"prompt_encoder.{k}": v for k, v in task.prompt_encoder.state_dict().items()})
    state.update({f"mask_decoder.{k}": v for k, v in task.mask_decoder.state_dict().items()})
    return state


def change_detection_checkpoint(folder: Path, seed: int | None = None) -> Path:
    """A tiny change-detection adapter checkpoint (EfficientNet-Lite test backbone, LoRA r=2, random trained
    weights) and its backbone weights file, in ``folder``."""
    from vadapt.adapters import LoraConfig
    from vadapt.backbones import create_backbone
    from vadapt.checkpoint import save_adapter
    from vadapt.tasks import ChangeDetectionTask

    if seed is not None:
        torch.manual_seed(seed)
    weights = folder / "backbone.pth"
    torch.save(create_backbone("efficientnet_lite0_test").model.state_dict(), weights)
    task = ChangeDetectionTask(backbone="efficientnet_lite0_test", weights=str(weights), adapter=LoraConfig(r=2),
                               decoder_channels=16, mean=[0.5] * 3, std=[0.25] * 3)
    with torch.no_grad():
        for p in task.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
    return save_adapter(task, folder / "cd.safetensors")


def depth_checkpoint(folder: Path, resize: tuple[int, int]) -> Path:
    """A tiny depth checkpoint (``depth_anything_v2_test``; random disparity heads, so depth varies over an image)
    trained on 8-bit frames resized to ``resize``, its frozen random backbone in ``folder/backbone.pth`` (as users
    have real weights): ``folder/depth.safetensors``."""
    from vadapt.backbones import create_backbone
    from vadapt.checkpoint import save_adapter
    from vadapt.preprocessing import Preprocessing
    from vadapt.tasks import SelfSupervisedDepthTask

    torch.manual_seed(0)
    weights = folder / "backbone.pth"
    torch.save(create_backbone("depth_anything_v2_test").model.state_dict(), weights)
    task = SelfSupervisedDepthTask(backbone="depth_anything_v2_test", weights=str(weights))
    with torch.no_grad():
        for p in task.heads.parameters():
            p.normal_(0, 0.3)
    task.preprocessing = Preprocessing(scale=1 / 255, nodata=None, resize=resize, source_size=(60, 80))
    return save_adapter(task, folder / "depth.safetensors")
