"""lora_kernels: a LoRA linear layer and interchangeable forward implementations."""

from lora_kernels import impls as _impls  # registers every implementation
from lora_kernels.layer import LoRALinear
from lora_kernels.params import ParamCount, count_parameters, linear_total, lora_trainable
from lora_kernels.plugins import ENTRY_POINT_GROUP, PluginError, load_plugins
from lora_kernels.reference import (
    TOLERANCES,
    Grads,
    reference_forward,
    reference_grads,
    rel_error,
    tolerance,
)
from lora_kernels.registry import IMPLS, Impl, Op, get_impl
from lora_kernels.weights import LoRAWeights

del _impls

__all__ = [
    "ENTRY_POINT_GROUP",
    "IMPLS",
    "TOLERANCES",
    "Grads",
    "Impl",
    "LoRALinear",
    "LoRAWeights",
    "Op",
    "ParamCount",
    "PluginError",
    "count_parameters",
    "get_impl",
    "linear_total",
    "load_plugins",
    "lora_trainable",
    "reference_forward",
    "reference_grads",
    "rel_error",
    "tolerance",
]
