from vadapt.adapters.base import ADAPTERS, AdapterMethod

from .config import LoraConfig
from .model import inject_lora, merge_lora

ADAPTERS.register("lora", AdapterMethod(LoraConfig, inject_lora, merge_lora))

__all__ = ["LoraConfig", "inject_lora", "merge_lora"]
