"""PEFT's Conv2d LoRA layer (`peft.tuners.lora.Conv2d`) as a peer in the registry, built on
the same tensors as ours (extra `peers`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from lora_kernels.conv.weights import ConvLoRAWeights
from lora_kernels.impls.peers import peer_missing, peft_lora, use_tensor
from lora_kernels.registry import Impl, Op, register


def build_peft_conv(w: ConvLoRAWeights) -> Op:
    """PEFT's lora.Conv2d on an nn.Conv2d holding our W and b, its A and B our tensors. PEFT
    builds A without the base's dilation, so a dilated convolution is refused here."""
    if w.dilation != (1, 1):
        raise ValueError(f"PEFT's Conv2d LoRA builds A without the base's dilation, so it "
                         f"cannot take dilation {w.dilation}; ours can")  # fmt: skip
    layer: Any = _peft_layer(w)
    return layer


def _peft_layer(w: ConvLoRAWeights) -> nn.Module:
    from peft.tuners.lora import Conv2d

    base = nn.Conv2d(w.in_features, w.out_features, w.kernel_size, stride=w.stride,
                     padding=w.padding, bias=w.b is not None, device="meta")  # fmt: skip
    use_tensor(base, "weight", w.W)
    use_tensor(base, "bias", w.b)
    return peft_lora(Conv2d, base, w)


PEFT_CONV = Impl(
    "peft_conv",
    "PEFT's lora.Conv2d on the same tensors (A without the base's dilation: a dilated base is "
    "refused)",
    build_peft_conv,
    requires=peer_missing("peft"),
    origin="peer",
    source="peft",
    variant="conv",
)
register(PEFT_CONV)
