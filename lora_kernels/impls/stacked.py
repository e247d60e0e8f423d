"""One GEMM of x against [W; A] stacked at build, so x is read once; the rank columns of
its output are then expanded into the base columns in place."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lora_kernels.registry import Impl, Op, register, rows_op
from lora_kernels.weights import LoRAWeights


def build_stacked(w: LoRAWeights) -> Op:
    with torch.no_grad():
        WA = torch.cat([w.W, w.A]).detach()  # (out + r, in): a second copy of W
        b = None if w.b is None else torch.cat([w.b, w.b.new_zeros(w.rank)]).detach()
    Bt = w.B.detach().t()  # (r, out)
    out_f = w.out_features

    def rows(x2: Tensor) -> Tensor:  # x2: (T, in)
        z = F.linear(x2, WA, b)  # (T, out + r)
        y = z[:, :out_f]  # (T, out), row stride out + r: returned as a view, no copy
        return y.addmm_(z[:, out_f:], Bt, alpha=w.scale)

    return rows_op(w, rows)


register(
    Impl(
        "stacked",
        "one GEMM against [W; A] (stacked at build: a W copy), then addmm_ of the rank slice",
        build_stacked,
        modes=frozenset({"infer"}),
    )
)
