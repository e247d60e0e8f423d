"""Importing this package registers every implementation, in the order of the tables."""

# isort: off
from lora_kernels.impls import eager, stacked, autograd, merged, compiled, cuda_graph, triton_fused
# isort: on

__all__ = ["autograd", "compiled", "cuda_graph", "eager", "merged", "stacked", "triton_fused"]
