"""Inference over images of any size and folders of them: tiling, blending, robust resumable batch jobs."""

from vadapt.tiling import RowBlender, sliding_window, tile_grid

from .engine import InferReport, infer

__all__ = ["InferReport", "RowBlender", "infer", "sliding_window", "tile_grid"]
