"""Merging an adapter into a quantized base: Ŵ + s·B A, quantized again in the base's format.
What users do to get the base's speed back; it changes the function by the merge error."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lora_kernels.numerics import f64, rel_error
from lora_kernels.quant.formats import QuantizedBase
from lora_kernels.quant.weights import QLoRAWeights


def merge_requantize(w: QLoRAWeights) -> QuantizedBase:
    """A new base holding Ŵ + s·B A in w's format, block size and compute dtype; w's base is
    read, never written. Raises ValueError when the sum is not finite."""
    base = w.base
    with torch.no_grad():
        merged = torch.addmm(base.dequantize().float(), w.B.float(), w.A.float(), alpha=w.scale)
    return QuantizedBase.quantize(merged, base.fmt, blocksize=base.blocksize or 64,
                                  dtype=base.dtype)  # fmt: skip


def weight_error(w: QLoRAWeights, merged: QuantizedBase) -> float:
    """‖Ŵ' − (Ŵ + s·B A)‖ / ‖Ŵ + s·B A‖: how far the requantized merged weight is from the
    merge it stands for, in float64."""
    want = f64(w.base.dequantize()) + w.scale * (f64(w.B) @ f64(w.A))
    return rel_error(f64(merged.dequantize()), want)


@dataclass(frozen=True)
class MergeError:
    """Relative output errors of the requantized merged layer on one input: against the
    unmerged quantized layer (what merging costs), and against the float layer the base was
    quantized from (what quantizing and merging cost together); the unmerged layer's own
    distance to the float one is `quantized`, for scale."""

    vs_unmerged: float
    vs_float: float
    quantized: float
    weight_error: float  # see weight_error()


def merge_error(w: QLoRAWeights, W_float: Tensor, x: Tensor) -> MergeError:
    """The merge error of w on input x (..., in); W_float (out, in) is the weight w's base
    was quantized from. Computed in float64 on the CPU."""
    merged = merge_requantize(w)
    x64, b = f64(x), None if w.b is None else f64(w.b)
    adapter = w.scale * F.linear(F.linear(x64, f64(w.A)), f64(w.B))
    y_merged = F.linear(x64, f64(merged.dequantize()), b)
    y_unmerged = F.linear(x64, f64(w.base.dequantize()), b) + adapter
    y_float = F.linear(x64, f64(W_float), b) + adapter
    return MergeError(rel_error(y_merged, y_unmerged), rel_error(y_merged, y_float),
                      rel_error(y_unmerged, y_float), weight_error(w, merged))  # fmt: skip
