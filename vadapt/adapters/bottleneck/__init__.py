from .config import BottleneckConfig
from .layer import Bottleneck, BottleneckAdapted
from .model import inject_bottleneck

__all__ = ["Bottleneck", "BottleneckAdapted", "BottleneckConfig", "inject_bottleneck"]
