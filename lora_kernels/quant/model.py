"""A model's linear layers quantized in place: bitsandbytes' Linear4bit or Linear8bitLt on the
codes and scales QuantizedBase gives, as a QLoRA model's base (PEFT adapts those layers)."""

from __future__ import annotations

from torch import nn

from lora_kernels.inject import _replace, select_linears
from lora_kernels.quant.formats import QuantizedBase, check_blocksize
from lora_kernels.quant.peers import bnb_layer


def quantize_linears(model: nn.Module, fmt: str, targets: list[str] | str = "all-linear", *,
                     blocksize: int = 64) -> list[str]:  # fmt: skip
    """Put bitsandbytes' layer of format `fmt` ("nf4", "fp4" or "int8") in place of each
    nn.Linear that `targets` select (PEFT's rule; "all-linear" leaves the output layer out),
    computing in the layer's dtype; returns their names. Every layer is quantized before
    the first is replaced, so a refusal changes nothing."""
    check_blocksize(blocksize)
    linears = select_linears(model, targets)
    wrong = [n for n, m in linears.items() if not isinstance(m, nn.Linear)]
    if wrong:
        raise ValueError(f"{wrong[0]} is a {type(linears[wrong[0]]).__name__}; only nn.Linear "
                         "layers are quantized")  # fmt: skip
    new = {}
    for name, m in linears.items():
        assert isinstance(m, nn.Linear)
        base = QuantizedBase.quantize(m.weight.detach(), fmt, blocksize=blocksize)
        bias = None if m.bias is None else nn.Parameter(m.bias.detach(), requires_grad=False)
        new[name] = bnb_layer(base, bias)
    for name, layer in new.items():
        _replace(model, name, layer)
    # what transformers sets on a model loaded quantized: PEFT then adapts these layers with
    # its QLoRA layers (peft.tuners.lora.bnb)
    flag = "is_loaded_in_8bit" if fmt == "int8" else "is_loaded_in_4bit"
    setattr(model, flag, True)
    return list(new)
