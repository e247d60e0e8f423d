"""Importing this package registers every implementation, ours (LoRA, DoRA, LoRA on a
quantized base, then LoRA and DoRA on a convolution) then the peers, in the order of the tables."""

# isort: off
from lora_kernels.impls import eager, stacked, autograd, merged, compiled, cuda_graph, triton_fused
from lora_kernels.dora import eager as dora_eager, autograd as dora_autograd
from lora_kernels.quant import impls as quant_impls, triton_nf4
from lora_kernels.conv import impls as conv_impls, autograd as conv_autograd, dora as conv_dora
from lora_kernels.impls import peers
from lora_kernels.quant import peers as quant_peers
from lora_kernels.conv import peers as conv_peers
# isort: on

__all__ = [
    "autograd",
    "compiled",
    "conv_autograd",
    "conv_dora",
    "conv_impls",
    "conv_peers",
    "cuda_graph",
    "dora_autograd",
    "dora_eager",
    "eager",
    "merged",
    "peers",
    "quant_impls",
    "quant_peers",
    "stacked",
    "triton_fused",
    "triton_nf4",
]
