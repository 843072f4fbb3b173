"""ResAdapter: resolution adapter for diffusion UNets (Cheng et al., 2024, arXiv:2403.02084)."""

from vadapt.adapters.base import ADAPTERS, AdapterMethod

from .config import ResAdapterConfig
from .model import (
    ADAPTER_NAME,
    LORA_FILE,
    NORM_FILE,
    disable_resadapter,
    enable_resadapter,
    get_resadapter_strength,
    inject_resadapter,
    is_resadapter_enabled,
    kohya_key,
    load_resadapter,
    load_resadapter_state_dict,
    resadapter_state_dict,
    save_resadapter,
    set_resadapter_strength,
)

ADAPTERS.register("resadapter", AdapterMethod(ResAdapterConfig, inject_resadapter))

__all__ = [
    "ADAPTER_NAME", "LORA_FILE", "NORM_FILE", "ResAdapterConfig", "disable_resadapter", "enable_resadapter",
    "get_resadapter_strength", "inject_resadapter", "is_resadapter_enabled", "kohya_key", "load_resadapter",
    "load_resadapter_state_dict", "resadapter_state_dict", "save_resadapter", "set_resadapter_strength",
]
