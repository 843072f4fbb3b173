"""Adapter methods, one package each (config dataclass, layers, injection), registered by name.

``apply_adapter(backbone, config)`` injects a method in place into a frozen backbone; only the new
parameters train. ``merge_adapter(backbone, config)`` folds a mergeable method (LoRA / DoRA) back into plain
weights. Paper adapters (Cloud-Adapter, Earth-Adapter, IDPT, Point-PEFT, ...) add their own package and registry row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import ADAPTERS, AdapterConfig, AdapterMethod, as_adapter_config, enable_adapter_configs, find_targets
from .bottleneck import BottleneckConfig  # each method's package registers itself in ADAPTERS
from .cloud_adapter import CloudAdapterConfig
from .dv_lora import DVLoraConfig
from .earth_adapter import EarthAdapterConfig
from .i2v_adapter import I2VAdapterConfig
from .idpt import IDPTConfig
from .lora import LoraConfig
from .mv_adapter import MVAdapterConfig
from .point_peft import PointPEFTConfig
from .qv_dora import QVDoraConfig
from .resadapter import ResAdapterConfig
from .salt import SaltConfig
from .vpt import VPTConfig

if TYPE_CHECKING:
    from vadapt.contracts import Backbone


def _method(config: AdapterConfig) -> AdapterMethod:
    method = ADAPTERS.get(config.method)
    if not isinstance(config, method.config_class):
        raise TypeError(f"{type(config).__name__} is not a {method.config_class.__name__}")
    return method


def apply_adapter(backbone: Backbone, config: AdapterConfig | None) -> Backbone:
    """Inject ``config``'s method into the (frozen) ``backbone`` in place; ``None`` leaves it untouched. The new
    modules take the backbone's train / eval mode (an eval-mode backbone stays deterministic: no adapter dropout)."""
    if config is not None:
        _method(config).inject(backbone, config)
        backbone.train(backbone.training)
    return backbone


def can_merge(config: AdapterConfig | None) -> bool:
    """Whether :func:`merge_adapter` can fold ``config``'s method into plain weights (``True`` for ``None``: nothing to
    fold)."""
    return config is None or _method(config).merge is not None


def merge_adapter(backbone: Backbone, config: AdapterConfig | None) -> Backbone:
    """Fold the adapter into the backbone's weights (LoRA / DoRA); error for methods that cannot merge."""
    if config is None:
        return backbone
    method = _method(config)
    if method.merge is None:
        raise ValueError(f"The {config.method!r} adapter adds computation that cannot be folded into weights")
    method.merge(backbone)
    return backbone


__all__ = [
    "ADAPTERS", "AdapterConfig", "AdapterMethod", "BottleneckConfig", "CloudAdapterConfig", "EarthAdapterConfig",
    "I2VAdapterConfig", "IDPTConfig", "LoraConfig", "MVAdapterConfig", "PointPEFTConfig", "QVDoraConfig",
    "ResAdapterConfig", "SaltConfig", "VPTConfig", "DVLoraConfig",
    "apply_adapter", "as_adapter_config", "can_merge", "enable_adapter_configs", "find_targets", "merge_adapter",
]
