"""Instance-aware dynamic prompt tuning (IDPT) configuration."""

from __future__ import annotations

from dataclasses import dataclass

from vadapt.adapters.base import AdapterConfig


@dataclass
class IDPTConfig(AdapterConfig):
    """IDPT (Zha et al., "Instance-aware Dynamic Prompt Tuning for Pre-trained Point Cloud Models", ICCV 2023,
    arXiv:2304.07221): a DGCNN prompt module turns the patch tokens entering one block into ONE prompt token per
    cloud, inserted after the class token; the head then reads ``[cls, prompt, max over patches]``.

    Defaults follow the official code (``prompt_layer: 11``, ``prompt_module: dgcnn``, ``cls_type: all``, DGCNN
    ``k = 20``, LeakyReLU 0.2, every layer ``C`` wide, trainable set of ``optimizer.part: only_new``).

    Attributes:
        k: neighbours of each token in the EdgeConv graphs, recomputed in feature space at every layer (20).
            It must not exceed the number of patch tokens ``G`` (an error, not a clamp).
        prompt_block: index of the block whose input makes the prompt (``-1``, the last; the official
            ``prompt_layer = 11`` of 12). Only the last block is supported: the backbone adds one position tensor
            of the original length to every block input, so the sequence can only grow in front of the last one.
        edgeconv_dims: output widths of the EdgeConv layers; ``None`` = three layers of the token width ``C``
            (official). The fusing conv1d maps their concatenation back to ``C``.
        negative_slope: LeakyReLU slope of every EdgeConv and of the fusing layer (official 0.2).
        train_cls_tokens: also train the backbone's ``cls_token`` and ``cls_pos`` (the official ``only_new``
            optimiser trains every parameter whose name holds "cls"; a Point-MAE pretrain file has neither, so
            they start at their random initialisation). Costs a backward pass through every block; ``False``
            trains the prompt module only and back-propagates through the last block alone.
        train_prompt_pos: learn the prompt token's position embedding. The official ``prompt_pos`` is initialised
            (truncated normal, std 0.02) but left out of the optimiser, so by default it is a fixed buffer.
        prompt_pos_seed: seed of that initialisation, so a rebuilt model gets the same fixed buffer (adapter
            checkpoints hold trainable weights only).
    """

    k: int = 20
    prompt_block: int = -1
    edgeconv_dims: list[int] | None = None
    negative_slope: float = 0.2
    train_cls_tokens: bool = True
    train_prompt_pos: bool = False
    prompt_pos_seed: int = 0

    method = "idpt"

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"IDPTConfig.k must be an integer >= 1, got {self.k!r}")
        if isinstance(self.prompt_block, bool) or not isinstance(self.prompt_block, int):
            raise ValueError(f"IDPTConfig.prompt_block must be a block index (int), got {self.prompt_block!r}")
        if self.edgeconv_dims is not None:
            dims = list(self.edgeconv_dims)
            if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
                raise ValueError(
                    f"IDPTConfig.edgeconv_dims must be a non-empty list of integers >= 1 (or None), "
                    f"got {self.edgeconv_dims!r}"
                )
            self.edgeconv_dims = dims
        if not self.negative_slope >= 0.0:
            raise ValueError(f"IDPTConfig.negative_slope must be >= 0, got {self.negative_slope!r}")
        if self.target_modules is not None or self.exclude_modules is not None:
            raise ValueError("IDPTConfig prompts one whole block: choose it with `prompt_block`, not target_modules")
