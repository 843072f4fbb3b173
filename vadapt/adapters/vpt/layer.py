"""A block with its own prompt tokens (VPT-deep, Jia et al. 2022)."""

from __future__ import annotations

import math

import torch
from torch import nn

from vadapt.adapters.layers import AdapterLayer


class PromptedBlock(AdapterLayer):
    """Runs ``base_layer`` on ``[prompts; x]`` and drops the prompt outputs: ``(B, N, C) -> (B, N, C)``.

    Prompts go first in the sequence; for attention blocks after the position embedding this is equivalent to
    the paper's placement after the class token. Initialised uniformly with the paper's Xavier bound.
    """

    def __init__(self, base_layer: nn.Module, dim: int, num_tokens: int, dropout: float, patch_size: int) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.prompt = nn.Parameter(torch.empty(1, num_tokens, dim))
        bound = math.sqrt(6.0 / float(3 * patch_size * patch_size + dim))
        nn.init.uniform_(self.prompt, -bound, bound)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``x`` ``(B, N, C)`` -> ``(B, N, C)``: ``base_layer`` runs on ``(B, T + N, C)`` with the ``T`` prompts first,
        and their outputs are dropped."""
        n = self.prompt.shape[1]
        prompts = self.dropout(self.prompt).expand(x.shape[0], -1, -1).to(x.dtype)
        return self.base_layer(torch.cat([prompts, x], dim=1), *args, **kwargs)[:, n:]
