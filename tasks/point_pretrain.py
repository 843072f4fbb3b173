"""Self-supervised Point-MAE pretraining (Pang et al., "Masked Autoencoders for Point Cloud Self-supervised
Learning", ECCV 2022, arXiv:2203.06604), so that a "frozen pretrained backbone" exists offline.

The model follows the official pretraining model ``Point_MAE`` (``models/Point_MAE.py``, ``cfgs/pretrain.yaml``),
re-written on top of our :class:`~vadapt.backbones.point_mae.PointBackbone`:

1. **Grouping** (``backbone.group``): a cloud ``(B, N, 3)`` -> centres ``(B, G, 3)`` and neighbourhoods
   ``(B, G, k, 3)`` relative to their centres.
2. **Random masking** (official ``MaskTransformer._mask_center_rand``): in every sample independently,
   ``M = int(mask_ratio * G)`` of the ``G`` groups are masked (0.6: 38 of 64).
3. **Encoder** = the backbone, **trainable**, on the ``V = G - M`` *visible* tokens only and without the class
   token (as ``MaskTransformer.forward``): ``tokenize`` -> ``(B, V, C)``, the backbone's ``pos_embed`` of the
   visible centres is added to the input of every block, then the final ``norm``.
4. **Decoder** (official ``mask_token``, ``decoder_pos_embed``, ``MAE_decoder``): ``[visible tokens, M mask
   tokens]`` ``(B, G, C)`` with its own position MLP of *all* centres ``[visible, masked]`` added before each of
   ``decoder_depth`` blocks (same pre-norm ``Block`` as the encoder, drop path linear 0..0.1), a LayerNorm on
   the last ``M`` tokens ``(B, M, C)``.
5. **Head** (official ``increase_dim``): a 1x1 ``Conv1d(C, 3k)`` -> the ``k`` points of each masked group,
   relative to its centre ``(B M, k, 3)``.
6. **Loss**: Chamfer-L2 between predicted and true masked neighbourhoods (official ``ChamferDistanceL2``:
   ``mean(dist1) + mean(dist2)`` of the squared nearest-neighbour distances in both directions, the means taken
   over all ``B M k`` points).

Optimisation as the official config: AdamW (lr 1e-3, weight decay 0.05, no decay on biases, 1-d parameters
and tokens), a linear warm-up then cosine decay to 1e-6 (official ``CosLR`` with 10 warm-up epochs of 300; here
per step). :meth:`PointMAEPretrainTask.save_encoder` writes the encoder in the official pretrain checkpoint
format (``{"base_model": {"MAE_encoder.<key>": ..., <decoder keys>}}``) that ``create_backbone("point_mae",
weights=path)`` loads; :func:`pretrain_points` is the whole run behind ``vadapt pretrain-points``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from vadapt.backbones.point_mae import Block, gather_points
from vadapt.contracts import TaskCapabilities

from .base import UNUSED, BaseTask

#: keys of ``backbone.model`` that are not part of the pretrained encoder (official ``PointTransformer`` only)
NOT_IN_ENCODER: tuple[str, ...] = ("cls_token", "cls_pos", "cls_head_finetune.")


# ---- masking and loss ------------------------------------------------------------------------------------------


def num_masked(num_group: int, mask_ratio: float) -> int:
    """Masked groups per sample, ``int(mask_ratio * G)`` as the official ``_mask_center_rand`` (38 of 64 at 0.6)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return int(mask_ratio * num_group)


def random_mask(
    batch: int, num_group: int, mask_ratio: float, device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Boolean mask ``(B, G)``, ``True`` = masked: exactly ``num_masked(G, ratio)`` groups per sample, drawn
    uniformly and independently per sample (official ``_mask_center_rand``)."""
    m = num_masked(num_group, mask_ratio)
    noise = torch.rand(batch, num_group, generator=generator)
    ranks = noise.argsort(dim=1).argsort(dim=1)  # a random permutation of 0..G-1 per row
    return (ranks < m).to(device) if device is not None else ranks < m


def split_by_mask(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the visible ``(B, V)`` and masked ``(B, M)`` groups of ``mask`` ``(B, G)``, each in increasing
    order (the order of the official boolean indexing ``x[~mask]`` / ``x[mask]``)."""
    counts = mask.sum(dim=1)
    if not bool((counts == counts[0]).all()):
        raise ValueError("every sample must mask the same number of groups")
    m = int(counts[0])
    order = mask.to(torch.uint8).argsort(dim=1, stable=True)  # visible (0) first, then masked, each ascending
    return order[:, : mask.shape[1] - m], order[:, mask.shape[1] - m:]


def chamfer_l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Chamfer-L2 of point sets ``pred`` ``(S, n, 3)`` and ``target`` ``(S, m, 3)`` -> scalar.

    The official ``ChamferDistanceL2`` (``extensions/chamfer_dist``): ``dist1`` ``(S, n)`` = squared distance
    of each ``pred`` point to its nearest ``target`` point, ``dist2`` ``(S, m)`` the other way round, and the loss
    is ``mean(dist1) + mean(dist2)`` (means over all sets and points; squared distances, no square root).
    Plain torch: the ``(S, n, m)`` squared distances are formed from coordinate differences (exact, and with a
    finite gradient at zero distance, unlike ``torch.cdist(...) ** 2``).
    """
    if pred.ndim != 3 or target.ndim != 3 or pred.shape[-1] != 3 or target.shape[-1] != 3:
        raise ValueError(f"chamfer_l2 takes (S, n, 3) and (S, m, 3) sets, got {tuple(pred.shape)}, "
                         f"{tuple(target.shape)}")
    d = (pred.unsqueeze(2) - target.unsqueeze(1)).square().sum(-1)  # (S, n, m)
    return d.amin(dim=2).mean() + d.amin(dim=1).mean()


# ---- the decoder ----------------------------------------------------------------------------------------------


class PointMAEDecoder(nn.Module):
    """Official ``TransformerDecoder``: ``depth`` pre-norm blocks, each called as ``block(x + pos)``, then a
    LayerNorm of the last ``return_token_num`` tokens. Linear weights Xavier-uniform, zero biases (official)."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.1) -> None:
        super().__init__()
        rates = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]  # torch.linspace
        self.blocks = nn.ModuleList([Block(dim, num_heads, mlp_ratio, r) for r in rates])
        self.norm = nn.LayerNorm(dim)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, return_token_num: int) -> torch.Tensor:
        """Tokens ``(B, G, C)`` and positions ``(B, G, C)`` -> the last ``M`` tokens, normalised ``(B, M, C)``."""
        for block in self.blocks:
            x = block(x + pos)
        return self.norm(x[:, x.shape[1] - return_token_num:])


# ---- the task ---------------------------------------------------------------------------------------------------


class PointMAEPretrainTask(BaseTask):
    """Masked point-patch reconstruction (Point-MAE pretraining) with our ``PointBackbone`` as the encoder.

    Batches are dicts with ``points`` (float ``(B, N, 3)``, unit-sphere normalised by the datamodule), as
    :class:`~vadapt.data.points.PointFolderDataModule` yields them; labels are ignored. Logs ``train/loss`` and
    ``val/loss`` (Chamfer-L2 of the masked groups; validation masks are seeded by the batch index, so the
    validation loss of different epochs compares like with like).
    """

    CAPABILITIES = TaskCapabilities("point_cloud", "none")  # pretraining: nothing to run

    def __init__(
        self,
        backbone: str = "point_mae",
        weights: str | None = None,
        mask_ratio: float = 0.6,
        decoder_depth: int = 4,
        decoder_heads: int | None = None,
        decoder_drop_path: float = 0.1,
        weight_decay: float = 0.05,
        warmup_steps: int | None = None,
        min_lr: float = 1e-6,
        export_on_fit_end: bool = True,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            backbone: registry name of a point backbone (``point_mae``; ``point_mae_test`` is a tiny one).
            weights: ``None`` (random init, as the official pretraining), or a checkpoint to continue from.
            mask_ratio: share of the groups masked per sample (``int(ratio * G)`` of them; official 0.6).
            decoder_depth, decoder_heads, decoder_drop_path: the decoder (official 4 blocks, 6 heads, 0.1);
                ``decoder_heads`` null: as many heads as the encoder's blocks (6 for ``point_mae``).
            weight_decay: AdamW's (official 0.05; no decay on biases, 1-d weights and tokens).
            warmup_steps: linear warm-up steps before the cosine decay; ``None``: 1/30 of all steps (the official
                10 warm-up epochs of 300).
            min_lr: the end of the cosine decay (official 1e-6).
            export_on_fit_end: write ``<log_dir>/point_mae_pretrain.pth`` (official format) when ``fit`` ends.
            kwargs: the other arguments every task shares (:class:`BaseTask`): ``lr`` (AdamW's peak, official
                1e-3), ``grad_checkpointing`` (recompute the encoder blocks in backward). The whole backbone
                trains, on a cosine schedule, from points: no ``poly_power``, ``freeze_backbone``, ``mean``,
                ``std``, ``extra_band_init``.
        """
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if decoder_depth < 1 or (decoder_heads is not None and decoder_heads < 1):
            raise ValueError(f"decoder_depth and decoder_heads must be >= 1, got {decoder_depth}, {decoder_heads}")
        if warmup_steps is not None and warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0 or null, got {warmup_steps}")
        super().__init__(weight_decay=weight_decay, warmup_steps=warmup_steps, poly_power=UNUSED, mean=UNUSED,
                         std=UNUSED, extra_band_init=UNUSED, freeze_backbone=UNUSED, **kwargs)

    # ---- models ------------------------------------------------------------------------------------------
    def configure_backbone(self) -> None:
        """The backbone, fully trainable (it is what pretraining learns) except the unused class token/position."""
        super().configure_backbone()
        self.backbone.requires_grad_(True)
        self.backbone.cls_token.requires_grad_(False)  # the pretraining encoder has no class token (official)
        self.backbone.cls_pos.requires_grad_(False)
        self.backbone.train(self.training)  # create_backbone froze it: its batch norms were put in eval mode
        if num_masked(self.backbone.num_group, self.hparams["mask_ratio"]) < 1:
            raise ValueError(f"mask_ratio {self.hparams['mask_ratio']} masks no group of {self.backbone.num_group}")

    def configure_head(self) -> None:
        """Decoder parts with the official names: ``mask_token`` ``(1, 1, C)``, ``decoder_pos_embed`` (MLP
        3 -> 128 -> C, GELU), ``decoder`` (official ``MAE_decoder``), ``increase_dim`` (Conv1d C -> 3k)."""
        hp = self.hparams
        c, k = self.backbone.embed_dim, self.backbone.group_size
        heads = hp["decoder_heads"] or self.backbone.blocks[0].attn.num_heads
        if c % heads:
            raise ValueError(f"decoder_heads={heads} does not divide the token width {c}")
        hidden = self.backbone.pos_embed[0].out_features  # 128 as the official decoder_pos_embed (16 when tiny)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder_pos_embed = nn.Sequential(nn.Linear(3, hidden), nn.GELU(), nn.Linear(hidden, c))
        self.decoder = PointMAEDecoder(c, hp["decoder_depth"], heads,
                                       drop_path_rate=hp["decoder_drop_path"])
        self.increase_dim = nn.Sequential(nn.Conv1d(c, 3 * k, 1))

    def configure_metrics(self) -> None:
        self._preview: list[tuple] = []

    # ---- forward -------------------------------------------------------------------------------------------
    def encode_visible(self, tokens: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """The encoder on visible groups only (official ``MaskTransformer``): tokens ``(B, V, C)`` and their
        centres ``(B, V, 3)`` -> ``norm(blocks)`` ``(B, V, C)``, ``pos_embed(centres)`` added before every block,
        no class token."""
        bb = self.backbone
        pos = bb.pos_embed(centres)
        (x,) = bb.run_blocks(tokens, [len(bb.blocks) - 1], lambda block, h: block(h + pos))
        return bb.norm(x)

    def forward(
        self, points: torch.Tensor, mask: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Cloud ``(B, N, 3)`` -> dict of ``loss`` (scalar Chamfer-L2), ``pred`` ``(B, M, k, 3)`` and ``target``
        ``(B, M, k, 3)`` (masked groups relative to their centres), ``centres`` ``(B, G, 3)``, ``mask`` ``(B, G)``.

        ``mask`` (``True`` = masked, the same count per sample) defaults to :func:`random_mask`.
        """
        bb = self.backbone
        centres, groups = bb.group(self.normalise(points))  # (B, G, 3), (B, G, k, 3)
        bsz, g, k, _ = groups.shape
        if mask is None:
            mask = random_mask(bsz, g, self.hparams["mask_ratio"], centres.device, generator)
        vis_idx, mask_idx = split_by_mask(mask.to(centres.device))
        m = mask_idx.shape[1]
        tokens = bb.tokenize(groups)  # (B, G, C) as the official encoder: all groups, then the visible ones
        x_vis = self.encode_visible(gather_points(tokens, vis_idx), gather_points(centres, vis_idx))
        pos = self.decoder_pos_embed(torch.cat([gather_points(centres, vis_idx), gather_points(centres, mask_idx)], 1))
        x_full = torch.cat([x_vis, self.mask_token.expand(bsz, m, -1)], dim=1)  # (B, G, C)
        x_rec = self.decoder(x_full, pos, m)  # (B, M, C)
        pred = self.increase_dim(x_rec.transpose(1, 2)).transpose(1, 2).reshape(bsz, m, k, 3)
        target = gather_points(groups.reshape(bsz, g, k * 3), mask_idx).reshape(bsz, m, k, 3)
        loss = chamfer_l2(pred.reshape(bsz * m, k, 3).float(), target.reshape(bsz * m, k, 3).float())
        return {"loss": loss, "pred": pred, "target": target, "centres": centres, "mask": mask}

    # ---- steps -------------------------------------------------------------------------------------------
    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str, batch_idx: int = 0) -> torch.Tensor:
        points = batch["points"]
        generator = None
        if stage != "train":  # a fixed mask per validation batch: comparable validation losses across epochs
            generator = torch.Generator().manual_seed(batch_idx)
        loss = self(points, generator=generator)["loss"]
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=stage == "train", on_epoch=True,
                 batch_size=len(points))
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train", batch_idx)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "val", batch_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "test", batch_idx)

    def _log_scores(self, stage: str) -> None:
        """Nothing beyond the loss, which ``self.log`` already averages per epoch."""

    # ---- optimisation ----------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW without weight decay on biases, 1-d parameters and tokens (official ``add_weight_decay``);
        linear warm-up to ``lr``, then cosine decay to ``min_lr``, per step."""
        hp = self.hparams
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim == 1 or name.endswith(".bias") or "token" in name else decay).append(p)
        groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": hp["weight_decay"]}]
        optimizer = torch.optim.AdamW(groups, lr=hp["lr"])
        total = max(int(self.trainer.estimated_stepping_batches), 1) if self._trainer is not None else 1
        warmup = hp["warmup_steps"] if hp["warmup_steps"] is not None else total // 30
        warmup = min(int(warmup), total - 1)
        floor = min(hp["min_lr"] / hp["lr"], 1.0) if hp["lr"] > 0 else 0.0

        def factor(step: int) -> float:
            if step < warmup:
                return floor + (1.0 - floor) * (step + 1) / (warmup + 1)
            t = min((step - warmup) / max(total - warmup, 1), 1.0)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- export ------------------------------------------------------------------------------------------
    def official_state_dict(self, decoder: bool = True) -> dict[str, torch.Tensor]:
        """The official ``Point_MAE`` state dict: ``MAE_encoder.<key>`` for the encoder (``backbone.model``
        without class token, its position and head) and, with ``decoder``, ``mask_token``,
        ``decoder_pos_embed.*``, ``MAE_decoder.*``, ``increase_dim.*``; plain contiguous CPU tensors."""
        out = {f"MAE_encoder.{k}": v for k, v in self.backbone.model.state_dict().items()
               if not k.startswith(NOT_IN_ENCODER)}
        if decoder:
            out["mask_token"] = self.mask_token
            out.update({f"decoder_pos_embed.{k}": v for k, v in self.decoder_pos_embed.state_dict().items()})
            out.update({f"MAE_decoder.{k}": v for k, v in self.decoder.state_dict().items()})
            out.update({f"increase_dim.{k}": v for k, v in self.increase_dim.state_dict().items()})
        return {k: v.detach().cpu().contiguous().clone() for k, v in out.items()}

    def save_encoder(self, path: str | os.PathLike, decoder: bool = True) -> Path:
        """Write the official pretrain checkpoint ``{"base_model": official_state_dict(), "epoch": E}`` to
        ``path`` atomically (a temporary file in the same folder, then a rename): ``path`` is either the old
        file or the complete new one. ``PointBackbone.load_pretrained(path)`` / ``create_backbone(name,
        weights=path)`` load it (class token, its position and a head keep their initialisation)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"base_model": self.official_state_dict(decoder), "epoch": int(self.current_epoch)}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            torch.save(payload, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def configure_callbacks(self) -> list[L.Callback]:
        return [SaveEncoderOnFitEnd()] if self.hparams.get("export_on_fit_end", True) else []


class SaveEncoderOnFitEnd(L.Callback):
    """Writes ``point_mae_pretrain.pth`` (official format) into the run's log directory when ``fit`` finishes."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or getattr(trainer, "fast_dev_run", False) or trainer.interrupted:
            return
        # trainer.log_dir is a collective (broadcast) under DDP: every rank must ask, then only rank 0 writes
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        if not trainer.is_global_zero:
            return
        assert isinstance(pl_module, PointMAEPretrainTask)
        path = pl_module.save_encoder(folder / "point_mae_pretrain.pth")
        print(f"pretrained encoder: {path} ({path.stat().st_size / 1e6:.2f} MB)")


# ---- the whole run ------------------------------------------------------------------------------------------


def pretrain_points(
    data: str | os.PathLike,
    output: str | os.PathLike,
    backbone: str = "point_mae",
    epochs: int = 300,
    batch_size: int = 32,
    points: int = 1024,
    lr: float = 1e-3,
    num_workers: int = 0,
    *,
    val_fraction: float = 0.1,
    max_steps: int = -1,
    accelerator: str = "auto",
    log_dir: str | os.PathLike | None = None,
    seed: int = 0,
    progress_bar: bool = True,
    **task_options: Any,
) -> Path:
    """Pretrain ``backbone`` with Point-MAE on the clouds of ``data`` and write its encoder to ``output``.

    Args:
        data: a ModelNet-style folder (``<class>/train/*``, as ``vadapt make-shapes`` writes); only the training
            clouds are used (labels ignored), ``val_fraction`` of them held out for ``val/loss``.
        output: the ``.pth`` to write, official pretrain format (see :meth:`PointMAEPretrainTask.save_encoder`);
            written atomically after training, so a failed or interrupted run leaves no (partial) file.
        backbone, epochs, batch_size, points, lr, num_workers: the run (official: 300 epochs, batch 128, 1024
            points, lr 1e-3).
        max_steps: stop after this many optimizer steps (-1: the epochs decide).
        accelerator: Lightning's accelerator (``auto``: the GPU when there is one, else the CPU).
        log_dir: Lightning's root folder (default ``<output folder>/<output stem>_logs``).
        task_options: more :class:`PointMAEPretrainTask` arguments (``mask_ratio``, ``warmup_steps``, ...).
    Returns:
        the written path.
    """
    from lightning.pytorch.loggers import CSVLogger

    from vadapt.data.points import PointFolderDataModule

    output = Path(output)
    if output.suffix != ".pth":
        raise ValueError(f"output must be a .pth file (the official Point-MAE format), got {output}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    L.seed_everything(seed, workers=True, verbose=False)
    datamodule = PointFolderDataModule(str(data), num_points=points, batch_size=batch_size,
                                       num_workers=num_workers, val_fraction=val_fraction, seed=seed)
    task = PointMAEPretrainTask(backbone=backbone, lr=lr, export_on_fit_end=False, **task_options)
    root = Path(log_dir) if log_dir is not None else output.parent / f"{output.stem}_logs"
    trainer = L.Trainer(
        max_epochs=epochs, max_steps=max_steps, accelerator=accelerator, devices=1,
        default_root_dir=str(root), logger=CSVLogger(str(root), name="pretrain"), enable_checkpointing=False,
        enable_progress_bar=progress_bar, enable_model_summary=False, log_every_n_steps=1,
        limit_val_batches=1.0 if val_fraction > 0 else 0,
    )
    trainer.fit(task, datamodule=datamodule)
    if trainer.interrupted:
        raise RuntimeError(f"pretraining was interrupted; {output} was not written")
    return task.save_encoder(output)
