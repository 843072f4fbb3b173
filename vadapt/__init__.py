"""vadapt: adapt frozen vision foundation models with a tiny number of trainable parameters.

Heavy libraries (torch, timm, peft, lightning) are imported lazily by the submodules that need them, so
``import vadapt`` and ``vadapt --help`` stay fast.
"""

from vadapt.version import __version__

__all__ = ["__version__"]


def __getattr__(name: str):
    if name == "infer":  # vadapt.infer(...), imported on first use
        from vadapt.inference import infer

        return infer
    raise AttributeError(f"module 'vadapt' has no attribute {name!r}")
