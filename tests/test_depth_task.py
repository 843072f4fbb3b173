"""The self-supervised depth task (EndoDAC): view synthesis on rendered endoscopy, what trains and what stays
frozen, the intrinsics head, checkpoints, and both shipped configs on tiny variants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vadapt.adapters import DVLoraConfig
from vadapt.backbones import create_backbone
from vadapt.checkpoint import save_adapter
from vadapt.cli import main
from vadapt.data.endoscopy import make_endoscopy, render_sequence
from vadapt.geometry.reprojection import photometric_error, warp_source
from vadapt.loading import load_adapter
from vadapt.preprocessing import Preprocessing
from vadapt.tasks import SelfSupervisedDepthTask
from vadapt.tasks.depth_nets import PoseNet

REPO = Path(__file__).resolve().parents[1]


def rendered(seed: int, size=(64, 80), frames: int = 9, shading: bool = False):
    seq = render_sequence(num_frames=frames, size=size, seed=seed, shading=shading)
    images = torch.from_numpy(seq.frames).permute(0, 3, 1, 2).double()
    depth = torch.from_numpy(seq.depth)[:, None].double()
    return seq, images, depth, torch.from_numpy(seq.poses)


def relative(poses: torch.Tensor, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Target camera -> source camera, from camera-to-world poses."""
    return torch.linalg.inv(poses[source]) @ poses[target]


def test_warp_with_true_geometry_reproduces_the_next_rendered_frame():
    seq, images, depth, poses = rendered(3, size=(96, 128))
    t = torch.arange(0, 6)
    K = torch.from_numpy(seq.K).expand(len(t), 3, 3)
    warped = warp_source(images[t + 2], depth[t], K, relative(poses, t, t + 2))
    true_error = photometric_error(warped, images[t]).median()
    assert true_error < 0.02
    assert photometric_error(images[t + 2], images[t]).median() > 3 * true_error  # the frames do differ
    wrong = warp_source(images[t + 2], depth[t] * 0.5, K, relative(poses, t, t + 2))
    assert photometric_error(wrong, images[t]).median() > 2 * true_error


@pytest.mark.parametrize("seed", [3, 5, 7])
def test_the_photometric_loss_is_lowest_at_the_true_focal_length(seed):
    """What makes the intrinsics learnable: with true depth and poses the loss has its minimum at the true focal
    length (10 % off on either side is worse)."""
    seq, images, depth, poses = rendered(seed, size=(96, 128))
    t = torch.arange(0, 6)
    losses = {}
    for factor in (0.8, 0.9, 1.0, 1.1, 1.25):
        K = torch.from_numpy(seq.K).clone()
        K[:2, :2] *= factor
        warped = warp_source(images[t + 2], depth[t], K.expand(len(t), 3, 3), relative(poses, t, t + 2))
        losses[factor] = photometric_error(warped, images[t]).mean().item()
    assert min(losses, key=losses.get) == 1.0, losses


def test_the_intrinsics_head_recovers_the_focal_length_by_training():
    """The pose net's intrinsics head, trained on the photometric loss with true depth and poses (its encoder
    frozen, features cached: seconds), lands within 10 % of the true focal length and principal point."""
    torch.manual_seed(0)
    seq, images, depth, poses = rendered(5)
    images, depth = images.float(), depth.float()
    net = PoseNet("resnet18").eval()
    t = torch.arange(0, 7)
    with torch.no_grad():
        feats = net.features(images[t + 2], images[t])
    start = net.intrinsics(feats, 64, 80)[:, 0, 0].mean().item()
    params = list(net.focal.parameters()) + list(net.offset.parameters())
    optimizer = torch.optim.Adam(params, 3e-2)
    rel = relative(poses, t, t + 2).float()
    for _ in range(400):
        K = net.intrinsics(feats, 64, 80)
        loss = photometric_error(warp_source(images[t + 2], depth[t], K, rel), images[t]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    K = net.intrinsics(feats, 64, 80).mean(0).detach().double().numpy()
    focal = seq.K[0, 0]
    assert abs(start - focal) / focal > 0.1  # it had something to learn
    np.testing.assert_allclose([K[0, 0], K[1, 1]], [focal, focal], rtol=0.1)
    np.testing.assert_allclose([K[0, 2], K[1, 2]], seq.K[:2, 2], rtol=0.1)


def batch_of(seed: int = 0, size=(56, 70), count: int = 2) -> dict:
    seq = render_sequence(num_frames=count + 2, size=size, seed=seed, shading=True)
    frames = torch.from_numpy(seq.frames).permute(0, 3, 1, 2).float()
    sample = torch.stack([torch.stack([frames[i + 1], frames[i], frames[i + 2]]) for i in range(count)])
    return {"frames": sample, "frames_aug": sample, "K": torch.from_numpy(seq.K).float().expand(count, 3, 3),
            "depth": torch.from_numpy(seq.depth[1 : count + 1])[:, None].float()}


@pytest.mark.parametrize("backbone", ["depth_anything_v2_test", "efficientnet_lite0_test"])
def test_training_moves_only_adapter_heads_and_pose_net(backbone):
    torch.manual_seed(0)
    adapter = DVLoraConfig(r=2, neck_blocks=[1, 3], warm_up_steps=0)
    task = SelfSupervisedDepthTask(backbone=backbone, adapter=adapter, lr=1e-3)
    frozen = {k: v.clone() for k, v in task.backbone.state_dict().items()
              if "lora_" not in k and ".adapter." not in k}
    optimizer = torch.optim.Adam([p for p in task.parameters() if p.requires_grad], 1e-3)
    batch = batch_of()
    losses = []
    for _ in range(4):
        loss = task._shared_step(batch, "train")
        optimizer.zero_grad()
        loss.backward()
        trained = {n for n, p in task.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        optimizer.step()
        losses.append(loss.item())
    allowed = ("backbone.", "heads.", "decoder.", "pose_net.")
    assert trained and all(n.startswith(allowed) for n in trained)
    in_backbone = {n for n in trained if n.startswith("backbone.")}
    assert in_backbone and all("lora_U" in n or "lora_V" in n or ".adapter." in n for n in in_backbone), in_backbone
    assert any(n.startswith("pose_net.focal") for n in trained)  # the intrinsics head learns
    after = task.backbone.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())  # the pretrained weights, bit for bit
    assert losses[-1] < losses[0]


def test_known_intrinsics_are_used_when_not_learnt():
    task = SelfSupervisedDepthTask(backbone="depth_anything_v2_test", learn_intrinsics=False)
    batch = batch_of()
    _, out = task.view_synthesis_loss(batch)
    assert torch.equal(out["K"], batch["K"])
    batch["K"] = torch.full_like(batch["K"], float("nan"))
    with pytest.raises(ValueError, match="learn_intrinsics"):
        task.view_synthesis_loss(batch)


def test_adapter_checkpoint_round_trip_predicts_the_same_depth(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "backbone.pth"  # random frozen weights, in a file so that loading rebuilds them
    torch.save(create_backbone("depth_anything_v2_test").model.state_dict(), weights)
    task = SelfSupervisedDepthTask(backbone="depth_anything_v2_test", weights=str(weights),
                                   adapter=DVLoraConfig(r=2, neck_blocks=[3]))
    with torch.no_grad():
        for p in task.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    task.use_preprocessing(Preprocessing(scale=1 / 255, resize=(56, 70)), raw_inputs=False)
    path = save_adapter(task.eval(), tmp_path / "depth.safetensors")
    assert not any(k.startswith("pose_net.") for k in task.adapter_state_dict())  # the pose net stays out
    loaded = load_adapter(path)
    assert loaded.capabilities.output == "depth_map"
    image = torch.rand(1, 3, 56, 70)
    with torch.no_grad():
        torch.testing.assert_close(loaded.predict_depth(image * 255), task(image))  # raw file values in


def test_lightning_checkpoint_keeps_the_pose_net_and_loads(tmp_path):
    import lightning as L

    from vadapt.loading import load_task

    torch.manual_seed(0)
    task = SelfSupervisedDepthTask(backbone="depth_anything_v2_test")
    with torch.no_grad():
        task.pose_net.focal.weight.add_(1.0)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", default_root_dir=tmp_path)
    trainer.strategy.connect(task)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    loaded = load_task(tmp_path / "last.ckpt")
    assert torch.equal(loaded.pose_net.focal.weight, task.pose_net.focal.weight)


@pytest.fixture(scope="module")
def endoscopy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("endo") / "data"
    make_endoscopy(root, sequences=3, frames=6, size=(56, 70), progress=False)
    return root


@pytest.mark.parametrize("name,backbone", [("endodac_quickstart.yaml", "efficientnet_lite0_test"),
                                           ("endodac_depthanything_scared.yaml", "depth_anything_v1_test")])
def test_shipped_configs_fast_dev_run_on_tiny_variants(name, backbone, endoscopy, tmp_path):
    cfg = yaml.safe_load((REPO / "configs" / name).read_text())
    cfg["model"]["init_args"].update(backbone=backbone, weights=None)
    cfg["model"]["init_args"]["adapter"]["init_args"]["neck_blocks"] = [1, 3]
    data = cfg["data"]["init_args"]
    data.update(root=str(endoscopy), layout="folders", size=[56, 70], batch_size=2, num_workers=0)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(path), "--trainer.fast_dev_run", "1", "--trainer.default_root_dir", str(tmp_path)])


def test_dv_lora_switches_from_factors_to_vectors_during_fit(endoscopy, tmp_path):
    """EndoDAC's schedule inside Lightning: A, B move during the warm-up step, then only U, V (and the necks)."""
    import lightning as L

    from vadapt.data import MonocularVideoDataModule

    torch.manual_seed(0)
    task = SelfSupervisedDepthTask(backbone="depth_anything_v2_test", lr=1e-2, warmup_steps=0,
                                   adapter=DVLoraConfig(r=2, neck_blocks=[3], warm_up_steps=1))
    data = MonocularVideoDataModule(str(endoscopy), size=(56, 70), batch_size=2, val_fraction=0)
    snapshots = []

    class Snapshot(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            snapshots.append({k: v.clone() for k, v in module.backbone.state_dict().items() if "lora_" in k})

    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Snapshot()],
                        default_root_dir=tmp_path, limit_val_batches=0)
    before = {k: v.clone() for k, v in task.backbone.state_dict().items() if "lora_" in k}
    trainer.fit(task, data)

    def moved(a, b, key):
        return any(not torch.equal(a[k], b[k]) for k in a if k.endswith(key))

    assert moved(before, snapshots[0], "lora_B") and not moved(before, snapshots[0], "lora_U")  # warm-up step
    assert moved(snapshots[0], snapshots[2], "lora_U") and moved(snapshots[0], snapshots[2], "lora_V")
    assert not moved(snapshots[0], snapshots[2], "lora_A") and not moved(snapshots[0], snapshots[2], "lora_B")
    trainer.save_checkpoint(tmp_path / "after_switch.ckpt")  # the optimiser forgot the factors that stopped
    assert (tmp_path / "after_switch.ckpt").stat().st_size > 0
