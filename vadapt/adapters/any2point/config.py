"""Any2Point configuration (Tang et al., "Any2Point: Empowering Any-modality Large Models for Efficient 3D
Understanding", ECCV 2024, arXiv:2404.07989)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Any2PointConfig:
    """Hyper-parameters of the Any2Point 3D model around a frozen 2D ViT.

    Defaults are the official DINOv2 / ScanObjectNN run (``Any2Point_DINOV2_Vision``: ``cfgs/scanobjectnn/
    Any2Point.yaml`` and ``fine_tune.sh``: ``--trans=-1.8 --patchknn 64 --lastdim 32``). The official CLIP
    text-transformer run (``Any2Point_CLIP_Lang``) differs in ``k_neighbors`` 81, ``adapter_dim`` 16,
    ``coef_pro`` 0.3, ``grid_3d`` 0.08 and uses the 1D fields ``cell_1d`` 2 and ``direction`` (-1, 0, 1)
    (registry entry ``any2point_clip_text_l14``).

    Attributes:
        num_points: points the tokenizer expects (official ``input_points`` 1024); stage ``i`` samples
            ``num_points // 2**(i+1)`` centres, so the ViT sees ``num_points // 2**num_stages`` tokens (128).
        num_stages: Point-PN stages (3).
        tokenizer_dim: width of the raw-point embedding (96); stage ``i`` is ``tokenizer_dim * 2**(i+1)`` wide
            (192, 384, 768), then a Linear maps to the ViT width if they differ (Identity for ViT-B).
        k_neighbors: neighbours per centre in every stage (``patchknn`` 64).
        alpha, beta: the Point-PN trigonometric position encoding ``sin/cos(beta * xyz / alpha**(j/d))``.
        lga_blocks: residual ``Linear2Layer`` blocks per stage (``LGA_block`` [2, 1, 1]).
        last_bottleneck: hidden width of the last stage's residual blocks (``lastdim`` 32; the earlier stages
            use half their width).
        num_views: virtual cameras of the 3D->2D projection (6).
        trans: camera offset along z (``--trans=-1.8``): a view sees ``R p - (0, 0, trans)``.
        train_cls_token: the class token and its position train (official: they are new parameters).
        train_norm: the final norm trains (official: ``encoder.norm`` is in its trainable list); it is a copy of
            the base model's final norm, so the base itself stays bit-identical.
        adapter_dim: hidden width of the bottleneck on every block's FFN output (official ``adapter_dim`` 8);
            0 builds no guided adapter (tokenizer-only model).
        adapter_dropout: dropout inside that bottleneck (``adapter_drop_path_rate`` 0.1).
        scale_factor: ``x + f + scale_factor * bottleneck(f)`` (``--scale_factor 0.3``).
        coef_pro: weight of the view-fused 2D branch added to the tokens (``--coef_pro 0.7``).
        grid_3d: voxel side of the 3D branch in cloud units (``--coef_3dgird 0.16``).
        cell_2d: 2D cell side in pixels of the virtual image (``--coef_2dgird 26``).
        image_size: side of the virtual image in pixels; ``None`` = ViT patch size x grid (518 for DINOv2-B/14).
        cell_1d: 1D cell length in position rows for a text transformer (``--coef_1dgird 2``: 39 cells of 77).
        direction: the line the 1D projection reads positions along, in view coordinates (``--pos_cor -1 0 1``).
        attn2d_dim, attn2d_heads: width and heads of the per-view local attention (``--attn2d_dim 12``, 6).
        qkv_bias: bias of that attention's qkv (the config's ``qkv_bias: True``).
        maxmean_2d: pool 2D cells by max + mean instead of mean (``--maxmean_2d``, off).
    """

    num_points: int = 1024
    num_stages: int = 3
    tokenizer_dim: int = 96
    k_neighbors: int = 64
    alpha: float = 1000.0
    beta: float = 100.0
    lga_blocks: list[int] = field(default_factory=lambda: [2, 1, 1])
    last_bottleneck: int = 32
    num_views: int = 6
    trans: float = -1.8
    train_cls_token: bool = True
    train_norm: bool = True
    adapter_dim: int = 8
    adapter_dropout: float = 0.1
    scale_factor: float = 0.3
    coef_pro: float = 0.7
    grid_3d: float = 0.16
    cell_2d: int = 26
    image_size: int | None = None
    cell_1d: float = 2.0
    direction: list[float] = field(default_factory=lambda: [-1.0, 0.0, 1.0])
    attn2d_dim: int = 12
    attn2d_heads: int = 6
    qkv_bias: bool = True
    maxmean_2d: bool = False

    def __post_init__(self) -> None:
        if self.num_stages < 1 or len(self.lga_blocks) != self.num_stages:
            raise ValueError(f"lga_blocks {self.lga_blocks} needs one entry per stage ({self.num_stages})")
        if self.num_points // 2**self.num_stages < 1:
            raise ValueError(f"{self.num_points} points cannot be halved {self.num_stages} times")
        if (2 * self.tokenizer_dim) % 6:
            raise ValueError("2 * tokenizer_dim must be divisible by 6 (sin/cos per xyz axis of the Point-PN PosE)")
        if self.trans >= 0:
            raise ValueError(f"trans must be negative (camera in front of the cloud), got {self.trans}")

    @property
    def num_tokens(self) -> int:
        """Point tokens the ViT sees (128 for 1024 points and 3 stages)."""
        return self.num_points // 2**self.num_stages

    @property
    def tokenizer_out_dim(self) -> int:
        """Width of the tokenizer's output tokens, ``tokenizer_dim * 2**num_stages`` (768), before the projection to the
        base width."""
        return self.tokenizer_dim * 2**self.num_stages
