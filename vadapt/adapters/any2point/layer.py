"""Any2Point layers (Tang et al., ECCV 2024, arXiv:2404.07989): the 3D->2D and 3D->1D virtual-projection
position encodings (Sec. 3.2), the any-to-3D guided adapter (Sec. 3.3) and the Point-PN-style tokenizer of the
official code (``Any2Point_DINOV2_Vision`` / ``Any2Point_CLIP_Lang``: ``models/backbone/Point_PN.py``,
``models/peft_module/mv_utils.py``, ``models/layers/attention.py``), rewritten in plain batched torch."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vadapt.geometry.points import farthest_point_sample, gather_points, knn_indices

# ---- 3D -> 2D virtual projection ---------------------------------------------------------------------------


def euler_to_matrix(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(V, 3, 3)`` ``Rx @ Ry @ Rz`` of Euler angles ``(V, 3)`` (official ``euler2mat``)."""
    x, y, z = angles.unbind(-1)
    zero, one = torch.zeros_like(x), torch.ones_like(x)
    rz = torch.stack([z.cos(), -z.sin(), zero, z.sin(), z.cos(), zero, zero, zero, one], -1).view(-1, 3, 3)
    ry = torch.stack([y.cos(), zero, y.sin(), zero, one, zero, -y.sin(), zero, y.cos()], -1).view(-1, 3, 3)
    rx = torch.stack([one, zero, zero, zero, x.cos(), -x.sin(), zero, x.sin(), x.cos()], -1).view(-1, 3, 3)
    return rx @ ry @ rz


#: Euler angles of the six official views (``PCViews.get_pos``): four around x, two around y
SIX_VIEWS: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.0, math.pi / 2),
    (math.pi / 2, 0.0, math.pi / 2),
    (math.pi, 0.0, math.pi / 2),
    (3 * math.pi / 2, 0.0, math.pi / 2),
    (0.0, -math.pi / 2, math.pi / 2),
    (0.0, math.pi / 2, math.pi / 2),
)


class VirtualProjectionPE(nn.Module):
    """3D->2D virtual projection position encoding (Any2Point Sec. 3.2, "3D-to-any virtual projection").

    Each token centre ``p`` ``(B, G, 3)`` is seen by ``V`` fixed virtual pinhole cameras (official six views,
    rotation ``R_v`` then a shift ``(0, 0, trans)``): ``q = R_v p - (0, 0, trans)`` lands on the image plane at
    ``u = (q_x / q_z, q_y / q_z)`` in ``[-1, 1]``. The frozen 2D position-embedding grid ``(H, W, C)`` of the
    pretrained ViT is read there by bilinear interpolation, and the ``V`` lookups are averaged: ``(B, G, C)``.
    No parameters.

    The image plane ``[-1, 1]^2`` spans the whole patch grid, patch ``(i, j)`` covering
    ``[2j/W - 1, 2(j+1)/W - 1] x [2i/H - 1, 2(i+1)/H - 1]`` (``grid_sample``, ``align_corners=False``): a token
    projecting onto a patch centre gets exactly that patch's row. ``u_x`` indexes the width, ``u_y`` the height.
    Outside the plane the border rows are used.

    Args:
        pos_grid: the 2D position embeddings of the patches (no class row), ``(1, H, W, C)`` or ``(1, H*W, C)``.
        grid_size: ``(H, W)``; required for the flat layout unless the grid is square.
        views: number of virtual views (the first ``views`` of :data:`SIX_VIEWS`; official 6).
        trans: camera shift along z (official ``--trans=-1.8``; must be negative).
    """

    def __init__(
        self,
        pos_grid: torch.Tensor,
        grid_size: Sequence[int] | None = None,
        views: int = 6,
        trans: float = -1.8,
    ) -> None:
        super().__init__()
        if not 1 <= views <= len(SIX_VIEWS):
            raise ValueError(f"views must be in 1..{len(SIX_VIEWS)}, got {views}")
        self.views = views
        self.trans = trans
        self.register_buffer("pos_grid", self.to_grid(pos_grid, grid_size), persistent=False)  # (1, C, H, W)
        rot = euler_to_matrix(torch.tensor(SIX_VIEWS[:views], dtype=torch.float64)).float()
        self.register_buffer("rotations", rot, persistent=False)  # (V, 3, 3)

    @staticmethod
    def to_grid(pos_grid: torch.Tensor, grid_size: Sequence[int] | None = None) -> torch.Tensor:
        """``(1, H, W, C)`` or ``(1, H*W, C)`` -> ``(1, C, H, W)`` (detached: the 2D grid never trains)."""
        pos_grid = pos_grid.detach()
        if pos_grid.ndim == 3:
            n = pos_grid.shape[1]
            if grid_size is None:
                side = math.isqrt(n)
                if side * side != n:
                    raise ValueError(f"grid_size is needed for a non-square flat grid of {n} rows")
                grid_size = (side, side)
            h, w = grid_size
            if h * w != n:
                raise ValueError(f"grid_size {tuple(grid_size)} does not match {n} position rows")
            pos_grid = pos_grid.reshape(1, h, w, -1)
        if pos_grid.ndim != 4 or pos_grid.shape[0] != 1:
            raise ValueError(f"pos_grid must be (1, H, W, C) or (1, H*W, C), got {tuple(pos_grid.shape)}")
        return pos_grid.permute(0, 3, 1, 2).contiguous()

    def project(self, centres: torch.Tensor) -> torch.Tensor:
        """Centres ``(B, G, 3)`` -> image-plane coordinates ``(B, V, G, 2)`` (``x / z``, ``y / z``)."""
        q = torch.einsum("vij,bgj->bvgi", self.rotations.to(centres.dtype), centres)
        depth = q[..., 2] - self.trans
        return q[..., :2] / depth.clamp_min(1e-6).unsqueeze(-1)

    def lookup(self, uv: torch.Tensor, pos_grid: torch.Tensor | None = None) -> torch.Tensor:
        """Bilinear read of the grid at image-plane points ``uv`` ``(B, V, G, 2)`` -> ``(B, V, G, C)``."""
        grid = self.pos_grid if pos_grid is None else pos_grid
        bsz, v, g, _ = uv.shape
        grid = grid.to(uv.dtype).expand(bsz, -1, -1, -1)
        out = F.grid_sample(grid, uv, mode="bilinear", padding_mode="border", align_corners=False)  # (B, C, V, G)
        return out.permute(0, 2, 3, 1)

    def view_embeddings(self, centres: torch.Tensor, pos_grid: torch.Tensor | None = None) -> torch.Tensor:
        """Per-view position embeddings ``(B, V, G, C)`` of centres ``(B, G, 3)``."""
        return self.lookup(self.project(centres), pos_grid)

    def forward(self, centres: torch.Tensor, pos_grid: torch.Tensor | None = None) -> torch.Tensor:
        """Centres ``(B, G, 3)`` -> position embeddings ``(B, G, C)``, the mean over the ``V`` views.

        ``pos_grid`` ``(1, C, H, W)`` overrides the stored grid (the backbone passes its live ``pos_embed``).
        """
        return self.view_embeddings(centres, pos_grid).mean(dim=1)

    def cell_index(self, uv: torch.Tensor, image_size: int, cell_size: float) -> tuple[torch.Tensor, int]:
        """Square 2D cells of ``cell_size`` pixels on the ``image_size``-pixel virtual image (official
        ``coef_2dgird``: 26 px on 518 -> 20 x 20 cells). ``uv`` ``(B, V, G, 2)`` -> cell ids ``(B, V, G)`` in
        ``0 .. cells - 1`` and the number of cells per image."""
        side = math.ceil(image_size / cell_size)
        ij = ((uv + 1) / 2 * (image_size / cell_size)).floor().long().clamp(0, side - 1)
        return ij[..., 0] + ij[..., 1] * side, side * side


class SequenceProjectionPE(nn.Module):
    """3D->1D virtual projection position encoding for a frozen 1D transformer (Any2Point Sec. 3.2, the CLIP
    text-transformer variant; official ``Any2Point_CLIP_Lang`` ``PCViews.get_pos`` / ``points2pos``).

    Each centre ``p`` ``(B, G, 3)`` is rotated into the ``V`` views of :data:`SIX_VIEWS` and projected onto one
    line, ``s = (R_v p) . d`` with ``d`` the unit ``direction`` (official ``--pos_cor -1 0 1``); per cloud and view
    ``s`` is min-max normalised onto the row range ``t in [0, L - 1]`` of the frozen ``(L, C)`` position table
    (CLIP: 77 rows), read by linear interpolation and averaged over views. No parameters.

    Deviation: the official code scales by ``L`` and shifts by ``-0.5`` modulo ``L`` (the lowest point wraps to
    the last row), then rescales by the range of the whole batch, and its interpolation weights vanish when
    ``t`` is an integer (the embedding becomes zero there). Here the extreme points read the first and last rows
    and a token at an integer ``t`` gets exactly row ``t``.

    Args:
        pos_table: the 1D position embeddings, ``(L, C)`` or ``(1, L, C)``.
        views: number of virtual views (official 6).
        direction: projection direction in view coordinates (official ``(-1, 0, 1)``; normalised here).
    """

    def __init__(
        self, pos_table: torch.Tensor, views: int = 6, direction: Sequence[float] = (-1.0, 0.0, 1.0)
    ) -> None:
        super().__init__()
        if not 1 <= views <= len(SIX_VIEWS):
            raise ValueError(f"views must be in 1..{len(SIX_VIEWS)}, got {views}")
        length = math.hypot(*direction) if len(direction) == 3 else 0.0
        if not length > 0:
            raise ValueError(f"direction must be a non-zero 3-vector, got {list(direction)}")
        self.views = views
        self.register_buffer("pos_table", self.to_table(pos_table), persistent=False)  # (L, C)
        rot = euler_to_matrix(torch.tensor(SIX_VIEWS[:views], dtype=torch.float64))
        d = torch.tensor([c / length for c in direction], dtype=torch.float64)
        self.register_buffer("axes", (rot.transpose(1, 2) @ d).float(), persistent=False)  # (V, 3): R_v^T d

    @staticmethod
    def to_table(pos_table: torch.Tensor) -> torch.Tensor:
        """``(L, C)`` or ``(1, L, C)`` -> ``(L, C)`` (detached: the position table never trains)."""
        table = pos_table.detach()
        table = table[0] if table.ndim == 3 and table.shape[0] == 1 else table
        if table.ndim != 2 or table.shape[0] < 2:
            raise ValueError(f"pos_table must be (L, C) or (1, L, C) with L >= 2, got {tuple(pos_table.shape)}")
        return table

    def project(self, centres: torch.Tensor) -> torch.Tensor:
        """Centres ``(B, G, 3)`` -> fractional rows ``t`` ``(B, V, G)`` in ``[0, L - 1]``."""
        s = torch.einsum("vj,bgj->bvg", self.axes.to(centres.dtype), centres)  # (R_v p) . d = p . (R_v^T d)
        low, high = s.amin(dim=-1, keepdim=True), s.amax(dim=-1, keepdim=True)
        return (s - low) / (high - low).clamp_min(1e-12) * (self.pos_table.shape[0] - 1)

    def lookup(self, t: torch.Tensor, pos_table: torch.Tensor | None = None) -> torch.Tensor:
        """Linear read of the table at fractional rows ``t`` ``(B, V, G)`` -> ``(B, V, G, C)``."""
        table = self.pos_table if pos_table is None else self.to_table(pos_table)
        last = table.shape[0] - 1
        t = t.clamp(0, last)
        low = t.floor().long().clamp(max=last - 1)
        w = (t - low.to(t.dtype)).unsqueeze(-1)
        table = table.to(t.dtype)
        return (1 - w) * table[low] + w * table[low + 1]

    def view_embeddings(self, centres: torch.Tensor, pos_table: torch.Tensor | None = None) -> torch.Tensor:
        """Per-view position embeddings ``(B, V, G, C)`` of centres ``(B, G, 3)``."""
        return self.lookup(self.project(centres), pos_table)

    def forward(self, centres: torch.Tensor, pos_table: torch.Tensor | None = None) -> torch.Tensor:
        """Centres ``(B, G, 3)`` -> position embeddings ``(B, G, C)``, the mean over the ``V`` views."""
        return self.view_embeddings(centres, pos_table).mean(dim=1)

    def cell_index(self, t: torch.Tensor, cell_size: float) -> tuple[torch.Tensor, int]:
        """1D cells of ``cell_size`` rows (official ``coef_1dgird`` 2 -> 39 cells of CLIP's 77 rows): ``t``
        ``(B, V, G)`` -> cell ids ``(B, V, G)`` and the number of cells per sequence."""
        cells = math.ceil(self.pos_table.shape[0] / cell_size)
        return (t / cell_size).floor().long().clamp(0, cells - 1), cells


# ---- Point-PN tokenizer (official Point_PN_scan) ----------------------------------------------------------


class PosEGeo(nn.Module):
    """Point-PN trigonometric encoding of relative neighbour coordinates (official ``PosE_Geo``), added to the
    features: ``(B, 3, G, K)`` xyz, ``(B, D, G, K)`` features -> ``(B, D, G, K)``, ``D = 6 * d``."""

    def __init__(self, out_dim: int, alpha: float, beta: float) -> None:
        super().__init__()
        if out_dim % 6:
            raise ValueError(f"PosE width {out_dim} must be divisible by 6")
        self.out_dim, self.alpha, self.beta = out_dim, alpha, beta

    def forward(self, knn_xyz: torch.Tensor, knn_x: torch.Tensor) -> torch.Tensor:
        """Normalised neighbour offsets ``(B, 3, G, K)`` and features ``(B, D, G, K)`` -> features plus their
        PosE, ``(B, D, G, K)``."""
        bsz, _, g, k = knn_xyz.shape
        d = self.out_dim // 6
        dim_embed = torch.pow(self.alpha, torch.arange(d, device=knn_xyz.device, dtype=knn_xyz.dtype) / d)
        angles = self.beta * knn_xyz.unsqueeze(-1) / dim_embed  # (B, 3, G, K, d)
        pe = torch.cat([angles.sin(), angles.cos()], -1).permute(0, 1, 4, 2, 3).reshape(bsz, self.out_dim, g, k)
        return knn_x + pe


class Linear2Layer(nn.Module):
    """Residual 1x1-conv bottleneck (official ``Linear2Layer``): ``relu(BN(conv(relu(BN(conv x)))) + x)``."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.net1 = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True))
        self.net2 = nn.Sequential(nn.Conv2d(hidden, channels, 1), nn.BatchNorm2d(channels))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, G, K)`` -> ``(B, C, G, K)``."""
        return self.act(self.net2(self.net1(x)) + x)


class LGA(nn.Module):
    """Local geometry aggregation of one stage (official ``LGA``, ``type='scan'``) followed by max pooling.

    Neighbour offsets are divided by their per-group, per-axis absolute maximum; each neighbour's feature is
    concatenated with its centre's (``2 C_in = D``), the PosE is added, then residual blocks and max over ``K``.
    """

    def __init__(self, out_dim: int, num_blocks: int, hidden: int, alpha: float, beta: float) -> None:
        super().__init__()
        self.geo_extract = PosEGeo(out_dim, alpha, beta)
        self.linear2 = nn.Sequential(*[Linear2Layer(out_dim, hidden) for _ in range(num_blocks)])

    def forward(
        self, lc_xyz: torch.Tensor, lc_x: torch.Tensor, knn_xyz: torch.Tensor, knn_x: torch.Tensor
    ) -> torch.Tensor:
        """Centres ``(B, G, 3)``, their features ``(B, G, C)``, neighbours ``(B, G, K, 3)`` and ``(B, G, K, C)``
        -> pooled features ``(B, 2C, G)``."""
        rel = knn_xyz - lc_xyz.unsqueeze(2)
        rel = rel / rel.abs().amax(dim=2, keepdim=True).clamp_min(1e-12)  # official: no clamp
        k = knn_x.shape[2]
        feats = torch.cat([knn_x, lc_x.unsqueeze(2).expand(-1, -1, k, -1)], dim=-1)  # (B, G, K, 2C)
        x = self.geo_extract(rel.permute(0, 3, 1, 2), feats.permute(0, 3, 1, 2))  # (B, 2C, G, K)
        return self.linear2(x).amax(dim=-1)


class PointPNTokenizer(nn.Module):
    """Point-PN-style tokenizer of Any2Point (official ``Point_PN_scan`` / ``EncP``, Sec. 3.1).

    A cloud ``(B, N, 3)`` is embedded point-wise (1x1 conv 3 -> ``d``, BN, ReLU); each of ``S`` stages halves the
    points by farthest point sampling, groups ``k`` nearest neighbours, doubles the width (LGA) and max-pools:
    ``N -> N/2 -> ... -> N / 2**S`` points, ``d -> 2d -> ... -> 2**S d`` channels. Official: 1024 points,
    ``S = 3``, ``d = 96``, ``k = 64``: centres ``(B, 128, 3)`` and tokens ``(B, 128, 768)``.

    Args:
        num_points: points the stages are sized for (centres per stage ``num_points // 2**(i+1)``).
        num_stages, embed_dim, k_neighbors, alpha, beta, lga_blocks: as in :class:`Any2PointConfig`.
        last_bottleneck: hidden width of the last stage's residual blocks (``lastdim``); earlier stages use
            half their width.
    """

    def __init__(
        self,
        num_points: int = 1024,
        num_stages: int = 3,
        embed_dim: int = 96,
        k_neighbors: int = 64,
        alpha: float = 1000.0,
        beta: float = 100.0,
        lga_blocks: Sequence[int] = (2, 1, 1),
        last_bottleneck: int = 32,
    ) -> None:
        super().__init__()
        self.num_points, self.k_neighbors = num_points, k_neighbors
        if k_neighbors > num_points // 2 ** (num_stages - 1):
            raise ValueError(
                f"k_neighbors={k_neighbors} exceeds the {num_points // 2 ** (num_stages - 1)} points of the last stage"
            )
        self.raw_point_embed = nn.Sequential(
            nn.Conv1d(3, embed_dim, 1, bias=False), nn.BatchNorm1d(embed_dim), nn.ReLU(inplace=True)
        )
        self.group_nums = [num_points // 2 ** (i + 1) for i in range(num_stages)]
        dims = [embed_dim * 2 ** (i + 1) for i in range(num_stages)]
        self.lga = nn.ModuleList(
            [
                LGA(d, n, last_bottleneck if i == num_stages - 1 else d // 2, alpha, beta)
                for i, (d, n) in enumerate(zip(dims, lga_blocks))
            ]
        )
        self.out_channels = dims[-1]

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cloud ``(B, N, 3)`` (``N >= num_points // 2``) -> centres ``(B, G, 3)``, tokens ``(B, G, D)``."""
        if points.shape[1] < self.group_nums[0] or points.shape[1] < self.k_neighbors:
            raise ValueError(
                f"Any2Point's tokenizer needs at least {max(self.group_nums[0], self.k_neighbors)} points, "
                f"got {points.shape[1]}"
            )
        xyz = points
        x = self.raw_point_embed(points.transpose(1, 2)).transpose(1, 2)  # (B, N, d)
        for g, lga in zip(self.group_nums, self.lga):
            idx = farthest_point_sample(xyz, g)
            lc_xyz, lc_x = gather_points(xyz, idx), gather_points(x, idx)
            knn = knn_indices(xyz, lc_xyz, self.k_neighbors)
            x = lga(lc_xyz, lc_x, gather_points(xyz, knn), gather_points(x, knn)).transpose(1, 2)  # (B, g, 2C)
            xyz = lc_xyz
        return xyz, x




# ---- any-to-3D guided adapter (official models/layers/attention.py Block, peft_module/adapter.py) -----------


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)`` (official adapter activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise; any shape."""
        return x * torch.sigmoid(1.702 * x)


class Bottleneck(nn.Module):
    """FFN-output bottleneck (official ``AdapterSuper_noout``): ``Linear(C, r) -> QuickGELU -> Dropout ->
    Linear(r, C)`` on ``(..., C)``; xavier-uniform weights, biases ``N(0, 1e-6)``."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.ln1 = nn.Linear(dim, hidden)
        self.activate = QuickGELU()
        self.dropout = nn.Dropout(dropout)
        self.ln2 = nn.Linear(hidden, dim)
        for lin in (self.ln1, self.ln2):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.normal_(lin.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., C)`` -> ``(..., C)``; the caller adds it to its input (``f + s * bottleneck(f)``)."""
        return self.ln2(self.dropout(self.activate(self.ln1(x))))


class LocalViewAttention(nn.Module):
    """Narrow self-attention among the tokens that share a 2D cell of one view (official ``Attention1``).

    ``(B, G, C)`` -> ``(B, G, C)``: qkv to ``mid_dim`` (12) split over ``heads`` (6), scale ``mid_dim ** -0.5``
    (official), logits of pairs in different cells get ``-1e5``, then a projection back to ``C``.
    """

    def __init__(self, dim: int, mid_dim: int = 12, heads: int = 6, qkv_bias: bool = True) -> None:
        super().__init__()
        if mid_dim % heads:
            raise ValueError(f"attention width {mid_dim} must be divisible by {heads} heads")
        self.heads, self.mid_dim, self.scale = heads, mid_dim, mid_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * mid_dim, bias=qkv_bias)
        self.proj = nn.Linear(mid_dim, dim)

    def forward(self, x: torch.Tensor, same_cell: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, G, C)``, ``same_cell`` ``(B, G, G)`` bool -> ``(B, G, C)``."""
        bsz, g, _ = x.shape
        q, k, v = self.qkv(x).reshape(bsz, g, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        logits = (q @ k.transpose(-2, -1)) * self.scale
        logits = logits + (~same_cell).unsqueeze(1).to(logits.dtype) * -1e5
        out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(bsz, g, self.mid_dim)
        return self.proj(out)


def segment_pool(x: torch.Tensor, index: torch.Tensor, num: int, mode: str = "mean") -> torch.Tensor:
    """Pool rows ``x`` ``(M, C)`` into ``num`` segments by ``index`` ``(M,)``: ``"mean"``, ``"max"`` or
    ``"maxmean"`` (their sum). Every segment in ``0..num-1`` must be non-empty."""
    idx = index.unsqueeze(-1).expand_as(x)
    out = x.new_zeros(num, x.shape[-1])
    if mode in ("mean", "maxmean"):
        counts = torch.bincount(index, minlength=num).clamp_min(1).to(x.dtype).unsqueeze(-1)
        out = out + x.new_zeros(num, x.shape[-1]).index_add(0, index, x) / counts
    if mode in ("max", "maxmean"):
        out = out + x.new_zeros(num, x.shape[-1]).scatter_reduce(0, idx, x, "amax", include_self=False)
    return out


def view_weights(views: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Any2Point's view weights: ``(cos(view_v, ref) + 1) / 2``, normalised over views.

    ``views`` ``(B, V, G, C)``, ``ref`` (the 3D branch) ``(B, G, C)`` -> ``(B, V, G)``, summing to 1 over ``V``.
    """
    sim = (F.cosine_similarity(views, ref.unsqueeze(1), dim=-1) + 1) / 2
    return sim / sim.sum(dim=1, keepdim=True).clamp_min(1e-12)


class GuidedGeometry:
    """Per-forward grouping shared by every block's guided adapter (computed once from the centres).

    Args:
        centres: token centres ``(B, G, 3)``.
        cell_ids: per-view cell of each token ``(B, V, G)`` in ``0 .. cells_per_sample - 1`` (2D cells of the
            virtual image or 1D cells of the position sequence: the PE's ``cell_index``).
        cells_per_sample: number of cells of one view of one cloud.
        grid_3d: voxel side in cloud units.

    Attributes:
        voxel: ``(B*G,)`` occupied-voxel id of each point token (cubes of side ``grid_3d`` from each
            cloud's min corner).
        num_voxels: number of occupied voxels.
        cells: ``V`` tensors ``(B*G,)``: occupied-cell id of each token in each view.
        num_cells: occupied cells per view.
        same_cell: ``V`` masks ``(B, G, G)``: both tokens fall in the same cell of that view.
    """

    def __init__(self, centres: torch.Tensor, cell_ids: torch.Tensor, cells_per_sample: int, grid_3d: float) -> None:
        bsz, g, _ = centres.shape
        batch = torch.arange(bsz, device=centres.device).repeat_interleave(g)
        vox = ((centres - centres.amin(dim=1, keepdim=True)) / grid_3d).floor().long().reshape(-1, 3)
        _, self.voxel = torch.unique(torch.cat([batch[:, None], vox], 1), dim=0, return_inverse=True)
        self.num_voxels = int(self.voxel.max()) + 1
        self.cells: list[torch.Tensor] = []
        self.num_cells: list[int] = []
        self.same_cell: list[torch.Tensor] = []
        for v in range(cell_ids.shape[1]):
            flat = cell_ids[:, v]  # (B, G)
            self.same_cell.append(flat.unsqueeze(1) == flat.unsqueeze(2))
            _, inv = torch.unique(flat.reshape(-1) + batch * cells_per_sample, return_inverse=True)
            self.cells.append(inv)
            self.num_cells.append(int(inv.max()) + 1)


class GuidedAdapter(nn.Module):
    """Any-to-3D guided adapter of one block (Any2Point Sec. 3.3; official ``Block.forward`` after the FFN).

    On the point tokens ``x`` ``(B, G, C)`` (the class token passes through):

    * 3D branch: max + mean of the tokens in each voxel, BN + GELU, broadcast back: ``x3d`` ``(B, G, C)``;
    * per view ``v``: ``y = x + attn_v(norm_v(x))`` (local attention within the cells of that view: 2D cells of
      the virtual image, or 1D cells of the position sequence for a text transformer; shared across blocks),
      mean (or max + mean) per cell, BN_v + GELU, broadcast back: ``x2d_v`` ``(B, G, C)``;
    * views weighted by their agreement with the 3D branch (:func:`view_weights`, sums to 1 over views):
      ``x + coef * sum_v w_v x2d_v``.

    The bottleneck on the FFN output (``x + f + s * bottleneck(f)``) lives here too as ``bottleneck``.
    """

    def __init__(self, dim: int, num_views: int, hidden: int, dropout: float = 0.1, maxmean_2d: bool = False) -> None:
        super().__init__()
        self.bottleneck = Bottleneck(dim, hidden, dropout)
        self.out_transform_3d = nn.Sequential(nn.BatchNorm1d(dim), nn.GELU())
        self.out_transform_2d = nn.ModuleList([nn.Sequential(nn.BatchNorm1d(dim), nn.GELU()) for _ in range(num_views)])
        self.maxmean_2d = maxmean_2d
        #: view weights ``(B, V, G)`` of the latest forward (for inspection)
        self.last_weights: torch.Tensor | None = None

    def forward(
        self,
        x: torch.Tensor,
        geo: GuidedGeometry,
        attn: nn.ModuleList,
        norms: nn.ModuleList,
        coef: float,
    ) -> torch.Tensor:
        """Tokens ``(B, P + G, C)`` (``P = 1`` class token) -> same shape."""
        cls, pts = x[:, :1], x[:, 1:]
        bsz, g, c = pts.shape
        flat = pts.reshape(-1, c)
        x3d = self.out_transform_3d(segment_pool(flat, geo.voxel, geo.num_voxels, "maxmean"))[geo.voxel]
        x3d = x3d.view(bsz, g, c)
        views = []
        for v, transform in enumerate(self.out_transform_2d):
            y = pts + attn[v](norms[v](pts), geo.same_cell[v])
            mode = "maxmean" if self.maxmean_2d else "mean"
            pooled = segment_pool(y.reshape(-1, c), geo.cells[v], geo.num_cells[v], mode)
            views.append(transform(pooled)[geo.cells[v]].view(bsz, g, c))
        stack = torch.stack(views, dim=1)  # (B, V, G, C)
        weights = view_weights(stack, x3d)
        self.last_weights = weights.detach()
        return torch.cat([cls, pts + coef * (stack * weights.unsqueeze(-1)).sum(1)], dim=1)


__all__ = [
    "Bottleneck", "GuidedAdapter", "GuidedGeometry", "LocalViewAttention", "QuickGELU", "segment_pool", "view_weights",
    "LGA", "SIX_VIEWS", "Linear2Layer", "PointPNTokenizer", "PosEGeo", "SequenceProjectionPE", "VirtualProjectionPE",
    "euler_to_matrix",
]
