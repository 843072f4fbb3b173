"""Any2Point's 3D model: a frozen 2D ViT run on point tokens (Tang et al., ECCV 2024, arXiv:2404.07989).

Pipeline (official ``PointViT.forward`` of ``Any2Point_DINOV2_Vision``):

1. :class:`~.layer.PointPNTokenizer` (trainable): cloud ``(B, N, 3)`` -> centres ``(B, G, 3)``, tokens
   ``(B, G, D)`` (1024 points -> 128 tokens of 768); a Linear maps ``D`` to the ViT width if they differ.
2. :class:`~.layer.VirtualProjectionPE` (no parameters): the frozen ViT's 2D position grid read at the
   centres' projections in 6 virtual views, averaged: ``(B, G, C)``.
3. ``[cls, tokens]`` ``(B, 1 + G, C)``; ``[cls_pos, PE]`` is added to the input of EVERY frozen block
   (official ``add_pos_each_block=True``), then the ViT's frozen final norm.
4. Any-to-3D guided adapter (``adapter_dim > 0``): each frozen block runs as
   ``h = x + attn part``; ``f = ls2(mlp(norm2 h))``; ``h + f + s * bottleneck(f)``, then
   :class:`~.layer.GuidedAdapter` (3D voxel branch + 6 per-view local-attention branches, view-weighted).
   The per-view attention and its LayerNorm (``attn2d``, ``norm2d``) are shared by all blocks, as official.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from vadapt.backbones.base import BlockStack
from vadapt.bands import RGB

from .config import Any2PointConfig
from .layer import GuidedAdapter, GuidedGeometry, LocalViewAttention, PointPNTokenizer, VirtualProjectionPE


class Any2PointBackbone(BlockStack):
    """A frozen timm ViT (``TimmViTBackbone``, e.g. ``vit_base_patch14_dinov2``) as a point-cloud backbone.

    ``forward_features(points)`` maps ``(B, N, 3)`` to ``(B, 1 + G, C)`` (class token first), ``pool`` to
    ``(B, 2C)`` = ``[cls, max over point tokens]`` (the head's input, as ``PointBackbone.pool``; the official
    ``global_feat: max,cls`` concatenates the same two vectors in the other order). Only the tokenizer, the
    projection (if any), ``cls_token``, ``cls_pos`` and the guided adapters (``adapters``, ``attn2d``,
    ``norm2d``) train; the ViT stays bit-identical.

    Args:
        vit: the image backbone (its ``model`` a timm ``VisionTransformer`` with an absolute ``pos_embed``).
        config: :class:`Any2PointConfig` (official DINOv2 / ScanObjectNN defaults).
    """

    block_layout = "tokens"
    num_prefix_tokens: int = 1
    bands: tuple[str, ...] = ()

    def __init__(self, vit: nn.Module, config: Any2PointConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or Any2PointConfig()
        m = vit.model
        if getattr(m, "pos_embed", None) is None:
            raise ValueError("Any2Point needs a ViT with an absolute position embedding (pos_embed)")
        self.name = f"any2point_{getattr(vit, 'name', '') or type(vit).__name__}"
        self.vit = vit
        self.embed_dim = m.embed_dim
        self.out_channels = [self.embed_dim]
        self.patch_size = 1
        self.grid_size = tuple(m.patch_embed.grid_size)
        self.tokenizer = PointPNTokenizer(
            config.num_points, config.num_stages, config.tokenizer_dim, config.k_neighbors,
            config.alpha, config.beta, config.lga_blocks, config.last_bottleneck,
        )
        d = self.tokenizer.out_channels
        self.proj = nn.Linear(d, self.embed_dim) if d != self.embed_dim else nn.Identity()
        if isinstance(self.proj, nn.Linear):  # official PointViT._init_weights
            nn.init.xavier_uniform_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)
        self.pe = VirtualProjectionPE(self._pos_grid(), self.grid_size, config.num_views, config.trans)
        # the official model keeps a cls_token key (so DINOv2's loads into it) and a new, random cls_pos
        cls = m.cls_token.detach().clone() if getattr(m, "cls_token", None) is not None else None
        self.cls_token = nn.Parameter(cls if cls is not None else torch.randn(1, 1, self.embed_dim) * 0.02)
        self.cls_pos = nn.Parameter(torch.randn(1, 1, self.embed_dim) * 0.02)
        self.image_size = config.image_size or self.grid_size[0] * m.patch_embed.patch_size[0]
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
        """Freeze the 2D ViT only: Any2Point's own parts (tokenizer, projection, class token and position unless
        ``train_cls_token=False``, guided adapters) stay trainable, also after ``create_backbone``'s ``freeze``."""
        for name, p in self.named_parameters():
            new = not name.startswith("vit.") and (self.config.train_cls_token or name not in ("cls_token", "cls_pos"))
            p.requires_grad_(new)
        self.train(self.training)

    # ---- handles ---------------------------------------------------------------------------------------
    @property
    def blocks(self) -> nn.ModuleList:
        """The frozen ViT blocks, each called as ``block(x + pos)``."""
        return self.vit.model.blocks

    @property
    def norm(self) -> nn.Module:
        return self.vit.model.norm

    def _pos_grid(self) -> torch.Tensor:
        """The ViT's patch position rows as ``(1, C, H, W)`` (class rows dropped), read live each forward."""
        m = self.vit.model
        skip = 0 if m.no_embed_class else m.num_prefix_tokens
        return VirtualProjectionPE.to_grid(m.pos_embed[:, skip:], self.grid_size)

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
        """Cloud ``(B, N, 3)`` -> tokens ``(B, 1 + G, C)`` after the ViT's final norm, class token first."""
        centres, tokens = self.tokenize(points)
        bsz = tokens.shape[0]
        uv = self.pe.project(centres)  # (B, V, G, 2)
        pe = self.pe.lookup(uv, self._pos_grid()).mean(dim=1).to(tokens.dtype)
        x = torch.cat([self.cls_token.expand(bsz, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(bsz, -1, -1), pe], dim=1)
        self.last_centres, self.last_pos = centres, pos
        call: Callable[[nn.Module, torch.Tensor], torch.Tensor]
        if self.adapters is None:
            call = lambda block, h: block(h + pos)  # noqa: E731
        else:
            cfg = self.config
            with torch.no_grad():
                geo = GuidedGeometry(centres.detach(), uv.detach(), cfg.grid_3d, self.image_size, cfg.cell_2d)
            self.last_geometry = geo
            index = {id(b): i for i, b in enumerate(self.blocks)}
            call = lambda block, h: self.adapted_block(block, self.adapters[index[id(block)]], h + pos, geo)  # noqa: E731
        (x,) = self.run_blocks(x, [len(self.blocks) - 1], call)
        return self.norm(x)

    def adapted_block(
        self, block: nn.Module, adapter: GuidedAdapter, x: torch.Tensor, geo: GuidedGeometry
    ) -> torch.Tensor:
        """One frozen timm ``Block`` with the guided adapter after its FFN (official ``Block.forward``):
        ``h = x + dp(ls1(attn(norm1 x)))``, ``f = dp(ls2(mlp(norm2 h)))``, ``h + f + s * bottleneck(f)``, then
        the 3D/2D guided branch. ``(B, 1 + G, C)`` -> same."""
        h = x + block.drop_path1(block.ls1(block.attn(block.norm1(x))))
        f = block.drop_path2(block.ls2(block.mlp(block.norm2(h))))
        h = h + f + self.config.scale_factor * adapter.bottleneck(f)
        return adapter(h, geo, self.attn2d, self.norm2d, self.config.coef_pro)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, P + G, C)`` -> ``[each prefix token, max over point tokens]`` ``(B, (P + 1) C)``."""
        p = self.num_prefix_tokens
        return torch.cat([*tokens[:, :p].unbind(dim=1), tokens[:, p:].amax(dim=1)], dim=-1)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(points))

    def set_bands(self, bands: Sequence[str], init: Any = "copy") -> None:
        """Registry compatibility (as ``PointBackbone``): only ``create_backbone``'s default RGB, a no-op."""
        if tuple(bands) != RGB:
            raise ValueError("Any2Point takes (B, N, 3) point clouds and has no bands to set")

    def load_pretrained(self, path: str) -> None:
        """Load the 2D ViT's upstream checkpoint into the wrapped ViT (the PE reads its ``pos_embed`` live) and
        restart ``cls_token`` from the loaded class token."""
        self.vit.load_pretrained(path)
        cls = getattr(self.vit.model, "cls_token", None)
        if cls is not None:
            with torch.no_grad():
                self.cls_token.copy_(cls)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "modality": "points",
            "embed_dim": self.embed_dim,
            "num_tokens": self.config.num_tokens,
            "num_blocks": len(self.blocks),
        }


def create_any2point(
    vit: str = "vit_base_patch14_dinov2", weights: str | None = None, **config: Any
) -> Any2PointBackbone:
    """Build a registered timm ViT (``vit``, ``weights`` as :func:`~vadapt.backbones.create_backbone`) and wrap
    it: ``create_any2point("dinov2_test", num_points=128, tokenizer_dim=6, k_neighbors=8)``."""
    from vadapt.backbones import create_backbone

    backbone = Any2PointBackbone(create_backbone(vit, weights=weights), Any2PointConfig(**config))
    backbone.name = f"any2point_{vit}"
    return backbone
