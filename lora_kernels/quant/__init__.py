"""LoRA on a quantized base (QLoRA): the base held in NF4, FP4, int8 or fp8 (QuantizedBase),
the layer's tensors (QLoRAWeights), its implementations in the one registry (variant "qlora"),
and merging into the quantized weight with the error that brings."""

from lora_kernels.quant.formats import FORMATS, QuantizedBase, format_unavailable
from lora_kernels.quant.weights import QLoRAWeights

__all__ = ["FORMATS", "QLoRAWeights", "QuantizedBase", "format_unavailable"]
