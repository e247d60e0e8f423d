"""PEFT's Conv2d LoRA layer (`peft.tuners.lora.Conv2d`) as peers in the registry, LoRA and
DoRA (use_dora=True), built on the same tensors as ours (extra `peers`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lora_kernels.conv.dora_weights import ConvDoRAWeights
from lora_kernels.conv.weights import ConvLoRAWeights
from lora_kernels.impls.peers import peer_missing, peft_lora, use_tensor
from lora_kernels.registry import Impl, Op, register


def _undilated(w: ConvLoRAWeights | ConvDoRAWeights) -> nn.Conv2d:
    """An nn.Conv2d holding our W and b. PEFT builds A without the base's dilation, so a
    dilated convolution is refused here."""
    if w.dilation != (1, 1):
        raise ValueError(f"PEFT's Conv2d LoRA builds A without the base's dilation, so it "
                         f"cannot take dilation {w.dilation}; ours can")  # fmt: skip
    base = nn.Conv2d(w.in_features, w.out_features, w.kernel_size, stride=w.stride,
                     padding=w.padding, bias=w.b is not None, device="meta")  # fmt: skip
    use_tensor(base, "weight", w.W)
    use_tensor(base, "bias", w.b)
    return base


def build_peft_conv(w: ConvLoRAWeights) -> Op:
    """PEFT's lora.Conv2d on our tensors, A and B themselves."""
    from peft.tuners.lora import Conv2d

    layer: Any = peft_lora(Conv2d, _undilated(w), w)
    return layer


def build_peft_conv_dora(w: ConvDoRAWeights) -> Op:
    """PEFT's lora.Conv2d with use_dora=True on our tensors; its magnitude, (1, out, 1, 1), is
    a view of our m (out,)."""
    from peft import LoraConfig
    from peft.tuners.lora import Conv2d

    alpha = w.scale * w.rank
    config = LoraConfig(r=w.rank, lora_alpha=alpha, use_dora=True)
    base = _undilated(w)
    with torch.device("meta"):  # PEFT takes m from W's norms at init: skip that work
        layer: Any = Conv2d(base, "default", config=config, r=w.rank, lora_alpha=alpha,
                            use_dora=True)  # fmt: skip
    layer.scaling["default"] = w.scale
    use_tensor(layer.lora_A["default"], "weight", w.A)
    use_tensor(layer.lora_B["default"], "weight", w.B)
    use_tensor(layer.lora_magnitude_vector["default"], "weight", w.m.view(1, -1, 1, 1))
    return layer


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
register(Impl("peft_conv_dora", "PEFT's lora.Conv2d with use_dora=True on the same tensors: "
              "forms W + s·B A on every call for its norm (a dilated base is refused)",
              build_peft_conv_dora, requires=peer_missing("peft"), origin="peer",
              source="peft", variant="conv_dora", exact_norm=False))  # fmt: skip
