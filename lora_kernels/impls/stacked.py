"""One GEMM of x against [W; A] stacked at build, so x is read once; the rank columns of
its output are then expanded into the base columns in place."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lora_kernels.registry import Impl, Op, register
from lora_kernels.weights import LoRAWeights


def build_stacked(w: LoRAWeights) -> Op:
    with torch.no_grad():
        WA = torch.cat([w.W, w.A]).detach()  # (out + r, in): a second copy of W
        b = None if w.b is None else torch.cat([w.b, w.b.new_zeros(w.rank)]).detach()
    Bt = w.B.detach().t()  # (r, out)
    out_f = w.out_features

    def op(x: Tensor) -> Tensor:
        z = F.linear(x.reshape(-1, w.in_features), WA, b)  # (T, out + r)
        y = z[:, :out_f]  # (T, out), row stride out + r
        y.addmm_(z[:, out_f:], Bt, alpha=w.scale)
        return y.view(*x.shape[:-1], out_f)  # a row-strided view: no copy

    return op


register(
    Impl(
        "stacked",
        "one GEMM against [W; A] (stacked at build: a W copy), then addmm_ of the rank slice",
        build_stacked,
        modes=frozenset({"infer"}),
    )
)
