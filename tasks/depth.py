"""Self-supervised monocular depth from video with a frozen depth foundation model: EndoDAC (Cui et al., 2024,
"EndoDAC: Efficient Adapting Foundation Model for Self-Supervised Depth Estimation from Any Endoscopic Camera",
arXiv:2405.08672).

Depth net: a frozen backbone (Depth Anything, or any registered image backbone) with an adapter (DV-LoRA and
Convolutional Neck blocks: ``vadapt.adapters.DVLoraConfig``) and trainable disparity heads: on Depth Anything the
frozen DPT neck's four fusion outputs feed four :class:`~vadapt.tasks.depth_nets.DisparityHead` (EndoDAC's
``conv_depth_1..4``), elsewhere a :class:`~vadapt.tasks.depth_nets.PyramidDisparityDecoder`. Sigmoid disparities at
scales ``s = 0..3`` (``(B, 1, H / 2^s, W / 2^s)``) become depth in ``[min_depth, max_depth]``.

Pose net (:class:`~vadapt.tasks.depth_nets.PoseNet`, trained, not kept for prediction): for each source frame
``i`` of ``frame_ids`` (default ``[0, -1, 1]``) the pose target -> source from the pair ``[frame i, frame 0]`` and,
with ``learn_intrinsics`` (the paper's self-supervised intrinsics), the intrinsics; the pairs' intrinsics are
averaged into one camera per sample. ``learn_intrinsics: false`` takes the datamodule's ``K`` instead.

Loss (Monodepth2, as the issue and the paper's ablations use it): for every scale the disparity is upsampled to
the input size, each source frame is warped into the target view
(:func:`~vadapt.geometry.reprojection.warp_source`), the photometric error ``0.85 (1 - SSIM)/2 + 0.15 L1`` is
taken per pixel, the minimum over source frames (per-pixel minimum reprojection) is averaged where it beats the
unwarped sources (auto-masking: static pixels and a camera at rest do not pull depth to infinity), plus
``smoothness_weight / 2^s`` edge-aware smoothness of the mean-normalised disparity; mean over scales.

Deviations from the official code, on purpose:

* The official trainer builds on AF-SfMLearner: optical-flow and appearance-flow networks model brightness changes
  between frames (a light that moves with the scope) and replace the minimum reprojection and auto-masking. We
  use Monodepth2's loss (above) and no appearance flow; the synthetic data's light moves too, so its effect is
  measured in BENCHMARKS.md rather than assumed.
* One intrinsics estimate per sample (the mean over the source pairs) instead of the last pair's.
* AdamW with linear warm-up and poly decay (vadapt's shared optimiser) instead of Adam with a step schedule.

Validation and test batches with truth log the median-scaled errors (:mod:`~vadapt.tasks.depth_metrics`) and,
where the datamodule knows ``K``, the relative focal-length error of the learnt intrinsics (``focal_error``).
Each validation epoch saves a picture: frame | predicted depth | truth.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vadapt.adapters import AdapterConfig
from vadapt.contracts import TaskCapabilities
from vadapt.geometry.reprojection import (
    disparity_to_depth,
    edge_aware_smoothness,
    photometric_error,
    pose_matrix,
    warp_source,
)

from .base import BaseTask
from .depth_metrics import ERROR_NAMES, DepthErrors
from .depth_nets import DisparityHead, PoseNet, PyramidDisparityDecoder

SCALES = 4


class SelfSupervisedDepthTask(BaseTask):
    """Depth from monocular video without depth labels or known intrinsics (see module docstring).

    Batches (``vadapt.data.MonocularVideoDataModule``): ``frames`` and ``frames_aug`` ``(B, F, 3, H, W)`` in
    ``[0, 1]`` in ``frame_ids`` order, ``K`` ``(B, 3, 3)`` (NaN when unknown), ``depth`` ``(B, 1, H, W)`` truth of
    frame 0 (0 = none). ``task(image)`` maps ``(B, 3, H, W)`` values as fed to depth ``(B, 1, H, W)`` (scale-free).
    """

    CAPABILITIES = TaskCapabilities("image", "depth_map")
    pretrained_modules = ("backbone",)

    def __init__(
        self,
        backbone: str = "depth_anything_v2_vits",
        weights: str | None = None,
        adapter: AdapterConfig | None = None,
        frame_ids: list[int] | None = None,
        min_depth: float = 0.1,
        max_depth: float = 150.0,
        ssim_weight: float = 0.85,
        smoothness_weight: float = 1e-3,
        automask: bool = True,
        learn_intrinsics: bool = True,
        decoder_channels: list[int] | None = None,
        pose_encoder: str = "resnet18",
        pose_weights: str | None = None,
        eval_max_depth: float = 150.0,
        preview_images: int = 4,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            backbone: registry name (``vadapt list backbones``); Depth Anything entries use their DPT neck.
            weights: ``None`` (random), ``"pretrained"`` or a path to the upstream checkpoint file.
            adapter: e.g. ``{class_path: vadapt.adapters.DVLoraConfig}`` (EndoDAC: DV-LoRA rank 4 on the MLPs,
                necks after blocks 2, 5, 8, 11); ``None`` = only the disparity heads train.
            frame_ids: target frame 0 first, then the source frames' offsets (EndoDAC: ``[0, -1, 1]``); must equal
                the datamodule's.
            min_depth: depth of disparity 1 (EndoDAC 0.1).
            max_depth: depth of disparity 0 (EndoDAC 150).
            ssim_weight: weight of SSIM in the photometric error (0.85).
            smoothness_weight: edge-aware smoothness weight (EndoDAC's ``disparity_smoothness``, 1e-3).
            automask: Monodepth2's auto-masking of pixels the unwarped source already explains.
            learn_intrinsics: predict the intrinsics with the pose net (EndoDAC's default); ``False`` uses the
                batch's ``K`` (datamodule ``intrinsics`` option or the dataset's files).
            decoder_channels: widths of the decoder used on backbones without a DPT neck, at strides 1, 2, 4,
                8, 16 (default Monodepth2's ``[16, 32, 64, 128, 256]``).
            pose_encoder: ``resnet18`` (EndoDAC's), ``resnet34``, ``resnet50``, or ``efficientnet_lite0`` (ImageNet
                weights available offline: the stand-in for EndoDAC's ImageNet ResNet-18 where none can be
                downloaded).
            pose_weights: for a ResNet, a torchvision ImageNet state-dict file (EndoDAC starts from ImageNet),
                ``None``: random; for ``efficientnet_lite0``, ``None`` means its ImageNet weights.
            eval_max_depth: truth beyond this is not scored (EndoDAC 150, in the data's units).
            preview_images: validation frames drawn in the per-epoch picture (0 = none).
            lr: peak learning rate (EndoDAC 1e-4).
            weight_decay: AdamW weight decay (0: EndoDAC uses Adam).
            kwargs: the arguments every task shares (:class:`BaseTask`).
        """
        frame_ids = [0, -1, 1] if frame_ids is None else list(frame_ids)
        if not frame_ids or frame_ids[0] != 0 or len(frame_ids) < 2 or len(set(frame_ids)) != len(frame_ids):
            raise ValueError(f"frame_ids must start with 0 and name at least one other frame, got {frame_ids}")
        if not 0 < min_depth < max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth, got {min_depth}, {max_depth}")
        super().__init__(lr=lr, weight_decay=weight_decay, **kwargs)
        self.hparams["frame_ids"] = frame_ids

    # ---- networks ------------------------------------------------------------------------------------------
    def configure_head(self) -> None:
        hp = self.hparams
        self.uses_dpt = hasattr(self.backbone, "dpt_features")
        if self.uses_dpt:
            self.heads = nn.ModuleList(DisparityHead(self.backbone.dpt_channels) for _ in range(SCALES))
        else:
            self.decoder = PyramidDisparityDecoder(self.backbone.out_channels, self.backbone.strides,
                                                   hp.get("decoder_channels") or (16, 32, 64, 128, 256))
        self.pose_net = PoseNet(hp["pose_encoder"], hp["pose_weights"])

    def configure_metrics(self) -> None:
        limit = float(self.hparams["eval_max_depth"])
        self.errors = nn.ModuleDict({stage: DepthErrors(1e-3, limit) for stage in ("val", "test")})
        self._focal: dict[str, list[float]] = {"val": [], "test": []}
        self._preview: list[tuple] = []

    def disparities(self, image: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, H, W)`` values as fed -> sigmoid disparities ``(B, 1, H / 2^s, W / 2^s)`` for ``s = 0..3``."""
        h, w = image.shape[-2:]
        x = self.normalise(image)
        if self.uses_dpt:
            # EndoDAC's input: (H, W) resized to a patch grid of about H/16 x W/16 (256x320 -> 224x280 at patch 14)
            p = self.backbone.patch_size
            x = F.interpolate(x, size=(max(h // 16, 1) * p, max(w // 16, 1) * p), mode="bilinear",
                              align_corners=True)
            paths = self.backbone.dpt_features(self.backbone(x))  # finest first
            logits = [head(path) for head, path in zip(self.heads, paths)]
        else:
            logits = self.decoder(self.backbone(x), (h, w))
        return [
            torch.sigmoid(F.interpolate(d, size=(-(-h // 2 ** s), -(-w // 2 ** s)), mode="bilinear",
                                        align_corners=True))
            for s, d in enumerate(logits[:SCALES])
        ]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` values as fed -> depth ``(B, 1, H, W)`` in ``[min_depth, max_depth]`` (up to scale)."""
        return disparity_to_depth(self.disparities(image)[0], self.hparams["min_depth"], self.hparams["max_depth"])

    def predict_depth(self, image: torch.Tensor) -> torch.Tensor:
        """What ``vadapt infer`` and the app call: :meth:`forward` (depth ``(B, 1, H, W)``, up to scale)."""
        return self(image)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter file keeps what predicts depth; the pose net (12.5 M parameters with ResNet-18) trains but
        predicts nothing, so it is left out (Lightning checkpoints keep it: :meth:`training_state_dict`)."""
        return {k: v for k, v in super().adapter_state_dict().items() if not k.startswith("pose_net.")}

    def training_state_dict(self) -> dict[str, torch.Tensor]:
        """Lightning checkpoints resume training: they keep the pose net too."""
        return {**self.adapter_state_dict(),
                **{f"pose_net.{k}": v.detach().cpu() for k, v in self.pose_net.state_dict().items()}}

    def parameter_counts(self) -> dict[str, int | float]:
        """:func:`~vadapt.params.count_parameters` plus the depth network alone (what EndoDAC's tables count: the
        pose net trains but is not part of the model that predicts): ``pose_net`` and ``depth_trainable_percent``."""
        counts = super().parameter_counts()
        pose = sum(p.numel() for p in self.pose_net.parameters())
        depth_trainable = counts["trainable"] - sum(p.numel() for p in self.pose_net.parameters() if p.requires_grad)
        counts["pose_net"] = pose
        counts["depth_trainable"] = depth_trainable
        counts["depth_trainable_percent"] = round(100.0 * depth_trainable / max(counts["total"] - pose, 1), 4)
        return counts

    # ---- the view-synthesis loss ---------------------------------------------------------------------------
    def cameras(self, frames: torch.Tensor, known_K: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Poses target -> source ``(B, 4, 4)`` per source frame, and the intrinsics ``(B, 3, 3)`` (learnt, or
        ``known_K``)."""
        target = frames[:, 0]
        poses, Ks = [], []
        for i in range(1, frames.shape[1]):
            axis_angle, translation, K = self.pose_net(frames[:, i], target)
            poses.append(pose_matrix(axis_angle, translation))
            Ks.append(K)
        if self.hparams["learn_intrinsics"]:
            return poses, torch.stack(Ks).mean(0)
        if torch.isnan(known_K).any():
            raise ValueError("learn_intrinsics is false but the batch has no intrinsics (K is NaN): give the "
                             "datamodule's `intrinsics` option, or set learn_intrinsics: true")
        return poses, known_K

    def view_synthesis_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """The loss of the module docstring and what it computed (``disparities``, ``K``, ``poses``)."""
        hp = self.hparams
        frames, frames_aug = batch["frames"], batch["frames_aug"]
        target = frames[:, 0]
        disps = self.disparities(frames_aug[:, 0])
        poses, K = self.cameras(frames_aug, batch["K"])
        sources = [frames[:, i] for i in range(1, frames.shape[1])]
        identity = None
        if hp["automask"]:
            identity = torch.cat([photometric_error(s, target, hp["ssim_weight"]) for s in sources], 1)
            identity = identity + torch.randn_like(identity) * 1e-5  # break ties, as Monodepth2
        total = frames.new_zeros(())
        h, w = target.shape[-2:]
        for s, disp in enumerate(disps):
            full = F.interpolate(disp, size=(h, w), mode="bilinear", align_corners=True) if s else disp
            depth = disparity_to_depth(full, hp["min_depth"], hp["max_depth"])
            reprojection = torch.cat([photometric_error(warp_source(src, depth, K, pose), target, hp["ssim_weight"])
                                      for src, pose in zip(sources, poses)], 1)
            candidates = reprojection if identity is None else torch.cat([identity, reprojection], 1)
            loss = candidates.min(1).values.mean()
            image = target if s == 0 else F.interpolate(target, size=disp.shape[-2:], mode="area")
            loss = loss + hp["smoothness_weight"] * edge_aware_smoothness(disp, image) / 2 ** s
            total = total + loss
        return total / len(disps), {"disparities": disps, "K": K, "poses": poses}

    # ---- steps ----------------------------------------------------------------------------------------------
    def _shared_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        loss, out = self.view_synthesis_loss(batch)
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=stage == "train", on_epoch=True,
                 batch_size=len(batch["frames"]))
        if stage == "train":
            return loss
        depth = disparity_to_depth(out["disparities"][0], self.hparams["min_depth"], self.hparams["max_depth"])
        truth = batch["depth"]
        self.errors[stage].update(depth, truth)
        known = batch["K"]
        if self.hparams["learn_intrinsics"] and not torch.isnan(known).any():
            focal, true_focal = out["K"][:, [0, 1], [0, 1]], known[:, [0, 1], [0, 1]]
            self._focal[stage].extend(((focal - true_focal).abs() / true_focal).mean(1).tolist())
        if stage == "val" and len(self._preview) < self.hparams["preview_images"]:
            # one frame per batch: neighbouring frames of a video look alike, the picture should show several
            self._preview.append((batch["frames"][0, 0].float().cpu().numpy(), depth[0, 0].float().cpu().numpy(),
                                  truth[0, 0].float().cpu().numpy()))
        return loss

    def _log_scores(self, stage: str) -> None:
        if stage == "train":
            return
        scores = self.errors[stage].compute()
        self.errors[stage].reset()
        if scores["images"] > 0:
            self.log_dict({f"{stage}/{name}": float(scores[name]) for name in ERROR_NAMES if name != "abs_rel"})
            self.log(f"{stage}/abs_rel", float(scores["abs_rel"]), prog_bar=True)
        focal, self._focal[stage] = self._focal[stage], []
        if focal:
            self.log(f"{stage}/focal_error", sum(focal) / len(focal))

    def preview_picture(self, rows: list[tuple]):
        """frame | predicted depth | truth per row (depth coloured near red to far blue; the prediction
        median-scaled to the truth where there is truth)."""
        import numpy as np

        from vadapt.visualize import depth_colours, depth_range, tile_panel

        tiles = []
        for frame, pred, truth in rows:
            rgb = (np.clip(frame.transpose(1, 2, 0), 0, 1) * 255).round().astype(np.uint8)
            valid = truth > 0
            if valid.any():
                pred = pred * (np.median(truth[valid]) / max(float(np.median(pred[valid])), 1e-12))
                low, high = depth_range(truth, valid)
            else:
                low, high = depth_range(pred)
            tiles.append([rgb, depth_colours(pred, low, high), depth_colours(np.where(valid, truth, 0), low, high)])
        return tile_panel(tiles, titles=["frame", "predicted depth", "truth"], min_row_height=200)

    # ---- DV-LoRA's two phases ------------------------------------------------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """DV-LoRA's schedule (``warm_up_steps`` of the adapter config): factors ``A, B`` train first, vectors
        ``U, V`` after; at the switch the optimiser gets the parameters that now train (same schedule)."""
        from vadapt.adapters.dv_lora import DVLoraConfig, dv_lora_vector_phase, set_dv_lora_phase

        if not isinstance(self.adapter_config, DVLoraConfig) or not self.adapter_config.vectors:
            return
        vectors = dv_lora_vector_phase(self.adapter_config, self.global_step)
        if vectors == getattr(self, "_vector_phase", False):
            return
        set_dv_lora_phase(self.backbone, vectors)
        self._vector_phase = vectors
        training = [p for p in self.parameters() if p.requires_grad]
        for optimizer in self.trainer.optimizers:
            optimizer.param_groups[0]["params"] = training
            # the factors that stopped training are buffers now: their optimiser state goes too (else the
            # optimiser's state_dict, and so every later checkpoint, fails on parameters it no longer has)
            keep = {id(p) for p in training}
            for p in [p for p in optimizer.state if id(p) not in keep]:
                del optimizer.state[p]

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self(batch["frames"][:, 0] if "frames" in batch else batch["image"])
