"""SALT (Elsayed et al., 2025): scale and shift the top singular values of frozen Linears, plus a LoRA on the
remaining singular directions; mergeable. See :mod:`.layer` for shapes, what is stored and the deviations.
"""

from vadapt.adapters.base import ADAPTERS, AdapterMethod

from .config import SaltConfig
from .layer import SaltLinear, SaltParameters, salt_parameter_count
from .model import inject_salt, merge_salt

ADAPTERS.register("salt", AdapterMethod(SaltConfig, inject_salt, merge_salt))

__all__ = ["SaltConfig", "SaltLinear", "SaltParameters", "inject_salt", "merge_salt", "salt_parameter_count"]
