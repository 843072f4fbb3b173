"""vadapt: adapt frozen vision foundation models with a tiny number of trainable parameters.

Heavy libraries (torch, timm, peft, lightning) are imported lazily by the submodules that need them, so
``import vadapt`` and ``vadapt --help`` stay fast.
"""

__version__ = "0.1.0"
