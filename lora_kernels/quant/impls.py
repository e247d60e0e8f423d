"""LoRA on a quantized base (variant "qlora"), in the one registry: the quantized base alone,
dequantize-then-GEMM with the adapter added in place (unsloth's matmul_lora), and a training
step that never keeps the dequantized W past its GEMM. x (..., in) -> (..., out) in the
compute dtype. The peers (bitsandbytes, PEFT's QLoRA) are in lora_kernels.quant.peers."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lora_kernels.quant.formats import FORMATS, QuantizedBase
from lora_kernels.quant.weights import QLoRAWeights
from lora_kernels.registry import Impl, Op, register, rows_op

ALL_FORMATS = frozenset(FORMATS)


def build_qbase(w: QLoRAWeights) -> Op:
    def op(x: Tensor) -> Tensor:
        return F.linear(x, w.base.dequantize(), w.b)

    return op


def build_dequant(w: QLoRAWeights) -> Op:
    Bt = w.B.t()  # (r, out)

    def rows(x2: Tensor) -> Tensor:  # (T, in)
        y = F.linear(x2, w.base.dequantize(), w.b)  # (T, out); autograd keeps Ŵ for dx
        return y.addmm_(F.linear(x2, w.A), Bt, alpha=w.scale)

    return rows_op(w, rows)


class _Lean(torch.autograd.Function):
    """y = x Ŵᵀ + b + s·(x Aᵀ) Bᵀ on rows x (T, in). Saves x and x Aᵀ (T, r); Ŵ is dequantized
    for each GEMM (forward, and dx in backward) and freed after it."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, A: Tensor, B: Tensor, base: QuantizedBase,
                b: Tensor | None, scale: float) -> Tensor:  # fmt: skip
        y = F.linear(x, base.dequantize(), b)
        xa = F.linear(x, A)
        y.addmm_(xa, B.t(), alpha=scale)
        ctx.save_for_backward(x, xa, A, B)
        ctx.base, ctx.scale = base, scale
        return y

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, xa, A, B = ctx.saved_tensors
        s, g = ctx.scale, g.contiguous()
        gB = torch.mm(g, B)  # (T, r)
        dx = dA = dB = None
        if ctx.needs_input_grad[0]:
            dx = torch.mm(g, ctx.base.dequantize()).addmm_(gB, A, alpha=s)
        if ctx.needs_input_grad[1]:
            dA = torch.mm(gB.t(), x).mul_(s)
        if ctx.needs_input_grad[2]:
            dB = torch.mm(g.t(), xa).mul_(s)
        return dx, dA, dB, None, None, None


def build_lean(w: QLoRAWeights) -> Op:
    infer = build_dequant(w)  # without grad there is nothing to keep for backward

    def rows(x2: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return infer(x2)
        return _Lean.apply(x2, w.A, w.B, w.base, w.b, w.scale)

    return rows_op(w, rows)


register(
    Impl(
        "qbase",
        "quantized base alone: dequantize W, then x Ŵᵀ + b (not LoRA)",
        build_qbase,
        lora_equivalent=False,
        variant="qlora",
        formats=ALL_FORMATS,
    )
)
register(
    Impl(
        "qlora_dequant",
        "dequantize W, base GEMM, then s·(x Aᵀ) Bᵀ added in place (unsloth's matmul_lora); "
        "autograd keeps Ŵ for dx",
        build_dequant,
        variant="qlora",
        formats=ALL_FORMATS,
    )
)
register(
    Impl(
        "qlora_lean",
        "autograd.Function: Ŵ dequantized for each GEMM and freed after it; saves x and x Aᵀ",
        build_lean,
        variant="qlora",
        formats=ALL_FORMATS,
    )
)
