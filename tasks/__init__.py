"""Lightning tasks: a frozen backbone, an adapter and a head on one :class:`BaseTask`."""

from .base import BaseTask
from .segmentation import SemanticSegmentationTask

TASKS = ["vadapt.tasks.SemanticSegmentationTask"]

__all__ = ["TASKS", "BaseTask", "SemanticSegmentationTask"]
