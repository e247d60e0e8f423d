"""Eager PyTorch forwards: the base GEMM, PEFT's two-step form, addmm, and the delta-weight
anti-pattern. Each builder closes over the weights and returns op(x): (..., in) -> (..., out)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lora_kernels.registry import Impl, Op, register, rows_op
from lora_kernels.weights import LoRAWeights


def two_step_forward(
    x: Tensor, W: Tensor, b: Tensor | None, A: Tensor, B: Tensor, scale: float
) -> Tensor:
    """x Wᵀ + b + s · (x Aᵀ) Bᵀ as separate kernels and an out-of-place add (PEFT's form)."""
    return F.linear(x, W, b) + scale * F.linear(F.linear(x, A), B)


def build_base(w: LoRAWeights) -> Op:
    def op(x: Tensor) -> Tensor:
        return F.linear(x, w.W, w.b)

    return op


def build_two_step(w: LoRAWeights) -> Op:
    def op(x: Tensor) -> Tensor:
        return two_step_forward(x, w.W, w.b, w.A, w.B, w.scale)

    return op


def build_addmm(w: LoRAWeights) -> Op:
    Bt = w.B.t()  # (r, out)

    def rows(x2: Tensor) -> Tensor:  # x2: (T, in)
        y = F.linear(x2, w.W, w.b)  # (T, out)
        return y.addmm_(F.linear(x2, w.A), Bt, alpha=w.scale)  # y += s · (x Aᵀ) Bᵀ, in place

    return rows_op(w, rows)


def build_expand_first(w: LoRAWeights) -> Op:
    Bt, Wt = w.B.t(), w.W.t()  # (r, out), (in, out)

    def rows(x2: Tensor) -> Tensor:  # x2: (T, in)
        xa = F.linear(x2, w.A)  # (T, r)
        if w.b is None:
            y = torch.mm(xa, Bt).mul_(w.scale)  # (T, out)
        else:
            y = torch.addmm(w.b, xa, Bt, alpha=w.scale)
        return y.addmm_(x2, Wt)  # the base GEMM accumulates into y (beta = 1)

    return rows_op(w, rows)


def build_delta_weight(w: LoRAWeights) -> Op:
    def op(x: Tensor) -> Tensor:
        return F.linear(x, w.W + w.scale * (w.B @ w.A), w.b)

    return op


register(
    Impl(
        "base",
        "plain GEMM x Wᵀ + b without the adapter: the baseline of every ratio (not LoRA)",
        build_base,
        lora_equivalent=False,
    )
)
register(
    Impl("two_step", "PEFT's form: x Wᵀ + b + s·((x Aᵀ) Bᵀ), out-of-place add", build_two_step)
)
register(
    Impl(
        "addmm", "base GEMM, then the expand added into its output by addmm_(alpha=s)", build_addmm
    )
)
register(
    Impl(
        "expand_first",
        "s·(x Aᵀ) Bᵀ + b first, then the base GEMM accumulates into it (beta=1): y written once",
        build_expand_first,
    )
)
register(
    Impl(
        "delta_weight",
        "anti-pattern: forms W + s·B A (out×in) on every call, then one GEMM",
        build_delta_weight,
    )
)
