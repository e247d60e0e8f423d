"""Merged weight: W' = W + s · B A formed once in fp32 at build; each call is one GEMM. DoRA's
dora_merged uses the same builder: DoRAWeights merge to (m / ‖W + s·B A‖) ⊙ (W + s·B A)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor

from lora_kernels.registry import Impl, Op, register
from lora_kernels.weights import LoRAWeights

if TYPE_CHECKING:
    from lora_kernels.dora.weights import DoRAWeights


def build_merged(w: LoRAWeights | DoRAWeights) -> Op:
    W_merged = w.merged_weight()  # (out, in), a second copy of W
    b = None if w.b is None else w.b.detach()

    def op(x: Tensor) -> Tensor:
        return F.linear(x, W_merged, b)

    return op


register(
    Impl(
        "merged",
        "W' = W + s·B A merged once in fp32 at build, then one GEMM (inference only)",
        build_merged,
        modes=frozenset({"infer"}),
    )
)
