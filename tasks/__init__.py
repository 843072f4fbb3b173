"""Lightning tasks: a frozen backbone, an adapter and a head on one :class:`BaseTask`."""

from .base import BaseTask
from .change_detection import ChangeDetectionTask
from .promptable import EmbeddingCache, PromptableSegmentationTask
from .segmentation import SemanticSegmentationTask

TASKS = ["vadapt.tasks.SemanticSegmentationTask", "vadapt.tasks.ChangeDetectionTask",
         "vadapt.tasks.PromptableSegmentationTask"]

__all__ = ["TASKS", "BaseTask", "ChangeDetectionTask", "EmbeddingCache", "PromptableSegmentationTask",
           "SemanticSegmentationTask"]
