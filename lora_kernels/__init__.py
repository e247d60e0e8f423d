"""lora_kernels: a LoRA linear layer and interchangeable forward implementations, LoRA's,
DoRA's and LoRA's on a quantized base (QLoRA); the same for many adapters served in one
batch, and for whole modules (q, k and v together; a SwiGLU MLP)."""

from lora_kernels import impls as _impls  # registers every implementation
from lora_kernels.adapters import (
    adapter_names,
    delete_adapter,
    hotswap_adapter,
    load_adapter,
    save_adapter,
    set_adapter,
)
from lora_kernels.conv import ConvLoRAWeights, conv_reference_forward, conv_reference_grads
from lora_kernels.conv.layer import LoRAConv2d, inject_conv
from lora_kernels.dora import DoRAWeights
from lora_kernels.fused import FUSED_IMPLS, FusedImpl, MLPWeights, QKVWeights, module_reference
from lora_kernels.fused.model import (
    FuseError,
    FuseReport,
    fuse_modules,
    fused_modules,
    unfuse_modules,
)
from lora_kernels.inject import from_peft, inject, lora_layers, merge, set_impl, unmerge
from lora_kernels.layer import LoRALinear
from lora_kernels.multi import (
    DISTRIBUTIONS,
    MULTI_IMPLS,
    MultiImpl,
    MultiLoRALinear,
    MultiLoRAWeights,
    get_multi_impl,
    multi_reference_forward,
    random_index,
)
from lora_kernels.multi.model import adapter_batch, multi_from_peft
from lora_kernels.params import ParamCount, count_parameters, linear_total, lora_trainable
from lora_kernels.planner import Plan, plan
from lora_kernels.plugins import ENTRY_POINT_GROUP, PluginError, get_impl, load_plugins
from lora_kernels.presets import PRESETS, Preset, get_preset
from lora_kernels.quant import QLoRAWeights, QuantizedBase
from lora_kernels.quant.layer import QLoRALinear
from lora_kernels.quant.model import quantize_linears
from lora_kernels.reference import (
    TOLERANCES,
    Grads,
    reference_forward,
    reference_grads,
    rel_error,
    tolerance,
)
from lora_kernels.registry import IMPLS, Impl, Op
from lora_kernels.weights import LoRAWeights

del _impls

__all__ = [
    "DISTRIBUTIONS",
    "ENTRY_POINT_GROUP",
    "FUSED_IMPLS",
    "IMPLS",
    "MULTI_IMPLS",
    "PRESETS",
    "TOLERANCES",
    "ConvLoRAWeights",
    "DoRAWeights",
    "FuseError",
    "FuseReport",
    "FusedImpl",
    "Grads",
    "Impl",
    "LoRAConv2d",
    "LoRALinear",
    "LoRAWeights",
    "MLPWeights",
    "MultiImpl",
    "MultiLoRALinear",
    "MultiLoRAWeights",
    "Op",
    "ParamCount",
    "Plan",
    "PluginError",
    "Preset",
    "QKVWeights",
    "QLoRALinear",
    "QLoRAWeights",
    "QuantizedBase",
    "adapter_batch",
    "adapter_names",
    "conv_reference_forward",
    "conv_reference_grads",
    "count_parameters",
    "delete_adapter",
    "from_peft",
    "fuse_modules",
    "fused_modules",
    "get_impl",
    "get_multi_impl",
    "get_preset",
    "hotswap_adapter",
    "inject",
    "inject_conv",
    "linear_total",
    "load_adapter",
    "load_plugins",
    "lora_layers",
    "lora_trainable",
    "merge",
    "module_reference",
    "multi_from_peft",
    "multi_reference_forward",
    "plan",
    "quantize_linears",
    "random_index",
    "reference_forward",
    "reference_grads",
    "rel_error",
    "save_adapter",
    "set_adapter",
    "set_impl",
    "tolerance",
    "unfuse_modules",
    "unmerge",
]
