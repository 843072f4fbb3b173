"""vadapt's LightningCLI: what ``vadapt fit | validate | test | predict`` build from a YAML config.

Kept apart from :mod:`vadapt.cli` (which imports nothing heavy) because importing Lightning takes seconds.
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI


class VadaptCLI(LightningCLI):
    """LightningCLI with vadapt's defaults (see :func:`vadapt.cli.run_lightning` for the arguments)."""
