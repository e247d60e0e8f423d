"""DoRA: a LoRA layer whose output rows are rescaled by a trained magnitude m over the row norm
of W + s·B A. Its implementations sit in the one registry, IMPLS, with variant "dora"."""

from lora_kernels.dora.reference import dora_reference_forward, dora_reference_grads
from lora_kernels.dora.weights import DoRAWeights

__all__ = ["DoRAWeights", "dora_reference_forward", "dora_reference_grads"]
