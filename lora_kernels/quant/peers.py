"""bitsandbytes' quantized layers and PEFT's QLoRA layer as peers (variant "qlora"), built on the
same codes and scales as ours, so that they compute the same function. They need the `quant`
and `peers` extras; without them they are unavailable, and say why."""

from __future__ import annotations

import copy
import importlib.util
from typing import Any

from torch import Tensor

from lora_kernels.impls.peers import use_tensor
from lora_kernels.quant.formats import FOUR_BIT, QuantizedBase, bnb_missing
from lora_kernels.quant.weights import QLoRAWeights
from lora_kernels.registry import Impl, Op, register

BNB_FORMATS = frozenset(("nf4", "fp4", "int8"))


def bnb_layer(base: QuantizedBase, bias: Tensor | None) -> Any:  # Linear4bit or Linear8bitLt
    """bitsandbytes' frozen layer holding the base's codes and scales, and bias (no copies).
    In eval mode on a CPU with AVX512-bf16, bitsandbytes' 4-bit layer takes another path
    (weights repacked, compute in bf16: not the same function at fp32's tolerance); the layer
    is returned in training mode, its fp32 path, as nn.Module makes it."""
    import bitsandbytes as bnb

    out_f, in_f = base.shape
    if base.fmt == "int8" and base.device.type == "cuda":
        raise ValueError(
            "bitsandbytes' int8 layer quantizes the activations too on CUDA (LLM.int8), "
            "another function than weight-only int8; on CUDA its peers take nf4 and fp4"
        )
    layer: Any
    if base.fmt in FOUR_BIT:
        layer = bnb.nn.Linear4bit(in_f, out_f, bias=bias is not None, compute_dtype=base.dtype,
                                  compress_statistics=False, quant_type=base.fmt,
                                  device="meta")  # fmt: skip
        # bitsandbytes repacks the weight for its CPU inference path and rewrites the state's
        # fields then: it gets a copy of the state, so the base's own stays as it is
        layer.weight = bnb.nn.Params4bit(base.data, requires_grad=False,
                                         quant_state=copy.copy(base.state),
                                         blocksize=base.blocksize, compress_statistics=False,
                                         quant_type=base.fmt, bnb_quantized=True)  # fmt: skip
    elif base.fmt == "int8":
        assert base.scale is not None
        layer = bnb.nn.Linear8bitLt(in_f, out_f, bias=bias is not None, has_fp16_weights=False,
                                    threshold=0.0, device="meta")  # fmt: skip
        weight = bnb.nn.Int8Params(base.data, requires_grad=False, has_fp16_weights=False)
        weight.CB, weight.SCB = base.data, base.scale * 127.0  # bitsandbytes keeps the absmax
        layer.weight = weight
    else:
        raise ValueError(
            f"bitsandbytes has no {base.fmt} layer; its peers take {sorted(BNB_FORMATS)}"
        )
    use_tensor(layer, "bias", bias)
    return layer


def build_bnb_base(w: QLoRAWeights) -> Op:
    return bnb_layer(w.base, w.b)


def peft_qlora_layer(w: QLoRAWeights) -> Any:  # peft.tuners.lora.bnb.Linear4bit or Linear8bitLt
    """PEFT's LoRA layer for bitsandbytes' base (what QLoRA training builds) on our tensors."""
    from peft import LoraConfig
    from peft.tuners.lora import bnb as peft_bnb

    cls = peft_bnb.Linear8bitLt if w.fmt == "int8" else peft_bnb.Linear4bit
    alpha = w.scale * w.rank
    layer = cls(bnb_layer(w.base, w.b), "default", config=LoraConfig(r=w.rank, lora_alpha=alpha),
                r=w.rank, lora_alpha=alpha)  # fmt: skip
    layer.scaling["default"] = w.scale
    use_tensor(layer.lora_A["default"], "weight", w.A)
    use_tensor(layer.lora_B["default"], "weight", w.B)
    return layer


def build_peft_qlora(w: QLoRAWeights) -> Op:
    return peft_qlora_layer(w)


def peers_missing() -> str | None:
    if importlib.util.find_spec("peft") is None:
        return "peer 'peft' is not installed: pip install 'lora-bench[peers]'"
    return bnb_missing()


register(
    Impl(
        "bnb_base",
        "bitsandbytes' Linear4bit / Linear8bitLt alone, fp32 path (not LoRA)",
        build_bnb_base,
        lora_equivalent=False,
        requires=bnb_missing,
        origin="peer",
        source="bitsandbytes",
        variant="qlora",
        formats=BNB_FORMATS,
    )
)
register(
    Impl(
        "peft_qlora",
        "HF PEFT's LoRA on bitsandbytes' Linear4bit / Linear8bitLt (QLoRA)",
        build_peft_qlora,
        requires=peers_missing,
        origin="peer",
        source="peft",
        variant="qlora",
        formats=BNB_FORMATS,
    )
)
