from .config import LoraConfig
from .model import inject_lora, merge_lora

__all__ = ["LoraConfig", "inject_lora", "merge_lora"]
