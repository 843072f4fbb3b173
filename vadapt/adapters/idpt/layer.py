"""IDPT layers (Zha et al., "Instance-aware Dynamic Prompt Tuning for Pre-trained Point Cloud Models", ICCV 2023,
arXiv:2304.07221): the DGCNN prompt generation module and the block wrapper
that inserts its prompt token after the class token.

Shapes: ``B`` clouds, ``G`` patch tokens, ``C`` token width, ``P`` prefix (class) tokens, ``k`` graph neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vadapt.adapters.layers import AdapterLayer


@torch.no_grad()
def feature_knn(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``(B, N, k)`` of the ``k`` nearest columns (squared Euclidean distance) of ``x`` ``(B, D, N)``.

    The graph lives in feature space and is rebuilt from each layer's features (dynamic graph CNN); a point is
    its own nearest neighbour, as in DGCNN's ``knn``.
    """
    n = x.shape[-1]
    if k > n:
        raise ValueError(f"IDPT's EdgeConv needs k={k} neighbours but got only {n} tokens; lower IDPTConfig.k")
    sq = x.square().sum(dim=1)  # (B, N)
    dist = sq.unsqueeze(2) - 2.0 * torch.bmm(x.transpose(1, 2), x) + sq.unsqueeze(1)  # (B, N, N)
    return dist.topk(k, dim=-1, largest=False).indices


def edge_features(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """DGCNN edge features: ``x`` ``(B, D, N)``, neighbours ``(B, N, k)`` -> ``[x_j - x_i, x_i]`` ``(B, 2D, N, k)``."""
    b, d, n = x.shape
    k = idx.shape[-1]
    pts = x.transpose(1, 2)  # (B, N, D)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    neighbours = pts[batch, idx]  # (B, N, k, D)
    centre = pts.unsqueeze(2).expand(b, n, k, d)
    return torch.cat([neighbours - centre, centre], dim=-1).permute(0, 3, 1, 2)


class EdgeConv(nn.Module):
    """One EdgeConv layer: k-NN graph on the input features, shared 1x1 conv2d on ``[x_j - x_i, x_i]``,
    BatchNorm2d, LeakyReLU, max over the ``k`` neighbours: ``(B, D_in, N) -> (B, D_out, N)``.

    As the official ``DGCNNView``'s ``conv1``/``conv2``/``conv3`` (conv without bias, ``k = 20``, slope 0.2).
    """

    def __init__(self, in_dim: int, out_dim: int, k: int, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.k = k
        self.conv = nn.Conv2d(2 * in_dim, out_dim, kernel_size=1, bias=False)
        self.norm = nn.BatchNorm2d(out_dim)
        self.act = nn.LeakyReLU(negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, D_in, N)`` -> ``(B, D_out, N)``; ``ValueError`` when ``N < k``."""
        edges = edge_features(x, feature_knn(x, self.k))  # (B, 2 D_in, N, k)
        return self.act(self.norm(self.conv(edges))).amax(dim=-1)

    def extra_repr(self) -> str:
        """``k=<neighbours>`` for the module's ``repr``."""
        return f"k={self.k}"


class DGCNNPrompt(nn.Module):
    """IDPT's prompt module: patch tokens ``(B, G, C)`` -> one instance-aware prompt token ``(B, 1, C)``.

    EdgeConv layers (official: three, each ``C`` wide, ``k = 20``) run one after the other, each on a graph
    rebuilt from the previous layer's features; their outputs are concatenated ``(B, sum D_i, G)``, fused by a
    conv1d (no bias) + BatchNorm1d + LeakyReLU to ``(B, C, G)`` and max-pooled over the tokens (official
    ``DGCNNView``: ``conv5`` and ``adaptive_max_pool1d``). For ``C = 384``: 3 x (768*384 + 768) +
    (1152*384 + 768) = 1,330,176 parameters.
    """

    def __init__(self, dim: int, k: int = 20, edgeconv_dims: Sequence[int] | None = None,
                 negative_slope: float = 0.2) -> None:
        super().__init__()
        dims = list(edgeconv_dims) if edgeconv_dims is not None else [dim] * 3
        self.k = k
        ins = [dim, *dims[:-1]]
        self.edge_convs = nn.ModuleList([EdgeConv(i, o, k, negative_slope) for i, o in zip(ins, dims)])
        self.fuse = nn.Sequential()
        self.fuse.add_module("conv", nn.Conv1d(sum(dims), dim, kernel_size=1, bias=False))
        self.fuse.add_module("norm", nn.BatchNorm1d(dim))
        self.fuse.add_module("act", nn.LeakyReLU(negative_slope))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``(B, G, C)`` -> prompt ``(B, 1, C)``; ``G >= k`` or a ``ValueError``."""
        x = tokens.transpose(1, 2)  # (B, C, G)
        outs = []
        for conv in self.edge_convs:
            x = conv(x)
            outs.append(x)
        return self.fuse(torch.cat(outs, dim=1)).amax(dim=-1).unsqueeze(1)


class LastPositions:
    """A small callable returning ``backbone.last_pos`` (the ``(B, P + G, C)`` position embeddings the backbone
    added to the current block inputs): a plain (non-module) reference, so no module cycle; ``copy.deepcopy`` of
    the backbone copies it along and points it at the copy."""

    def __init__(self, backbone: nn.Module) -> None:
        self.backbone = backbone

    def __call__(self) -> torch.Tensor | None:
        """``backbone.last_pos`` ``(B, P + G, C)`` of the current forward, or ``None`` if the backbone has none."""
        return getattr(self.backbone, "last_pos", None)


class IDPTBlock(AdapterLayer):
    """Wraps the frozen block ``base_layer`` that IDPT prompts: ``(B, P + G, C) -> (B, P + 1 + G, C)``.

    The backbone calls the block on ``x + pos``. The prompt module reads the patch part of the residual stream
    ``x`` (official: ``x[:, -G:]`` before the position is added), recovered as input minus ``positions()``;
    its prompt ``(B, 1, C)`` plus the prompt position ``prompt_pos`` ``(1, 1, C)`` goes after the ``P`` prefix
    tokens, and the block runs on ``[x_cls + pos_cls, prompt + prompt_pos, x_patches + pos_patches]``, as the
    official ``TransformerPromptEncoderLayerI`` does at ``prompt_layer``.
    """

    def __init__(self, base_layer: nn.Module, prompt: DGCNNPrompt, dim: int, num_prefix_tokens: int,
                 positions: LastPositions, train_prompt_pos: bool = False, prompt_pos_seed: int = 0) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.prompt = prompt
        self.num_prefix_tokens = num_prefix_tokens
        self.positions = positions
        pos = torch.empty(1, 1, dim)
        nn.init.trunc_normal_(pos, std=0.02, generator=torch.Generator().manual_seed(prompt_pos_seed))
        if train_prompt_pos:
            self.prompt_pos = nn.Parameter(pos)
        else:
            self.register_buffer("prompt_pos", pos)

    def make_prompt(self, x: torch.Tensor) -> torch.Tensor:
        """Block input ``x + pos`` ``(B, P + G, C)`` -> prompt token with its position ``(B, 1, C)``."""
        p = self.num_prefix_tokens
        pos = self.positions()
        if pos is None or pos.shape[0] != x.shape[0] or pos.shape[1] != x.shape[1]:
            got = None if pos is None else tuple(pos.shape)
            raise ValueError(
                f"IDPT needs the (B, P + G, C) = {tuple(x.shape)} positions the backbone added to this block's "
                f"input (backbone.last_pos), got {got}; the backbone must set last_pos in its forward"
            )
        prompt = self.prompt(x[:, p:] - pos[:, p:].to(x.dtype))  # (B, 1, C)
        return (prompt + self.prompt_pos).to(x.dtype)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Block input ``x + pos`` ``(B, P + G, C)`` -> the block's output on the prompted sequence
        ``(B, P + 1 + G, C)``, prompt at index ``P``."""
        p = self.num_prefix_tokens
        x = torch.cat([x[:, :p], self.make_prompt(x), x[:, p:]], dim=1)
        return self.base_layer(x, *args, **kwargs)
