"""Importing this package registers every implementation, in the order of the tables."""

from lora_kernels.impls import compiled, eager, merged

__all__ = ["compiled", "eager", "merged"]
