"""Inference over images of any size and folders of them: tiling, blending, robust resumable batch jobs."""

from .engine import InferReport, infer
from .tiling import RowBlender, sliding_window, tile_grid

__all__ = ["InferReport", "RowBlender", "infer", "sliding_window", "tile_grid"]
