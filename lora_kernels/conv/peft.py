"""PEFT's lora.Conv2d layers as LoRAConv2d: which convert (and why the others do not), and the
conversion, on the same tensors."""

from __future__ import annotations

from typing import Any

from torch import nn

from lora_kernels.conv.layer import LoRAConv2d


def is_peft_conv(layer: Any) -> bool:
    """Whether the PEFT LoRA layer is a lora.Conv2d (LoRA on a 2-D convolution)."""
    from peft.tuners.lora import Conv2d

    return isinstance(layer, Conv2d)


def conv_refusal(name: str, layer: Any, adapter: str) -> str | None:
    """Why this PEFT lora.Conv2d cannot become a LoRAConv2d, or None. PEFT takes some
    convolutions on which its own layer computes another function than LoRA's (a dilated or
    reflect-padded base: its A ignores both); those are refused with the reason."""
    base = layer.get_base_layer()
    if layer.disable_adapters:
        return f"{name} has its adapters disabled; enable them first"
    if adapter in getattr(layer, "lora_variant", {}):
        kind = type(layer.lora_variant[adapter]).__name__
        return f"{name} uses a LoRA variant ({kind}) on a Conv2d; only plain LoRA converts"
    if adapter in layer.merged_adapters or layer.merged_adapters:
        return f"{name} has an adapter merged into its kernel; unmerge it first"
    if layer.lora_bias.get(adapter):
        return f"{name} has lora_bias=True (a bias on B); LoRAConv2d has none"
    dropout = layer.lora_dropout[adapter]
    if isinstance(dropout, nn.Dropout) and dropout.p > 0:
        return f"{name} has lora_dropout={dropout.p}; LoRAConv2d has no dropout"
    if tuple(base.dilation) != (1, 1):
        return (f"{name} is dilated {tuple(base.dilation)}: PEFT's A ignores the dilation, so "
                "its layer is not LoRA on this convolution")  # fmt: skip
    if base.padding_mode != "zeros":
        return (f"{name} pads with {base.padding_mode!r}: PEFT's A pads with zeros, so its "
                "layer is not LoRA on this convolution")  # fmt: skip
    if base.groups != 1:
        return f"{name} is a grouped convolution (groups={base.groups}); LoRAConv2d needs groups=1"
    A, B = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    if A.dtype != base.weight.dtype or B.dtype != A.dtype:
        return (f"{name}: the adapter is {A.dtype} and {B.dtype} but the base weight is "
                f"{base.weight.dtype}; LoRAConv2d keeps one dtype")  # fmt: skip
    return None


def convert_conv(layer: Any, adapter: str, impl: str | None) -> LoRAConv2d:
    """A LoRAConv2d on the PEFT layer's base convolution, A, B and scaling (no copies)."""
    A, B = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    new = LoRAConv2d(layer.get_base_layer(), A.shape[0], alpha=float(layer.lora_alpha[adapter]),
                     impl=impl or "conv_two_step", adapter=(A, B))  # fmt: skip
    new.scale = float(layer.scaling[adapter])  # PEFT's, exact
    return new.train(layer.training)
