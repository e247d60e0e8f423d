"""Memory-lean training: a custom autograd.Function that saves only x and x Aᵀ and computes
dx, dA and dB with in-place addmm, with no output-sized temporaries beyond y and dx, and each
product in the operand order BLAS runs fastest (see bench/NOTES.md)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lora_kernels.registry import Impl, Op, register, rows_op
from lora_kernels.weights import LoRAWeights


class LoRAFunction(torch.autograd.Function):
    """y = x Wᵀ + b + s · (x Aᵀ) Bᵀ for x (T, in); W and b are frozen (no gradient)."""

    @staticmethod
    def forward(
        ctx: Any,  # FunctionCtx, with the attributes forward sets
        x: Tensor,
        W: Tensor,
        b: Tensor | None,
        A: Tensor,
        B: Tensor,
        scale: float,
    ) -> Tensor:
        xa = x @ A.t()  # (T, r)
        y = x @ W.t() if b is None else torch.addmm(b, x, W.t())  # (T, out)
        y.addmm_(xa, B.t(), alpha=scale)
        ctx.save_for_backward(x, xa, W, A, B)
        ctx.scale = scale
        return y

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple:
        x, xa, W, A, B = ctx.saved_tensors
        s = ctx.scale
        need_x, _, _, need_A, need_B, _ = ctx.needs_input_grad
        dx = dA = dB = None
        if need_x or need_A:
            gB = g @ B  # (T, r)
            if need_x:
                dx = (g @ W).addmm_(gB, A, alpha=s)  # (T, in)
            if need_A:
                dA = (gB.t() @ x).mul_(s)  # (r, in)
        if need_B:
            # (xaᵀ g)ᵀ, not gᵀ xa: BLAS is several times slower on the transposed, skinny form
            dB = (xa.t() @ g).mul_(s).t()  # (out, r)
        return dx, None, None, dA, dB, None


def build_autograd(w: LoRAWeights) -> Op:
    if w.W.requires_grad or (w.b is not None and w.b.requires_grad):
        raise ValueError("impl 'autograd' trains A and B only; W and b must not require grad")

    return rows_op(w, lambda x2: LoRAFunction.apply(x2, w.W, w.b, w.A, w.B, w.scale))


register(
    Impl(
        "autograd",
        "custom autograd.Function: saves x and x Aᵀ only; dx, dA, dB by in-place addmm",
        build_autograd,
    )
)
