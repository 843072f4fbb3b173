from vadapt.adapters.base import ADAPTERS, AdapterMethod

from .config import EarthAdapterConfig
from .layer import EarthAdaptedBlock, EarthAdapter, Expert, low_pass_mask, split_frequencies
from .model import inject_earth_adapter

ADAPTERS.register("earth_adapter", AdapterMethod(EarthAdapterConfig, inject_earth_adapter))

__all__ = [
    "EarthAdaptedBlock", "EarthAdapter", "EarthAdapterConfig", "Expert", "inject_earth_adapter", "low_pass_mask",
    "split_frequencies",
]
