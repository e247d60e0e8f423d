"""A toy LoRA implementation that lora-bench loads through its entry point: the adapter
term s · (x Aᵀ) Bᵀ by two einsums, added to the base GEMM's output out of place."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lora_kernels import Impl, LoRAWeights, Op


def build(w: LoRAWeights) -> Op:
    """op(x): (..., in) -> (..., out); nothing to prepare once, so build only closes over w."""

    def op(x: Tensor) -> Tensor:
        xa = torch.einsum("...i,ri->...r", x, w.A)  # (..., r)
        return F.linear(x, w.W, w.b) + w.scale * torch.einsum("...r,or->...o", xa, w.B)

    return op


IMPL = Impl("toy_einsum", "example plugin: x Wᵀ + b + s·einsum(einsum(x, A), B)", build)
