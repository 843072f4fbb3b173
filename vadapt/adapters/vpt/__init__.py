from .config import VPTConfig
from .layer import PromptedBlock
from .model import inject_vpt

__all__ = ["PromptedBlock", "VPTConfig", "inject_vpt"]
