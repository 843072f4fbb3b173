"""vadapt's Gradio front end: interactive demos of trained adapter checkpoints (``vadapt demo``).

The logic lives in small modules that need no browser and no Gradio (:mod:`.images`, :mod:`.checkpoints`,
:mod:`.predict`, :mod:`.render`, :mod:`.export`, :mod:`.prompts`, :mod:`.demo_files`); :mod:`.ui` is the
Gradio layout and is the only module that imports ``gradio``. Nothing in ``vadapt`` or ``vadapt.tasks``
imports this package.
"""

from __future__ import annotations

from .limits import AppError, Limits

__all__ = ["AppError", "Limits"]
