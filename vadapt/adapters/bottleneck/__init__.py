from vadapt.adapters.base import ADAPTERS, AdapterMethod

from .config import BottleneckConfig
from .layer import Bottleneck, BottleneckAdapted
from .model import inject_bottleneck

ADAPTERS.register("bottleneck", AdapterMethod(BottleneckConfig, inject_bottleneck))

__all__ = ["Bottleneck", "BottleneckAdapted", "BottleneckConfig", "inject_bottleneck"]
