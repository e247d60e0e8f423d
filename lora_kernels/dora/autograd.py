"""Memory-lean DoRA training: a custom autograd.Function that takes the row norm from the
factored identity and saves x, x Aᵀ and z = x Vᵀ only (no out×in tensor); dx, dA, dB and dm
are computed by hand, the norm's own term only when the exact gradient is asked for."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lora_kernels.dora.eager import FactorCache, scale_rows
from lora_kernels.dora.norm import row_sq_norms, safe_norms
from lora_kernels.dora.weights import DoRAWeights
from lora_kernels.registry import Impl, Op, register, rows_op


class DoRAFunction(torch.autograd.Function):
    """y = c ⊙ (x Wᵀ + s·(x Aᵀ) Bᵀ) + b for x (T, in), c = m / ‖W + s·B A‖ per row; W and b
    are frozen. ‖W‖², P = W Aᵀ and G = A Aᵀ (fp32) come in without a graph."""

    @staticmethod
    def forward(
        ctx: Any,  # FunctionCtx, with the attributes forward sets
        x: Tensor,
        w: DoRAWeights,
        A: Tensor,
        B: Tensor,
        m: Tensor,
        w2: Tensor,
        P: Tensor,
        G: Tensor,
    ) -> Tensor:
        positive, n = safe_norms(row_sq_norms(w2, P, G, B, w.scale))  # (out,) fp32
        c = torch.where(positive, m.float() / n, 0.0)
        xa = x @ A.t()  # (T, r)
        z = (x @ w.W.t()).addmm_(xa, B.t(), alpha=w.scale)  # (T, out), kept for dm
        y = scale_rows(z, c.to(x.dtype), w.b, grad=True)
        ctx.save_for_backward(x, xa, z, w.W, A, B, m, c, n, positive, P, G)  # version-checked
        ctx.w = w
        return y

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple:
        x, xa, z, W, A, B, m, c, n, positive, P, G = ctx.saved_tensors
        w: DoRAWeights = ctx.w
        s = w.scale
        need_x, _, need_A, need_B, need_m, _, _, _ = ctx.needs_input_grad
        gc = g * z  # (T, out): first g ⊙ z for dc, then reused for g ⊙ c
        dc = gc.sum(0, dtype=torch.float32)  # (out,)
        torch.mul(g, c.to(g.dtype), out=gc)
        gB = gc @ B  # (T, r)
        dx = (gc @ W).addmm_(gB, A, alpha=s) if need_x else None
        dA = (gB.t() @ x).mul_(s) if need_A else None  # (r, in)
        # (xaᵀ gc)ᵀ, not gcᵀ xa: BLAS is several times slower on the transposed, skinny form
        dB = (xa.t() @ gc).mul_(s).t() if need_B else None  # (out, r)
        dm = torch.where(positive, dc / n, 0.0).to(m.dtype) if need_m else None
        if not w.detach_norm and (need_A or need_B):
            # through the norm: dV = u ⊙ V with u = -dc m / n³ and V = W + s·B A
            u = torch.where(positive, -dc * m.float() / n**3, 0.0)[:, None]  # (out, 1)
            B32 = B.float()
            if dB is not None:  # s·u ⊙ (V Aᵀ) = s·u ⊙ (P + s·B G)
                dB = dB + (s * u * torch.addmm(P, B32, G, alpha=s)).to(dB.dtype)
            if (
                dA is not None
            ):  # s·(u ⊙ B)ᵀ V = s·((u ⊙ B)ᵀ W + s·((u ⊙ B)ᵀ B) A): one r×out×in GEMM
                uBt = (u * B32).t()  # (r, out)
                dV_A = (uBt.to(W.dtype) @ W).float() + s * ((uBt @ B32) @ A.float())
                dA = dA + (s * dV_A).to(dA.dtype)
        return dx, None, dA, dB, dm, None, None, None


def build_dora_autograd(w: DoRAWeights) -> Op:
    if w.W.requires_grad or (w.b is not None and w.b.requires_grad):
        raise ValueError(
            "impl 'dora_autograd' trains A, B and m only; W and b must not require grad"
        )
    cache = FactorCache(w)

    def rows(x2: Tensor) -> Tensor:
        return DoRAFunction.apply(x2, w, w.A, w.B, w.m, *cache.get())

    return rows_op(w, rows)


register(
    Impl(
        "dora_autograd",
        "custom autograd.Function: factored norm; saves x, x Aᵀ and x Vᵀ only; grads by hand",
        build_dora_autograd,
        variant="dora",
    )
)
