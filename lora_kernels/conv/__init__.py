"""LoRA on a 2-D convolution, in PEFT's layout: the weights and their float64 oracle."""

from lora_kernels.conv.reference import conv_reference_forward, conv_reference_grads
from lora_kernels.conv.weights import ConvLoRAWeights

__all__ = ["ConvLoRAWeights", "conv_reference_forward", "conv_reference_grads"]
