"""QV-DoRA (MapSAM, Xia et al., 2024, arXiv:2411.06971): DoRA (Liu et al., 2024, arXiv:2402.09353) on the query
and value row blocks of fused ``qkv`` Linears, the key rows frozen; mergeable. See :mod:`.layer` for shapes and
the deviations from the official code.
"""

from vadapt.adapters.base import ADAPTERS, AdapterMethod

from .config import QVDoraConfig
from .layer import QVDoraLinear, QVDoraParameters, qv_dora_parameter_count
from .model import inject_qv_dora, merge_qv_dora

ADAPTERS.register("qv_dora", AdapterMethod(QVDoraConfig, inject_qv_dora, merge_qv_dora))

__all__ = [
    "QVDoraConfig", "QVDoraLinear", "QVDoraParameters", "inject_qv_dora", "merge_qv_dora", "qv_dora_parameter_count",
]
