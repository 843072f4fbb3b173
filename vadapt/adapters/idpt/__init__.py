"""IDPT: instance-aware dynamic prompt tuning for point-cloud backbones (Zha et al., ICCV 2023)."""

from vadapt.adapters.base import ADAPTERS, AdapterMethod

from .config import IDPTConfig
from .layer import DGCNNPrompt, EdgeConv, IDPTBlock, LastPositions
from .model import inject_idpt

ADAPTERS.register("idpt", AdapterMethod(IDPTConfig, inject_idpt))

__all__ = ["DGCNNPrompt", "EdgeConv", "IDPTBlock", "IDPTConfig", "LastPositions", "inject_idpt"]
