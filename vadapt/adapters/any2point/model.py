"""Any2Point's 3D model: a frozen 2D ViT or 1D text transformer run on point tokens (Tang et al., ECCV 2024,
arXiv:2404.07989).

Pipeline (official ``PointViT.forward`` of ``Any2Point_DINOV2_Vision`` and ``Any2Point_CLIP_Lang``):

1. :class:`~.layer.PointPNTokenizer` (trainable): cloud ``(B, N, 3)`` -> centres ``(B, G, 3)``, tokens
   ``(B, G, D)`` (1024 points -> 128 tokens of 768); a Linear maps ``D`` to the base width if they differ.
2. Virtual-projection PE (no parameters): the frozen model's position table read at the centres' projections
   in 6 virtual views, averaged: ``(B, G, C)``. A ViT's 2D patch grid is read at pinhole projections
   (:class:`~.layer.VirtualProjectionPE`), a text transformer's 77 positions along a projected line
   (:class:`~.layer.SequenceProjectionPE`).
3. ``[cls, tokens]`` ``(B, 1 + G, C)``; ``[cls_pos, PE]`` is added to the input of EVERY frozen block
   (official), then a trainable copy of the base's final norm.
4. Any-to-3D guided adapter (``adapter_dim > 0``): each frozen block runs as
   ``h = x + attn part``; ``f = ls2(mlp(norm2 h))``; ``h + f + s * bottleneck(f)``, then
   :class:`~.layer.GuidedAdapter` (3D voxel branch + 6 per-view local-attention branches, view-weighted).
   The per-view attention and its LayerNorm (``attn2d``, ``norm2d``) are shared by all blocks, as official.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from vadapt.bands import RGB
from vadapt.contracts import BlockStack

from .config import Any2PointConfig
from .layer import (
    GuidedAdapter,
    GuidedGeometry,
    LocalViewAttention,
    PointPNTokenizer,
    SequenceProjectionPE,
    VirtualProjectionPE,
)


class Any2PointBackbone(BlockStack):
    """A frozen pretrained transformer as a point-cloud backbone: a timm ViT with an absolute 2D position grid
    (``TimmViTBackbone``, e.g. ``vit_base_patch14_dinov2``) or an open_clip text transformer with a 1D position
    table (``OpenClipTextTower``, e.g. CLIP ViT-L/14's).

    ``forward_features(points)`` maps ``(B, N, 3)`` to ``(B, 1 + G, C)`` (class token first), ``pool`` to
    ``(B, 2C)`` = ``[cls, max over point tokens]`` (the head's input, as ``PointBackbone.pool``; the official
    ``global_feat: max,cls`` concatenates the same two vectors in the other order). Only the tokenizer, the
    projection (if any), ``cls_token``, ``cls_pos``, the final norm (a copy) and the guided adapters
    (``adapters``, ``attn2d``, ``norm2d``) train; the base model stays bit-identical.

    The text transformer's blocks run without CLIP's causal mask (official: ``attn_mask=None``; point tokens
    have no order). Deviation: the official CLIP blocks call a sequence-first ``nn.MultiheadAttention`` on
    batch-first tokens, so their attention mixes the clouds of a batch; here attention runs over each cloud's
    tokens.

    Args:
        base: the frozen model (its ``model`` a timm ``VisionTransformer`` with ``pos_embed``, or an open_clip
            ``TextTransformer`` with ``positional_embedding``).
        config: :class:`Any2PointConfig` (official DINOv2 / ScanObjectNN defaults).
    """

    block_layout = "tokens"
    num_prefix_tokens: int = 1
    bands: tuple[str, ...] = ()

    def __init__(self, base: nn.Module, config: Any2PointConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or Any2PointConfig()
        m = base.model
        self.name = f"any2point_{getattr(base, 'name', '') or type(base).__name__}"
        self.base = base
        self.pe: VirtualProjectionPE | SequenceProjectionPE
        if getattr(m, "pos_embed", None) is not None:  # timm ViT: 2D patch grid
            self.embed_dim = m.embed_dim
            self.grid_size = tuple(m.patch_embed.grid_size)
            self.image_size = config.image_size or self.grid_size[0] * m.patch_embed.patch_size[0]
            self.pe = VirtualProjectionPE(self._pos_table(), self.grid_size, config.num_views, config.trans)
            final_norm, cls = m.norm, getattr(m, "cls_token", None)
        elif getattr(m, "positional_embedding", None) is not None and hasattr(m, "token_embedding"):  # CLIP text
            self.embed_dim = m.width
            self.pe = SequenceProjectionPE(self._pos_table(), config.num_views, config.direction)
            final_norm, cls = m.ln_final, None
        else:
            raise ValueError(
                "Any2Point needs a ViT with an absolute position embedding (pos_embed) or an open_clip text "
                "transformer (positional_embedding)"
            )
        self.out_channels = [self.embed_dim]
        self.patch_size = 1
        self.tokenizer = PointPNTokenizer(
            config.num_points, config.num_stages, config.tokenizer_dim, config.k_neighbors,
            config.alpha, config.beta, config.lga_blocks, config.last_bottleneck,
        )
        d = self.tokenizer.out_channels
        self.proj = nn.Linear(d, self.embed_dim) if d != self.embed_dim else nn.Identity()
        if isinstance(self.proj, nn.Linear):  # official PointViT._init_weights
            nn.init.xavier_uniform_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)
        # the official model keeps a cls_token key (so DINOv2's loads into it) and a new, random cls_pos
        self.cls_token = nn.Parameter(
            cls.detach().clone() if cls is not None else torch.randn(1, 1, self.embed_dim) * 0.02
        )
        self.cls_pos = nn.Parameter(torch.randn(1, 1, self.embed_dim) * 0.02)
        self.norm = copy.deepcopy(final_norm)  # trainable copy (official trains ``encoder.norm``)
        self.adapters: nn.ModuleList | None = None
        if config.adapter_dim > 0:
            c, v = self.embed_dim, config.num_views
            self.adapters = nn.ModuleList(
                [
                    GuidedAdapter(c, v, config.adapter_dim, config.adapter_dropout, config.maxmean_2d)
                    for _ in self.blocks
                ]
            )
            self.attn2d = nn.ModuleList(
                [LocalViewAttention(c, config.attn2d_dim, config.attn2d_heads, config.qkv_bias) for _ in range(v)]
            )
            self.norm2d = nn.ModuleList([nn.LayerNorm(c) for _ in range(v)])
            for mod in (*self.attn2d, *self.norm2d):  # official PointViT._init_weights
                for sub in mod.modules():
                    if isinstance(sub, nn.Linear):
                        nn.init.xavier_uniform_(sub.weight)
                        if sub.bias is not None:
                            nn.init.zeros_(sub.bias)
        self.last_centres: torch.Tensor | None = None
        self.last_pos: torch.Tensor | None = None
        self.last_geometry: GuidedGeometry | None = None
        self.freeze()

    def freeze(self) -> None:
        """Freeze the base model only: Any2Point's own parts (tokenizer, projection, class token and position
        unless ``train_cls_token=False``, final norm unless ``train_norm=False``, guided adapters) stay
        trainable, also after ``create_backbone``'s ``freeze``."""
        frozen = ("base.",)
        if not self.config.train_cls_token:
            frozen += ("cls_token", "cls_pos")
        if not self.config.train_norm:
            frozen += ("norm.",)
        for name, p in self.named_parameters():
            p.requires_grad_(not name.startswith(frozen))
        self.train(self.training)

    # ---- handles ---------------------------------------------------------------------------------------
    @property
    def blocks(self) -> nn.ModuleList:
        """The frozen blocks, each called as ``block(x + pos)``."""
        m = self.base.model
        return m.blocks if isinstance(self.pe, VirtualProjectionPE) else m.transformer.resblocks

    def _pos_table(self) -> torch.Tensor:
        """The base's position table, read live each forward: a ViT's patch rows as ``(1, C, H, W)`` (class
        rows dropped), a text transformer's ``(L, C)``."""
        m = self.base.model
        if getattr(m, "pos_embed", None) is None:
            return m.positional_embedding
        skip = 0 if m.no_embed_class else m.num_prefix_tokens
        return VirtualProjectionPE.to_grid(m.pos_embed[:, skip:], self.grid_size)

    def cell_ids(self, coords: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Per-view cells of the projected centres (the PE's ``cell_index``): ``(B, V, G)`` ids, cells per view."""
        if isinstance(self.pe, VirtualProjectionPE):
            return self.pe.cell_index(coords, self.image_size, self.config.cell_2d)
        return self.pe.cell_index(coords, self.config.cell_1d)

    def trainable_parameters(self) -> dict[str, int]:
        """Trainable parameter counts per top-level part (no head)."""
        counts: dict[str, int] = {}
        for name, p in self.named_parameters():
            if p.requires_grad:
                key = name.split(".")[0]
                counts[key] = counts.get(key, 0) + p.numel()
        return counts

    # ---- forward ---------------------------------------------------------------------------------------
    def check_points(self, points: torch.Tensor) -> torch.Tensor:
        """``points`` unchanged if it is a finite ``(B, N, 3)`` cloud, else ``ValueError`` (the tokenizer checks the
        point count)."""
        if points.ndim != 3 or points.shape[-1] != 3:
            raise ValueError(f"Any2Point expects a (B, N, 3) point cloud, got shape {tuple(points.shape)}")
        if not torch.isfinite(points).all():
            raise ValueError("Any2Point got a point cloud with NaN or infinite coordinates")
        return points

    def tokenize(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cloud ``(B, N, 3)`` -> centres ``(B, G, 3)``, tokens ``(B, G, C)``."""
        centres, tokens = self.tokenizer(self.check_points(points))
        return centres, self.proj(tokens)

    def forward_features(self, points: torch.Tensor) -> torch.Tensor:
        """Cloud ``(B, N, 3)`` -> tokens ``(B, 1 + G, C)`` after the final norm, class token first."""
        centres, tokens = self.tokenize(points)
        bsz = tokens.shape[0]
        coords = self.pe.project(centres)  # (B, V, G, 2) image-plane points or (B, V, G) sequence rows
        pe = self.pe.lookup(coords, self._pos_table()).mean(dim=1).to(tokens.dtype)
        x = torch.cat([self.cls_token.expand(bsz, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(bsz, -1, -1), pe], dim=1)
        self.last_centres, self.last_pos = centres, pos
        call: Callable[[nn.Module, torch.Tensor], torch.Tensor]
        if self.adapters is None:
            call = lambda block, h: block(h + pos)  # noqa: E731
        else:
            with torch.no_grad():
                geo = GuidedGeometry(centres.detach(), *self.cell_ids(coords.detach()), self.config.grid_3d)
            self.last_geometry = geo
            index = {id(b): i for i, b in enumerate(self.blocks)}
            call = lambda block, h: self.adapted_block(block, self.adapters[index[id(block)]], h + pos, geo)  # noqa: E731
        (x,) = self.run_blocks(x, [len(self.blocks) - 1], call)
        return self.norm(x)

    def adapted_block(
        self, block: nn.Module, adapter: GuidedAdapter, x: torch.Tensor, geo: GuidedGeometry
    ) -> torch.Tensor:
        """One frozen block with the guided adapter after its FFN (official ``Block.forward`` /
        ``ResidualAttentionBlock.forward``): ``h = x + ls1(attn(norm1 x))``, ``f = ls2(mlp(norm2 h))``,
        ``h + f + s * bottleneck(f)``, then the 3D / per-view guided branch. ``(B, 1 + G, C)`` -> same."""
        if hasattr(block, "ln_1"):  # open_clip ResidualAttentionBlock (no causal mask, as official)
            h = x + block.ls_1(block.attention(block.ln_1(x)))
            f = block.ls_2(block.mlp(block.ln_2(h)))
        else:  # timm Block
            h = x + block.drop_path1(block.ls1(block.attn(block.norm1(x))))
            f = block.drop_path2(block.ls2(block.mlp(block.norm2(h))))
        h = h + f + self.config.scale_factor * adapter.bottleneck(f)
        return adapter(h, geo, self.attn2d, self.norm2d, self.config.coef_pro)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, P + G, C)`` -> ``[each prefix token, max over point tokens]`` ``(B, (P + 1) C)``."""
        p = self.num_prefix_tokens
        return torch.cat([*tokens[:, :p].unbind(dim=1), tokens[:, p:].amax(dim=1)], dim=-1)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Cloud ``(B, N, 3)`` -> pooled features ``(B, (P + 1) C)``: ``(B, 2C)`` ``[cls, max over point tokens]``."""
        return self.pool(self.forward_features(points))

    def set_bands(self, bands: Sequence[str], init: Any = "copy") -> None:
        """Registry compatibility (as ``PointBackbone``): only ``create_backbone``'s default RGB, a no-op."""
        if tuple(bands) != RGB:
            raise ValueError("Any2Point takes (B, N, 3) point clouds and has no bands to set")

    def load_pretrained(self, path: str) -> None:
        """Load the base model's upstream checkpoint (the PE reads its position table live) and restart the
        final norm (and a ViT's ``cls_token``) from it."""
        self.base.load_pretrained(path)
        m = self.base.model
        final_norm = m.norm if isinstance(self.pe, VirtualProjectionPE) else m.ln_final
        self.norm.load_state_dict(final_norm.state_dict())
        cls = getattr(m, "cls_token", None)
        if cls is not None:
            with torch.no_grad():
                self.cls_token.copy_(cls)

    def describe(self) -> dict[str, Any]:
        """Metadata stored in adapter checkpoints: name, modality, width, point-token count and block count."""
        return {
            "name": self.name,
            "modality": "points",
            "embed_dim": self.embed_dim,
            "num_tokens": self.config.num_tokens,
            "num_blocks": len(self.blocks),
        }
