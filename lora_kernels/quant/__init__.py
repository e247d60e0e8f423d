"""LoRA on a quantized base (QLoRA): the base held in NF4, FP4, int8 or fp8 (formats), the
layer's tensors (weights), its implementations in the one registry, variant "qlora" (impls,
peers, triton_nf4), the layer (layer), a model's linear layers quantized for PEFT (model), and
merging into the quantized weight with the error that brings (merge). Only the first two are
imported here: the registry itself needs them."""

import logging

from lora_kernels.quant.formats import FORMATS, QuantizedBase, format_unavailable
from lora_kernels.quant.weights import QLoRAWeights

__all__ = ["FORMATS", "QLoRAWeights", "QuantizedBase", "format_unavailable"]


def _optional_hub_kernel(record: logging.LogRecord) -> bool:
    """False for bitsandbytes' warning, at each import, that its optional CPU kernel from the
    Hub did not load (it then uses its own): every other record of that logger passes."""
    return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward from kernels")


# before bitsandbytes is imported: its logger is this one, filter and all
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_optional_hub_kernel)
