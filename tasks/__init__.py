"""Lightning tasks: a frozen backbone, an adapter and a head on one :class:`BaseTask`."""

from .base import BaseTask
from .change_detection import ChangeDetectionTask
from .depth import SelfSupervisedDepthTask
from .generation import DiffusionAdapterTask
from .part_segmentation import PartIoU, PartSegmentationTask
from .point_classification import PointClassificationTask
from .point_pretrain import PointMAEPretrainTask
from .promptable import EmbeddingCache, PromptableSegmentationTask
from .promptable_config import DecoderConfig, LossConfig, PromptingConfig
from .segmentation import SemanticSegmentationTask

TASKS = ["vadapt.tasks.SemanticSegmentationTask", "vadapt.tasks.ChangeDetectionTask",
         "vadapt.tasks.PromptableSegmentationTask", "vadapt.tasks.PointClassificationTask",
         "vadapt.tasks.PointMAEPretrainTask", "vadapt.tasks.PartSegmentationTask", "vadapt.tasks.DiffusionAdapterTask",
         "vadapt.tasks.SelfSupervisedDepthTask"]

__all__ = ["TASKS", "BaseTask", "ChangeDetectionTask", "DecoderConfig", "DiffusionAdapterTask", "EmbeddingCache",
           "LossConfig", "PartIoU", "PartSegmentationTask", "PointClassificationTask", "PointMAEPretrainTask",
           "PromptableSegmentationTask", "PromptingConfig", "SelfSupervisedDepthTask",
           "SemanticSegmentationTask"]
