"""Point-MAE: a plain transformer over point-cloud patches (Pang et al., "Masked Autoencoders for Point Cloud
Self-supervised Learning", ECCV 2022, arXiv:2203.06604), as the official fine-tuning model builds it.

Pipeline (Sec. 3.1 of the paper; official ``PointTransformer``):

1. **Grouping**: farthest point sampling picks ``G`` centres ``(B, G, 3)`` from the cloud ``(B, N, 3)``
   (64 for 1024 points, 128 for 2048), and each centre's ``k = 32`` nearest points, minus the centre, form
   the neighbourhoods ``(B, G, k, 3)``.
2. **Tokenizer**: a mini-PointNet (official ``Encoder``) maps each neighbourhood to one ``C``-d token
   ``(B, G, C)``: shared MLP 3->128->256, max-pool, concatenate the pooled feature to every point (512),
   shared MLP 512->512->C, max-pool.
3. **Transformer**: a class token (with its own learned position ``cls_pos``) is prepended; position
   embeddings ``pos_embed(centres)`` (MLP 3->128->C, GELU) are **added to the input of every block**,
   not once; 12 pre-norm blocks (C = 384, 6 heads, MLP ratio 4, no qkv bias, drop path linear to 0.1),
   then a final LayerNorm: ``(B, 1 + G, C)``.
4. **Head** (optional, ``num_classes > 0``; official ``cls_head_finetune``): ``[cls, max over patches]``
   ``(B, 2C)`` -> Linear 256, BN, ReLU, Dropout 0.5 -> Linear 256, BN, ReLU, Dropout 0.5 -> classes.

The official module names are kept inside ``self.model`` (``encoder``, ``pos_embed``, ``blocks.blocks.i``,
``norm``, ``cls_token``, ``cls_pos``, ``cls_head_finetune``), so the official checkpoints load key for key:
the pretrain file (``{"base_model": {"module.MAE_encoder.<key>": ...}}``, decoder keys ignored) and the
fine-tuned files (``{"base_model": {"module.<key>": ...}}``).

Point clouds have no bands, strides or padding, so :class:`PointBackbone` is not an image
:class:`~vadapt.backbones.base.Backbone`; it shares their :class:`~vadapt.backbones.base.BlockStack` base, the
parts adapters use (``blocks``, ``block_layout``, ``num_prefix_tokens``, ``lora_targets``, ``run_blocks``,
``freeze``).

Farthest point sampling and k-NN are plain batched torch (the official code uses the CUDA kernels of
``pointnet2_ops`` and ``knn_cuda``): FPS starts from point 0 as ``pointnet2_ops`` does.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vadapt.bands import RGB, BandInit
from vadapt.geometry.points import farthest_point_sample, gather_points, knn_indices
from vadapt.weights import WeightsSource, load_strict, read_state_dict, strip_prefix, unwrap_state_dict

from .base import BlockStack, register_backbone

log = logging.getLogger(__name__)

#: keys of the official pretrain checkpoint (after removing ``module.``) that belong to the MAE decoder
PRETRAIN_ONLY_PREFIXES: tuple[str, ...] = ("MAE_decoder.", "decoder_pos_embed.", "increase_dim.", "mask_token")
#: keys a pretrain checkpoint does not have: they keep their initialisation (as in the official fine-tuning)
FINETUNE_ONLY_PREFIXES: tuple[str, ...] = ("cls_token", "cls_pos", "cls_head_finetune.")


class PointGrouper(nn.Module):
    """FPS centres and their k-NN neighbourhoods (official ``Group``; no parameters)."""

    def __init__(self, num_group: int, group_size: int) -> None:
        super().__init__()
        self.num_group = num_group
        self.group_size = group_size

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``points`` ``(B, N, 3)`` -> centres ``(B, G, 3)``, neighbourhoods ``(B, G, k, 3)`` relative to them."""
        centres = gather_points(points, farthest_point_sample(points, self.num_group))
        idx = knn_indices(points, centres, self.group_size)
        neighbourhoods = gather_points(points, idx) - centres.unsqueeze(2)
        return centres, neighbourhoods


# ---- tokenizer and transformer (official module names) ------------------------------------------------------


class MiniPointNet(nn.Module):
    """Patch tokenizer (official ``Encoder``): neighbourhoods ``(B, G, k, 3)`` -> tokens ``(B, G, C)``."""

    def __init__(self, out_dim: int, hidden: Sequence[int] = (128, 256, 512)) -> None:
        super().__init__()
        h1, h2, h3 = hidden
        self.out_dim = out_dim
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, h1, 1), nn.BatchNorm1d(h1), nn.ReLU(inplace=True), nn.Conv1d(h1, h2, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(2 * h2, h3, 1), nn.BatchNorm1d(h3), nn.ReLU(inplace=True), nn.Conv1d(h3, out_dim, 1)
        )

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        """Neighbourhoods ``(B, G, k, 3)`` -> tokens ``(B, G, C)``; each of the two shared-MLP stages is max-pooled over
        the ``k`` points."""
        bsz, g, k, _ = groups.shape
        x = self.first_conv(groups.reshape(bsz * g, k, 3).transpose(1, 2))  # (BG, h2, k)
        pooled = x.amax(dim=2, keepdim=True)
        x = self.second_conv(torch.cat([pooled.expand(-1, -1, k), x], dim=1))  # (BG, C, k)
        return x.amax(dim=2).reshape(bsz, g, self.out_dim)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode and for ``p == 0``)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, ...)`` -> same shape; in training each sample's branch is zeroed with probability ``p`` and the kept
        ones are scaled by ``1 / (1 - p)``."""
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        """``p=<drop probability>`` for the module's ``repr``."""
        return f"p={self.p}"


class Mlp(nn.Module):
    """Token MLP ``fc1 -> GELU -> fc2`` (official ``Mlp``; dropout 0 in every official config)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., C)`` -> ``(..., C)`` through the ``hidden``-wide layer."""
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention on ``(B, N, C)`` (official ``Attention``: no qkv bias, scale ``d^-0.5``)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, C)`` -> ``(B, N, C)``: unmasked self-attention over all ``N`` tokens."""
        bsz, n, c = x.shape
        q, k, v = self.qkv(x).reshape(bsz, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        return self.proj(x.transpose(1, 2).reshape(bsz, n, c))


class Block(nn.Module):
    """Pre-norm transformer block (official ``Block``): ``x + dp(attn(norm1 x))``, ``x + dp(mlp(norm2 x))``.

    The caller adds the position embedding to the input first: ``block(x + pos)``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, C)`` block input (position already added) -> ``(B, N, C)``."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TransformerEncoder(nn.Module):
    """The official container whose ``blocks`` give the checkpoint keys ``blocks.blocks.<i>.*``."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float, drop_path_rate: float) -> None:
        super().__init__()
        rates = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]  # torch.linspace
        self.blocks = nn.ModuleList([Block(dim, num_heads, mlp_ratio, r) for r in rates])

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Tokens and positions, both ``(B, 1 + G, C)`` -> ``(B, 1 + G, C)``; ``pos`` is added to the input of every
        block (official). The final norm is not applied here."""
        for block in self.blocks:
            x = block(x + pos)
        return x


class PointMAEModel(nn.Module):
    """Parameter holder with the official ``PointTransformer`` names (its ``state_dict`` is upstream's)."""

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        drop_path_rate: float,
        encoder_hidden: Sequence[int],
        pos_hidden: int,
        num_classes: int,
        head_hidden: int,
        head_dropout: float,
    ) -> None:
        super().__init__()
        self.encoder = MiniPointNet(embed_dim, encoder_hidden)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Sequential(nn.Linear(3, pos_hidden), nn.GELU(), nn.Linear(pos_hidden, embed_dim))
        self.blocks = TransformerEncoder(embed_dim, depth, num_heads, mlp_ratio, drop_path_rate)
        self.norm = nn.LayerNorm(embed_dim)
        if num_classes > 0:
            self.cls_head_finetune = nn.Sequential(
                nn.Linear(2 * embed_dim, head_hidden), nn.BatchNorm1d(head_hidden), nn.ReLU(inplace=True),
                nn.Dropout(head_dropout),
                nn.Linear(head_hidden, head_hidden), nn.BatchNorm1d(head_hidden), nn.ReLU(inplace=True),
                nn.Dropout(head_dropout),
                nn.Linear(head_hidden, num_classes),
            )
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)


def _init_weights(m: nn.Module) -> None:
    """The official ``_init_weights``: truncated normal (std 0.02) linear/conv weights, zero biases."""
    if isinstance(m, (nn.Linear, nn.Conv1d)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# ---- the backbone ---------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What :meth:`PointBackbone.load_pretrained` did not take from a checkpoint, in official key names."""

    #: model keys the checkpoint lacks (kept at their initialisation): class token, its position, head
    missing: list[str] = field(default_factory=list)
    #: checkpoint keys not used (MAE decoder of a pretrain file, a head when the backbone has none)
    ignored: list[str] = field(default_factory=list)


class PointBackbone(BlockStack):
    """Point-MAE transformer: a cloud ``(B, N, 3)`` -> tokens ``(B, 1 + G, C)`` (class token first).

    Args:
        embed_dim: token width ``C`` (official ``trans_dim`` = ``encoder_dims`` = 384).
        depth: number of blocks (12).
        num_heads: attention heads (6).
        mlp_ratio: block MLP hidden width over ``C`` (4).
        num_group: number of centres ``G`` (64 for 1024-point clouds, 128 for 2048).
        group_size: neighbours per centre ``k`` (32).
        drop_path_rate: stochastic depth of the last block, linear from 0 (0.1 in the fine-tuning configs).
        num_classes: > 0 adds the official classification head ``cls_head_finetune``.
        encoder_hidden: widths of the mini-PointNet (128, 256, 512); smaller only for tiny test models.
        pos_hidden: hidden width of the position MLP (128).
        head_hidden: hidden width of the head (256).
        head_dropout: dropout of the head (0.5).
    """

    #: adapters see ``(B, 1 + G, C)`` token sequences, the class token first
    num_prefix_tokens: int = 1
    bands: tuple[str, ...] = ()  # point clouds have no image bands (adapter manifests record the bands)

    def __init__(
        self,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_group: int = 64,
        group_size: int = 32,
        drop_path_rate: float = 0.1,
        num_classes: int = 0,
        encoder_hidden: Sequence[int] = (128, 256, 512),
        pos_hidden: int = 128,
        head_hidden: int = 256,
        head_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.name = ""
        self.embed_dim = embed_dim
        self.num_group = num_group
        self.group_size = group_size
        self.num_classes = num_classes
        self.out_channels = [embed_dim]
        self.patch_size = 1  # no pixel patches; only read by VPT's prompt initialisation bound
        self.grad_checkpointing = False
        self.grouper = PointGrouper(num_group, group_size)
        self.model = PointMAEModel(
            embed_dim, depth, num_heads, mlp_ratio, drop_path_rate, encoder_hidden, pos_hidden,
            num_classes, head_hidden, head_dropout,
        )
        #: centres ``(B, G, 3)`` and block position embeddings ``(B, 1 + G, C)`` of the latest forward,
        #: for adapters that need geometry (as ``token_grid`` of the image backbones)
        self.last_centres: torch.Tensor | None = None
        self.last_pos: torch.Tensor | None = None
        self._warned_resample = False

    # ---- handles ---------------------------------------------------------------------------------------
    @property
    def blocks(self) -> nn.ModuleList:
        """The 12 transformer blocks, each called as ``block(x + pos)``."""
        return self.model.blocks.blocks

    @property
    def cls_token(self) -> nn.Parameter:
        """The learned class token ``(1, 1, C)`` (not in the pretrain file: it keeps its initialisation there)."""
        return self.model.cls_token

    @property
    def cls_pos(self) -> nn.Parameter:
        """The class token's learned position ``(1, 1, C)``, added before every block like the patch positions."""
        return self.model.cls_pos

    @property
    def pos_embed(self) -> nn.Sequential:
        """Position MLP: centres ``(B, G, 3)`` -> ``(B, G, C)``."""
        return self.model.pos_embed

    @property
    def norm(self) -> nn.LayerNorm:
        """The final LayerNorm, applied to all ``1 + G`` tokens after the last block."""
        return self.model.norm

    @property
    def head(self) -> nn.Module:
        """The official classification head, or ``nn.Identity`` when ``num_classes == 0``."""
        if self.num_classes > 0:
            return self.model.cls_head_finetune
        return nn.Identity()

    # ---- stages ----------------------------------------------------------------------------------------
    def check_points(self, points: torch.Tensor) -> torch.Tensor:
        """Validate ``(B, N, 3)``; clouds with fewer than ``max(G, k)`` points are resampled (warned once)."""
        if points.ndim != 3 or points.shape[-1] != 3:
            raise ValueError(f"Point-MAE expects a (B, N, 3) point cloud, got shape {tuple(points.shape)}.")
        if points.shape[0] == 0 or points.shape[1] == 0:
            raise ValueError(f"Point-MAE got an empty point cloud of shape {tuple(points.shape)}.")
        if not torch.isfinite(points).all():
            raise ValueError("Point-MAE got a point cloud with NaN or infinite coordinates; drop those points first.")
        n = points.shape[1]
        need = max(self.num_group, self.group_size)
        if n < need:
            if not self._warned_resample:
                warnings.warn(
                    f"{self.name or 'Point-MAE'}: the cloud has {n} points, fewer than the {self.num_group} "
                    f"centres or the {self.group_size} neighbours per group; it is resampled with replacement "
                    f"to {need} points (warned once).",
                    UserWarning,
                    stacklevel=3,
                )
                self._warned_resample = True
            extra = torch.randint(n, (points.shape[0], need - n), device=points.device)
            idx = torch.cat([torch.arange(n, device=points.device).expand(points.shape[0], -1), extra], dim=1)
            points = gather_points(points, idx)
        return points

    def group(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cloud ``(B, N, 3)`` -> centres ``(B, G, 3)`` (FPS), neighbourhoods ``(B, G, k, 3)`` (k-NN, centred)."""
        return self.grouper(self.check_points(points))

    def tokenize(self, neighbourhoods: torch.Tensor) -> torch.Tensor:
        """Neighbourhoods ``(B, G, k, 3)`` -> patch tokens ``(B, G, C)`` (mini-PointNet)."""
        return self.model.encoder(neighbourhoods)

    def forward_features(self, points: torch.Tensor) -> torch.Tensor:
        """Cloud ``(B, N, 3)`` -> tokens ``(B, 1 + G, C)`` after the final norm, class token first."""
        centres, neighbourhoods = self.group(points)
        tokens = self.tokenize(neighbourhoods)
        bsz = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(bsz, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(bsz, -1, -1), self.pos_embed(centres)], dim=1)
        self.last_centres, self.last_pos = centres, pos
        call: Callable[[nn.Module, torch.Tensor], torch.Tensor] = lambda block, h: block(h + pos)  # noqa: E731
        (x,) = self.run_blocks(x, [len(self.blocks) - 1], call)
        return self.norm(x)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, P + G, C)`` -> ``[each of the P = num_prefix_tokens prefix tokens, max over patch
        tokens]`` ``(B, (P + 1) C)`` (the head's input; P = 1: ``[cls, max]``, IDPT's prompt makes P = 2)."""
        p = self.num_prefix_tokens
        return torch.cat([*tokens[:, :p].unbind(dim=1), tokens[:, p:].amax(dim=1)], dim=-1)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Cloud ``(B, N, 3)`` -> logits ``(B, num_classes)``, or pooled features ``(B, 2C)`` without a head."""
        return self.head(self.pool(self.forward_features(points)))

    # ---- weights ---------------------------------------------------------------------------------------
    def checkpoint_filter(self, state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Official checkpoint -> (``self.model`` keys, ignored keys); unwraps ``base_model`` and prefixes."""
        sd = unwrap_state_dict(state_dict, ("base_model", "model", "state_dict"))
        sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
        for prefix in ("module.", "MAE_encoder.", "base_model."):
            sd = strip_prefix(sd, prefix)
        own = self.model.state_dict()
        ignored = [k for k in sd if k.startswith(PRETRAIN_ONLY_PREFIXES)]
        if "cls_head_finetune.0.weight" not in own:
            ignored += [k for k in sd if k.startswith("cls_head_finetune.")]
        return {k: v for k, v in sd.items() if k not in set(ignored)}, sorted(ignored)

    def load_pretrained(self, path: str) -> LoadReport:
        """Load an official Point-MAE file (pretrain or fine-tuned); strict except for the documented keys.

        A pretrain file lacks the class token, its position and the head (they keep their initialisation,
        as in the official fine-tuning) and holds the MAE decoder (ignored). Any other missing, unexpected
        or mis-shaped key raises :class:`~vadapt.weights.WeightsMismatchError`.
        """
        state_dict, ignored = self.checkpoint_filter(read_state_dict(path))
        own = self.model.state_dict()
        missing = [k for k in own if k not in state_dict and k.startswith(FINETUNE_ONLY_PREFIXES)]
        load_strict(self.model, {**{k: own[k] for k in missing}, **state_dict}, source=str(path))
        report = LoadReport(missing=missing, ignored=ignored)
        log.info("Loaded %s: kept initialised %s; ignored %d checkpoint keys", path, missing, len(ignored))
        return report

    # ---- registry compatibility ------------------------------------------------------------------------
    def set_bands(self, bands: Sequence[str], init: BandInit = "copy") -> None:
        """Point clouds have no bands: only ``create_backbone``'s default (RGB) is accepted, as a no-op."""
        if tuple(bands) != RGB:
            raise ValueError(f"{self.name or 'Point-MAE'} takes (B, N, 3) point clouds and has no bands to set.")

    def describe(self) -> dict[str, Any]:
        """Metadata stored in adapter checkpoints."""
        return {
            "name": self.name,
            "modality": "points",
            "embed_dim": self.embed_dim,
            "num_group": self.num_group,
            "group_size": self.group_size,
            "num_blocks": len(self.blocks),
            "num_classes": self.num_classes,
        }


def encoder_parameter_count(backbone: PointBackbone) -> int:
    """Parameters of the pretrained encoder: tokenizer, position MLP, blocks and final norm.

    This is what the official pretrain checkpoint's ``MAE_encoder`` holds (21,825,024 for the real size);
    the class token and its position (``2C``) and the head are not part of it.
    """
    m = backbone.model
    return sum(p.numel() for mod in (m.encoder, m.pos_embed, m.blocks, m.norm) for p in mod.parameters())


_POINT_MAE_URL = "https://github.com/Pang-Yatian/Point-MAE/releases/download/main/pretrain.pth"

register_backbone(
    "point_mae",
    family="point",
    builder=PointBackbone,
    weights=WeightsSource("point_mae_pretrain.pth", url=_POINT_MAE_URL),
    description="Point-MAE transformer (384-d, 12 blocks, G=64, k=32), official ShapeNet pretrain weights",
)
register_backbone(
    "point_mae_test",
    family="point",
    builder=PointBackbone,
    tiny=True,
    description="tiny Point-MAE-architecture transformer for tests",
    embed_dim=32, depth=2, num_heads=2, num_group=16, group_size=8,
    encoder_hidden=(16, 32, 64), pos_hidden=16, head_hidden=16,
)
