"""LoRA and DoRA on a 2-D convolution, in PEFT's layout: the weights and their float64
oracles."""

from lora_kernels.conv.dora_reference import conv_dora_reference_forward, conv_dora_reference_grads
from lora_kernels.conv.dora_weights import ConvDoRAWeights
from lora_kernels.conv.reference import conv_reference_forward, conv_reference_grads
from lora_kernels.conv.weights import ConvLoRAWeights

__all__ = [
    "ConvDoRAWeights",
    "ConvLoRAWeights",
    "conv_dora_reference_forward",
    "conv_dora_reference_grads",
    "conv_reference_forward",
    "conv_reference_grads",
]
