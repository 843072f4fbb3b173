"""Composite backbones: models built from a registered backbone *and* an adapter package, one layer above both.

Importing this package registers their entries in the backbone registry (``vadapt.tasks`` imports it, so every
task can name them); today: Any2Point (``any2point_*``).
"""

from . import any2point  # noqa: F401  (registers its entries)
from .any2point import create_any2point

__all__ = ["create_any2point"]
