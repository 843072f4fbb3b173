from vadapt.adapters.base import ADAPTERS, AdapterMethod

from .config import VPTConfig
from .layer import PromptedBlock
from .model import inject_vpt

ADAPTERS.register("vpt", AdapterMethod(VPTConfig, inject_vpt))

__all__ = ["PromptedBlock", "VPTConfig", "inject_vpt"]
