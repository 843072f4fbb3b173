"""Cloud-Adapter (Zou et al.): a spatial perception ConvNet on the input image whose multi-scale context
modulates the frozen blocks through low-rank cross-attention. See :mod:`.layer` for shapes and deviations.
"""

from vadapt.adapters.base import ADAPTERS, AdapterMethod

from .config import CloudAdapterConfig
from .layer import CloudAdaptedBlock, ContextCrossAttention, ContextSlot, LowRankLinear, SpatialPerception
from .model import inject_cloud_adapter

ADAPTERS.register("cloud_adapter", AdapterMethod(CloudAdapterConfig, inject_cloud_adapter))

__all__ = [
    "CloudAdaptedBlock", "CloudAdapterConfig", "ContextCrossAttention", "ContextSlot", "LowRankLinear",
    "SpatialPerception", "inject_cloud_adapter",
]
