"""LoRA across a whole module: q, k and v of attention from one x, and a SwiGLU MLP, each a
family of implementations of its own (FUSED_IMPLS), checked against float64 oracles of the
module (module_reference)."""

from lora_kernels.fused import impls as _impls  # registers the module-level impls
from lora_kernels.fused.reference import module_reference
from lora_kernels.fused.registry import FUSED_IMPLS, FusedImpl, get_fused_impl
from lora_kernels.fused.weights import MLPWeights, ModuleWeights, QKVWeights

del _impls

__all__ = [
    "FUSED_IMPLS",
    "FusedImpl",
    "MLPWeights",
    "ModuleWeights",
    "QKVWeights",
    "get_fused_impl",
    "module_reference",
]
