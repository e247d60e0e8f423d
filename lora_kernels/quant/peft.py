"""PEFT's QLoRA layers (LoRA on bitsandbytes' Linear4bit or Linear8bitLt) as QLoRALinear: the
same codes, scales, A and B (the tensors themselves), for `from_peft`."""

from __future__ import annotations

from typing import Any

from lora_kernels.quant.formats import QuantizedBase
from lora_kernels.quant.layer import QLoRALinear


def is_peft_qlora(layer: Any) -> bool:
    """Whether the PEFT LoRA layer adapts a bitsandbytes 4-bit or 8-bit layer."""
    return type(layer).__module__ == "peft.tuners.lora.bnb" and type(layer).__name__ in (
        "Linear4bit", "Linear8bitLt",
    )  # fmt: skip


def compute_dtype(layer: Any) -> Any:
    """The dtype the QLoRA layer computes in: the adapter's."""
    return layer.lora_A[layer.active_adapters[0]].weight.dtype


def qlora_refusal(name: str, layer: Any, adapter: str, model_dtype: Any = None) -> str | None:
    """Why this PEFT QLoRA layer cannot become a QLoRALinear, or None. `model_dtype`: the
    dtype the model's other weights have, which its activations reach the layer in."""
    if layer.disable_adapters:
        return f"{name} has its adapters disabled; enable them first"
    if adapter in getattr(layer, "lora_variant", {}):
        return f"{name} uses a LoRA variant on a quantized base; only plain LoRA converts"
    if layer.merged_adapters:
        return (f"{name} has adapters merged into its quantized weight "
                f"{layer.merged_adapters}; unmerge them first")  # fmt: skip
    if getattr(layer, "lora_bias", {}).get(adapter):
        return f"{name} has lora_bias=True (a bias on B); QLoRALinear has none"
    A, B = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    if B.dtype != A.dtype:
        return f"{name}: lora_A is {A.dtype} but lora_B is {B.dtype}"
    computes = getattr(layer.get_base_layer(), "compute_dtype", None) or model_dtype
    if computes is not None and computes != A.dtype:
        return (f"{name}: the adapter is {A.dtype} but the model computes in {computes} (PEFT "
                "keeps adapters in float32 on a half-precision model and casts x up for them); "
                "QLoRALinear computes in one dtype: load PEFT with autocast_adapter_dtype=False "
                "or quantize the model in the adapter's dtype")  # fmt: skip
    bias = layer.get_base_layer().bias
    if bias is not None and bias.dtype != A.dtype:
        return (f"{name}: the adapter is {A.dtype} but the bias is {bias.dtype}; "
                "QLoRALinear computes in the adapter's dtype")  # fmt: skip
    dropout = layer.lora_dropout[adapter]
    if getattr(dropout, "p", 0.0):
        return f"{name} has lora_dropout={dropout.p}; QLoRALinear has no dropout"
    return None


def convert_qlora(layer: Any, adapter: str, impl: str | None) -> QLoRALinear:
    """A QLoRALinear on the PEFT layer's own tensors."""
    A, B = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    base = layer.get_base_layer()
    quant = QuantizedBase.from_bnb(base, A.dtype)
    new = QLoRALinear(quant, A, B, float(layer.scaling[adapter]), base.bias,
                      impl=impl or "qlora_lean")  # fmt: skip
    return new.train(layer.training)
