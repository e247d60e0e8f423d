"""Multi-adapter batches: one frozen linear layer serving many LoRA adapters, each token
picking its adapter by a per-token index."""

# isort: off
from lora_kernels.multi import eager as _eager  # registers the eager impls
from lora_kernels.multi import triton_sgmv as _triton_sgmv  # and the Triton kernel
from lora_kernels.multi import peft as _peft  # then PEFT, the peer

# isort: on
from lora_kernels.multi.index import DISTRIBUTIONS, random_index
from lora_kernels.multi.layer import MultiLoRALinear
from lora_kernels.multi.reference import multi_forward_error, multi_reference_forward
from lora_kernels.multi.registry import MULTI_IMPLS, MultiImpl, MultiOp, get_multi_impl
from lora_kernels.multi.weights import MultiLoRAWeights

del _eager, _triton_sgmv, _peft

__all__ = [
    "DISTRIBUTIONS",
    "MULTI_IMPLS",
    "MultiImpl",
    "MultiLoRALinear",
    "MultiLoRAWeights",
    "MultiOp",
    "get_multi_impl",
    "multi_forward_error",
    "multi_reference_forward",
    "random_index",
]
