"""Importing this package registers every implementation, ours then the peers, in the order
of the tables."""

# isort: off
from lora_kernels.impls import eager, stacked, autograd, merged, compiled, cuda_graph, triton_fused
from lora_kernels.impls import peers
# isort: on

__all__ = [
    "autograd",
    "compiled",
    "cuda_graph",
    "eager",
    "merged",
    "peers",
    "stacked",
    "triton_fused",
]
