"""Point-PEFT layers (Tang et al., "Point-PEFT: Parameter-Efficient Fine-Tuning for 3D Pre-trained Models",
AAAI 2024, arXiv:2310.03059), written for the frozen Point-MAE blocks of ``vadapt.backbones.point_mae``.

Shapes: ``B`` clouds, ``G`` patch tokens (centres ``(B, G, 3)``), ``p`` prefix tokens (the class token),
``C`` width, ``T`` prompt tokens, ``M`` bank entries, ``k = T - 2`` retrieved neighbours, ``G'`` local
sub-groups of ``geo_k`` patch tokens each.

Per block (official ``Block.forward``), on the block input ``x = h + pos`` ``(B, p + G, C)``:

1. prompted blocks (the first ``prompt_blocks``): ``[cls, prompts, patches]`` through the frozen block, the
   prompt outputs dropped at its end (Point-prior Prompt, Sec. 3.2). The prompts are
   ``dropout(P) + prior_adapter(prior)``, ``prior = [q, sum_j w_j f_j, f_1..f_k]`` ``(B, T, C)`` from the
   point-prior bank (cosine top-k of the frozen encoder's global feature ``q``, ``w = softmax(cos)``);
2. inside the block, the FFN gets a parallel adapter on its output: ``x + f + 0.7 * adapter(f)``;
3. Geometry-aware Adapter (Sec. 3.3) on the patch tokens: gather ``G'`` k-NN sub-groups around FPS
   sub-centres of the patch centres, self-attention inside each group, max-pool, BN + GELU,
   ``+ 0.3 * sub-centre token``, propagate back to all ``G`` patches by inverse squared-distance weights over
   the ``G'`` sub-centres, ``patches + 0.3 * propagated``;
4. a residual bottleneck adapter on every token: ``x + up(gelu(down(x)))``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from vadapt.adapters.layers import AdapterLayer
from vadapt.geometry.points import farthest_point_sample, gather_points, knn_indices

if TYPE_CHECKING:
    from .config import PointPEFTConfig


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the official adapters' activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise; any shape."""
        return x * torch.sigmoid(1.702 * x)


class Bottleneck(nn.Module):
    """``up(dropout(quick_gelu(down(x))))`` ``(..., C) -> (..., C)``, plus ``x`` when ``residual``.

    Official ``AdapterSuper`` (residual) / ``AdapterSuper_f`` (not): Xavier-uniform weights and N(0, 1e-6)
    biases, so it does not start at zero.
    """

    def __init__(self, dim: int, hidden: int, dropout: float, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.down = nn.Linear(dim, hidden)
        self.act = QuickGELU()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(hidden, dim)
        for layer in (self.down, self.up):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., C)`` -> ``(..., C)``."""
        out = self.up(self.dropout(self.act(self.down(x))))
        return x + out if self.residual else out


@dataclass
class PriorRetrieval:
    """One cosine top-k look-up in the point-prior bank.

    Attributes:
        query: the frozen global features ``(B, C)``.
        indices: bank rows of the ``k`` nearest entries ``(B, k)``, most similar first.
        similarity: their cosine similarities ``(B, k)``.
        weights: ``softmax(similarity)`` ``(B, k)``.
        tokens: prior tokens ``[query, sum_j w_j f_j, f_1 .. f_k]`` ``(B, k + 2, C)``.
    """

    query: torch.Tensor
    indices: torch.Tensor
    similarity: torch.Tensor
    weights: torch.Tensor
    tokens: torch.Tensor


@dataclass
class GeometryContext:
    """Per-forward geometry shared by every block (computed once, from ``backbone.last_centres``).

    Attributes:
        centres: patch centres ``(B, G, 3)`` (the identity check for a new forward).
        sub_idx: patch index of each sub-centre ``(B, G')`` (FPS over the centres).
        group_idx: patch indices of each sub-group ``(B, G', geo_k)`` (k-NN of the sub-centre, itself first).
        idw: inverse squared-distance weights from every patch to the sub-centres ``(B, G, G')``, rows sum to 1.
        prior: this forward's bank retrieval, or ``None`` (empty bank, no prompts, or not yet computed).
    """

    centres: torch.Tensor
    sub_idx: torch.Tensor
    group_idx: torch.Tensor
    idw: torch.Tensor
    prior: PriorRetrieval | None = None


class PointPEFTShared(nn.Module):
    """State shared by all blocks: the point-prior bank, the group attention and the per-forward geometry.

    Installed as ``backbone.point_peft``. The group attention (official ``TransformerEncoder.attn1`` and
    ``norm3``, one for all blocks) keeps its projection weights as direct parameters of this module so that
    its bank buffers (``bank_features`` ``(M, C)``, ``bank_labels`` ``(M,)``) are saved with the adapter
    (``adapter_state_dict`` keeps buffers of modules that own a trainable parameter).

    Filling the bank (a task does this once, before training, on its training set)::

        feats, labels = [], []
        for points, y in train_loader:                          # (B, N, 3), (B,)
            feats.append(point_prior_features(backbone, points))  # frozen encoder, adapters bypassed: (B, C)
            labels.append(y)
        backbone.point_peft.build_prior_bank(torch.cat(feats), torch.cat(labels))

    While the bank is empty, the prompts are the learned tokens alone (the official ``cp_feat=None`` path).
    """

    def __init__(self, backbone: nn.Module, dim: int, config: PointPEFTConfig) -> None:
        super().__init__()
        self.__dict__["_backbone"] = backbone  # not registered: the backbone owns this module
        self.dim = dim
        self.num_prefix_tokens = int(getattr(backbone, "num_prefix_tokens", 1))
        self.topk = config.prior_topk
        self.use_prior = config.prompt_blocks > 0
        self.geo_k = config.geo_k
        self.geo_group_ratio = config.geo_group_ratio
        self.geo_heads = config.geo_heads
        self.geo_attn_dim = config.geo_attn_dim
        self.enabled = True
        self.context: GeometryContext | None = None
        # group attention (official Attention1 + norm3): qkv (no bias) C -> 3 * inner, proj inner -> C
        self.norm = nn.LayerNorm(dim)
        self.qkv_weight = nn.Parameter(torch.empty(3 * config.geo_attn_dim, dim))
        self.proj_weight = nn.Parameter(torch.empty(dim, config.geo_attn_dim))
        self.proj_bias = nn.Parameter(torch.empty(dim))
        for w in (self.qkv_weight, self.proj_weight):  # nn.Linear's default init, as the official
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(config.geo_attn_dim)
        nn.init.uniform_(self.proj_bias, -bound, bound)
        # sized by the data (build_prior_bank), not by the config: checkpoint loading accepts any size
        self.data_sized_buffers = ("bank_features", "bank_labels")
        self.register_buffer("bank_features", torch.zeros(0, dim))
        self.register_buffer("bank_labels", torch.zeros(0, dtype=torch.long))

    @property
    def backbone(self) -> nn.Module:
        """The backbone this state belongs to; kept out of ``_modules``, so it is neither a submodule nor in
        ``state_dict``."""
        return self.__dict__["_backbone"]

    # ---- point-prior bank ----------------------------------------------------------------------------------
    @property
    def bank_size(self) -> int:
        """Entries ``M`` in the point-prior bank (0 while it is empty)."""
        return int(self.bank_features.shape[0])

    @torch.no_grad()
    def build_prior_bank(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Fill the bank with frozen global features ``(M, C)`` of the training clouds and their labels ``(M,)``.

        ``features`` should come from :func:`point_prior_features` (what the forward uses as the query). The
        official retrieval does not read the labels; they are kept with the bank for inspection.
        """
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"build_prior_bank: features must be (M, {self.dim}), got {tuple(features.shape)}")
        if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
            raise ValueError(
                f"build_prior_bank: labels must be ({features.shape[0]},) to match features, got {tuple(labels.shape)}"
            )
        if features.shape[0] < self.topk:
            raise ValueError(
                f"build_prior_bank: the bank needs at least prompt_tokens - 2 = {self.topk} entries, "
                f"got {features.shape[0]}"
            )
        if not torch.isfinite(features).all():
            raise ValueError("build_prior_bank: features hold NaN or infinite values")
        device = self.proj_bias.device
        self.bank_features = features.detach().to(device=device, dtype=torch.float32).clone()
        self.bank_labels = labels.detach().to(device=device, dtype=torch.long).clone()

    def clear_prior_bank(self) -> None:
        """Empty the bank: the prompts go back to the learned tokens alone."""
        device = self.proj_bias.device
        self.bank_features = torch.zeros(0, self.dim, device=device)
        self.bank_labels = torch.zeros(0, dtype=torch.long, device=device)

    def retrieve(self, query: torch.Tensor) -> PriorRetrieval:
        """Cosine top-k of ``query`` ``(B, C)`` in the bank; prior tokens ``(B, k + 2, C)`` (official cache prompt)."""
        if self.bank_size == 0:
            raise RuntimeError("the point-prior bank is empty: call build_prior_bank first")
        bank = self.bank_features
        query = query.to(bank.dtype)
        sim = F.normalize(query, dim=-1) @ F.normalize(bank, dim=-1).T  # (B, M)
        similarity, indices = sim.topk(self.topk, dim=-1)  # sorted, most similar first
        weights = similarity.softmax(dim=-1)  # (B, k), no temperature (official)
        top = bank[indices]  # (B, k, C)
        fused = torch.einsum("bk,bkc->bc", weights, top)
        tokens = torch.cat([query.unsqueeze(1), fused.unsqueeze(1), top], dim=1)
        return PriorRetrieval(query, indices, similarity, weights, tokens)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # the bank's size is data: take the stored size before the shape-checked copy
        for name in ("bank_features", "bank_labels"):
            stored = state_dict.get(prefix + name)
            if isinstance(stored, torch.Tensor):
                current = getattr(self, name)
                setattr(self, name, torch.empty(stored.shape, dtype=current.dtype, device=current.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---- adapters on / off (the frozen reference forward) --------------------------------------------------
    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Every Point-PEFT layer passes through to its frozen module inside this context."""
        previous, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = previous

    @torch.no_grad()
    def frozen_query(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen encoder's global feature ``(B, C)`` from the first block's input ``x = h + pos``.

        Runs the frozen blocks (eval mode, adapters bypassed) and the final norm, then max-pools the patch
        tokens: the same value as :func:`point_prior_features` on the cloud (the official ``cp_model``).
        """
        backbone = self.backbone
        pos = backbone.last_pos
        modules = [backbone.blocks, backbone.norm]
        modes = [(m, m.training) for root in modules for m in root.modules()]
        try:
            for root in modules:
                root.eval()
            with self.disabled():
                h = x
                for i, block in enumerate(backbone.blocks):
                    h = block(h if i == 0 else h + pos)
                h = backbone.norm(h)
        finally:
            for m, mode in modes:
                m.training = mode
        return h[:, self.num_prefix_tokens:].amax(dim=1)

    # ---- per-forward geometry --------------------------------------------------------------------------------
    @torch.no_grad()
    def begin_forward(self, x: torch.Tensor) -> GeometryContext:
        """Called by the first block: sub-groups and propagation weights over ``backbone.last_centres``
        ``(B, G, 3)``, and the bank retrieval when the bank is filled."""
        centres = getattr(self.backbone, "last_centres", None)
        p = self.num_prefix_tokens
        if centres is None or centres.shape[0] != x.shape[0] or centres.shape[1] != x.shape[1] - p:
            raise RuntimeError(
                "Point-PEFT reads the patch centres of the current forward (backbone.last_centres, (B, G, 3)): "
                "call the backbone (forward / forward_features), not its blocks directly"
            )
        g = centres.shape[1]
        if self.geo_k > g:
            raise ValueError(f"PointPEFTConfig.geo_k={self.geo_k} is larger than the {g} patches of this backbone")
        num_sub = max(1, int(g * self.geo_group_ratio))
        sub_idx = farthest_point_sample(centres, num_sub)  # (B, G')
        sub_centres = gather_points(centres, sub_idx)  # (B, G', 3)
        group_idx = knn_indices(centres, sub_centres, self.geo_k)  # (B, G', k)
        d2 = (centres.float().unsqueeze(2) - sub_centres.float().unsqueeze(1)).square().sum(-1)  # (B, G, G')
        recip = 1.0 / (d2 + 1e-8)
        idw = recip / recip.sum(dim=-1, keepdim=True)
        ctx = GeometryContext(centres, sub_idx, group_idx, idw)
        if self.use_prior and self.bank_size > 0:
            ctx.prior = self.retrieve(self.frozen_query(x))
        self.context = ctx
        return ctx

    def current_context(self, x: torch.Tensor) -> GeometryContext:
        """The :class:`GeometryContext` of the current forward for block input ``x`` ``(B, p + G, C)``: the one block 0
        built, or a new one (:meth:`begin_forward`) when the centres changed since."""
        ctx = self.context
        centres = getattr(self.backbone, "last_centres", None)
        if ctx is None or ctx.centres is not centres or ctx.centres.shape[0] != x.shape[0]:
            return self.begin_forward(x)  # first call of a forward not through block 0 (only geometry needed)
        return ctx

    def group_attention(self, groups: torch.Tensor) -> torch.Tensor:
        """Self-attention inside each sub-group: ``(n, k, C) -> (n, k, C)`` (official ``attn1(norm3(.))``).

        ``geo_heads`` heads of width ``geo_attn_dim / geo_heads``, scaled by ``geo_attn_dim ** -0.5`` as the
        official (which hard-codes ``18 ** -0.5``).
        """
        n, k, _ = groups.shape
        inner = self.geo_attn_dim
        qkv = F.linear(self.norm(groups), self.qkv_weight)
        q, key, v = qkv.reshape(n, k, 3, self.geo_heads, inner // self.geo_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, key, v, scale=inner ** -0.5)  # (n, heads, k, d)
        return F.linear(out.transpose(1, 2).reshape(n, k, inner), self.proj_weight, self.proj_bias)


class FFNAdapter(AdapterLayer):
    """The block's FFN with the official parallel adapter on its output: ``f -> f + s * adapter(f)``.

    The block then adds it to its residual: ``x + f + s * adapter(f)`` (official
    ``x = 0.7 * self.adapter(x_fn) + x_fn + x``). Shapes ``(B, L, C) -> (B, L, C)``.
    """

    def __init__(self, base_layer: nn.Module, shared: PointPEFTShared, dim: int, config: PointPEFTConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.__dict__["_shared"] = shared
        self.scale = config.adapter_scale
        self.adapter = Bottleneck(dim, config.adapter_dim, config.adapter_dropout, residual=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, C)`` -> ``(B, L, C)``: ``f + s * adapter(f)`` with ``f`` the frozen FFN output; ``f`` alone while
        Point-PEFT is disabled."""
        f = self.base_layer(x)
        if not self.__dict__["_shared"].enabled:
            return f
        return f + self.scale * self.adapter(f)


class PointPEFTBlock(AdapterLayer):
    """A frozen Point-MAE block with Point-PEFT around it: ``(B, p + G, C) -> (B, p + G, C)``.

    Args:
        base_layer: the frozen block (its ``mlp`` already wrapped in :class:`FFNAdapter`), called on ``x + pos``.
        index: the block's position; block 0 computes the per-forward geometry and the bank retrieval.
        shared: the backbone's :class:`PointPEFTShared`.
        dim: token width ``C``.
        config: the method's settings.
        prompted: whether this block inserts prompt tokens (the first ``prompt_blocks`` blocks).
    """

    def __init__(self, base_layer: nn.Module, index: int, shared: PointPEFTShared, dim: int,
                 config: PointPEFTConfig, prompted: bool) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.index = index
        self.__dict__["_shared"] = shared
        self.centre_scale = config.geo_centre_scale
        self.prop_scale = config.geo_prop_scale
        self.prompt: nn.Parameter | None = None
        self.prior_adapter: Bottleneck | None = None
        if prompted:
            self.prompt = nn.Parameter(torch.zeros(config.prompt_tokens, dim))
            nn.init.trunc_normal_(self.prompt, std=0.02)
            self.prompt_dropout = nn.Dropout(config.prompt_dropout)
            self.prior_adapter = Bottleneck(dim, config.prior_adapter_dim, config.adapter_dropout, residual=True)
        self.out_transform = nn.Sequential(nn.BatchNorm1d(dim), nn.GELU())
        self.post_adapter = Bottleneck(dim, config.adapter_dim, config.adapter_dropout, residual=True)

    @property
    def shared(self) -> PointPEFTShared:
        """The backbone's :class:`PointPEFTShared` (kept out of ``_modules``: the backbone owns it)."""
        return self.__dict__["_shared"]

    def prompts(self, batch: int, ctx: GeometryContext) -> torch.Tensor:
        """This block's prompt tokens ``(B, T, C)``: ``dropout(P)``, plus ``prior_adapter(prior)`` with a bank."""
        assert self.prompt is not None and self.prior_adapter is not None
        prompt = self.prompt_dropout(self.prompt).unsqueeze(0).expand(batch, -1, -1)
        if ctx.prior is not None:
            prompt = prompt + self.prior_adapter(ctx.prior.tokens.to(prompt.dtype))
        return prompt

    def geometry(self, patches: torch.Tensor, ctx: GeometryContext) -> torch.Tensor:
        """Geometry-aware adapter: patch tokens ``(B, G, C)`` -> propagated group features ``(B, G, C)``."""
        bsz, _, c = patches.shape
        groups = gather_points(patches, ctx.group_idx)  # (B, G', k, C)
        _, num_sub, k, _ = groups.shape
        flat = groups.reshape(bsz * num_sub, k, c)
        attended = self.shared.group_attention(flat)
        drop_path = getattr(self.base_layer, "drop_path", None)  # the block's stochastic depth, as the official
        flat = flat + (drop_path(attended) if isinstance(drop_path, nn.Module) else attended)
        pooled = flat.reshape(bsz, num_sub, k, c).amax(dim=2)  # (B, G', C)
        pooled = self.out_transform(pooled.transpose(1, 2)).transpose(1, 2)
        vis = pooled + self.centre_scale * gather_points(patches, ctx.sub_idx)  # (B, G', C)
        return torch.einsum("bgs,bsc->bgc", ctx.idw.to(vis.dtype), vis)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block input ``x + pos`` ``(B, p + G, C)`` -> ``(B, p + G, C)``: prompts (prompted blocks only), the frozen
        block, the geometry-aware adapter on the patch tokens, then the residual bottleneck. The frozen block alone
        while Point-PEFT is disabled."""
        shared = self.shared
        if not shared.enabled:
            return self.base_layer(x)
        ctx = shared.begin_forward(x) if self.index == 0 else shared.current_context(x)
        p = shared.num_prefix_tokens
        if self.prompt is not None:
            t = self.prompt.shape[0]
            prompt = self.prompts(x.shape[0], ctx).to(x.dtype)
            h = self.base_layer(torch.cat([x[:, :p], prompt, x[:, p:]], dim=1))
            h = torch.cat([h[:, :p], h[:, p + t:]], dim=1)  # prompts dropped at the block's end
        else:
            h = self.base_layer(x)
        patches = h[:, p:]
        patches = patches + self.prop_scale * self.geometry(patches, ctx)
        return self.post_adapter(torch.cat([h[:, :p], patches], dim=1))


@torch.no_grad()
def point_prior_features(backbone: nn.Module, points: torch.Tensor) -> torch.Tensor:
    """Frozen global features ``(B, C)`` of clouds ``(B, N, 3)``: the bank entries and the forward's query.

    The frozen backbone (eval mode, Point-PEFT bypassed) -> tokens ``(B, p + G, C)`` -> max over the patch
    tokens, as the official ``cp_model(points, eval=True)`` (the pretrained encoder, max-pooled).
    """
    shared = getattr(backbone, "point_peft", None)
    modes = [(m, m.training) for m in backbone.modules()]
    backbone.eval()
    try:
        if isinstance(shared, PointPEFTShared):
            with shared.disabled():
                tokens = backbone.forward_features(points)
        else:
            tokens = backbone.forward_features(points)
    finally:
        for m, mode in modes:
            m.training = mode
    return tokens[:, int(getattr(backbone, "num_prefix_tokens", 1)):].amax(dim=1)
