"""EndoDAC (Cui et al., 2024, arXiv:2405.08672): Dynamic Vector-Based LoRA (DV-LoRA) on the MLP Linears (or 1x1
convolutions) with a warm-up / vector-phase schedule, plus Convolutional Neck blocks after chosen blocks. Not
registered as mergeable: the necks are extra computation (``merge_dv_lora`` folds the DV-LoRA part only). See
:mod:`.layer` for shapes, the phases and the deviations from the official code.
"""

from vadapt.adapters.base import ADAPTERS, AdapterMethod

from .config import DVLoraConfig
from .layer import (
    ConvNeck,
    DVLoraConv2d,
    DVLoraLinear,
    NeckedBlock,
    conv_neck_parameter_count,
    dv_lora_parameter_count,
)
from .model import dv_lora_vector_phase, inject_dv_lora, merge_dv_lora, set_dv_lora_phase

ADAPTERS.register("dv_lora", AdapterMethod(DVLoraConfig, inject_dv_lora))

__all__ = [
    "ConvNeck", "DVLoraConfig", "DVLoraConv2d", "DVLoraLinear", "NeckedBlock", "conv_neck_parameter_count",
    "dv_lora_parameter_count", "dv_lora_vector_phase", "inject_dv_lora", "merge_dv_lora", "set_dv_lora_phase",
]
