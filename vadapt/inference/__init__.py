"""Inference over images of any size and folders of them: tiling, blending, robust resumable batch jobs.

:class:`InferOptions` (the settings of a run; no torch) is imported at once; the rest (torch) on first use,
so that the command line can build ``vadapt infer``'s flags from :class:`InferOptions` and stay quick.
"""

from .options import InferOptions

__all__ = ["InferOptions", "InferReport", "RowBlender", "infer", "sliding_window", "tile_grid"]


def __getattr__(name: str):
    if name in ("InferReport", "infer"):
        from . import engine

        value = getattr(engine, name)
    elif name in ("RowBlender", "sliding_window", "tile_grid"):
        from vadapt import tiling

        value = getattr(tiling, name)
    else:
        raise AttributeError(f"module 'vadapt.inference' has no attribute {name!r}")
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
