"""A Triton kernel for LoRA on a 4-bit base (NF4 or FP4, bitsandbytes' layout): the base GEMM
reads the packed codes and dequantizes each tile in registers, so Ŵ never exists in memory,
and adds s · (x Aᵀ) Bᵀ and b in its epilogue; y is written once. The shrink x Aᵀ (T, r) is
torch's. CUDA; on a CPU it runs under TRITON_INTERPRET=1.

The training step (impl qlora_triton, mode train) runs this forward and qlora_lean's backward.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lora_kernels.impls.triton_fused import next_pow2, triton_missing
from lora_kernels.quant.formats import FOUR_BIT, QuantizedBase, bnb_missing
from lora_kernels.quant.impls import _Lean
from lora_kernels.quant.weights import QLoRAWeights
from lora_kernels.registry import Impl, Op, register, rows_op


@cache
def _kernel() -> Any:  # a triton.JITFunction
    """Define the kernel on first use, so TRITON_INTERPRET set by then takes effect."""
    import triton
    import triton.language as tl

    @triton.jit
    def qlora_kernel(
        x_ptr, q_ptr, absmax_ptr, code_ptr, bias_ptr, xa_ptr, b_ptr, y_ptr,
        T, IN, OUT, R, BS,
        sxm, sxk, sam, sar, sbn, sbr, sym, syn,
        scale,
        HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, PRECISION: tl.constexpr,
        UPCAST: tl.constexpr,
    ):  # fmt: skip
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, IN, BLOCK_K):
            kk = k0 + rk
            x = tl.load(
                x_ptr + rm[:, None] * sxm + kk[None, :] * sxk,
                mask=(rm[:, None] < T) & (kk[None, :] < IN),
                other=0.0,
            )  # (BLOCK_M, BLOCK_K)
            idx = rn[None, :].to(tl.int64) * IN + kk[:, None]  # W[n, k], flat, as Wᵀ tile
            mask = (kk[:, None] < IN) & (rn[None, :] < OUT)
            byte = tl.load(q_ptr + idx // 2, mask=mask, other=0).to(tl.int32)
            code = tl.where(idx % 2 == 0, byte >> 4, byte & 15)  # even index: high nibble
            w = tl.load(code_ptr + code) * tl.load(absmax_ptr + idx // BS, mask=mask, other=0.0)
            if UPCAST:
                acc += tl.dot(x.to(tl.float32), w, input_precision=PRECISION)
            else:
                acc += tl.dot(x, w.to(x.dtype), input_precision=PRECISION)
        rr = tl.arange(0, BLOCK_R)
        xa = tl.load(
            xa_ptr + rm[:, None] * sam + rr[None, :] * sar,
            mask=(rm[:, None] < T) & (rr[None, :] < R),
            other=0.0,
        )  # (BLOCK_M, BLOCK_R)
        bt = tl.load(
            b_ptr + rn[None, :] * sbn + rr[:, None] * sbr,
            mask=(rr[:, None] < R) & (rn[None, :] < OUT),
            other=0.0,
        )  # (BLOCK_R, BLOCK_N) = Bᵀ tile
        acc += scale * tl.dot(xa.to(tl.float32), bt.to(tl.float32), input_precision=PRECISION)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rn, mask=rn < OUT, other=0.0).to(tl.float32)[None, :]
        tl.store(
            y_ptr + rm[:, None] * sym + rn[None, :] * syn,
            acc.to(y_ptr.dtype.element_ty),
            mask=(rm[:, None] < T) & (rn[None, :] < OUT),
        )

    return qlora_kernel


def _absmax(base: QuantizedBase) -> Tensor:
    """The fp32 absmax per block (bitsandbytes' double-quantized statistics expanded)."""
    state = base.state
    if not getattr(state, "nested", False):
        return state.absmax.float()
    import bitsandbytes.functional as bnbf

    return (bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset).float()


def qlora_forward(x: Tensor, base: QuantizedBase, bias: Tensor | None, xa: Tensor, B: Tensor,
                  scale: float) -> Tensor:  # fmt: skip
    """y = x Ŵᵀ + b + s · xa Bᵀ in one launch, Ŵ dequantized tile by tile; x (T, in),
    xa = x Aᵀ (T, r), B (out, r) -> y (T, out)."""
    if base.fmt not in FOUR_BIT:
        raise ValueError(f"the 4-bit kernel takes {FOUR_BIT} bases, not {base.fmt!r}")
    T, in_f = x.shape
    out_f, r = B.shape
    if (out_f, in_f) != base.shape or xa.shape != (T, r):
        raise ValueError(
            f"qlora_forward needs x (T, in), xa (T, r), B (out, r) with (out, in) = "
            f"{base.shape}; got x {tuple(x.shape)}, xa {tuple(xa.shape)}, B {tuple(B.shape)}"
        )
    y = torch.empty(T, out_f, dtype=x.dtype, device=x.device)
    if T == 0:
        return y
    block_m = 16 if T <= 16 else 64
    block_n, block_k = 64, 32 if x.dtype == torch.float32 else 64
    upcast = x.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"
    precision = "ieee" if x.dtype == torch.float32 or upcast else "tf32"
    code = base.state.code.to(device=x.device, dtype=torch.float32)
    grid = (-(-T // block_m), -(-out_f // block_n))
    _kernel()[grid](
        x, base.data, _absmax(base), code, y if bias is None else bias, xa, B, y,
        T, in_f, out_f, r, base.blocksize,
        x.stride(0), x.stride(1), xa.stride(0), xa.stride(1), B.stride(0), B.stride(1),
        y.stride(0), y.stride(1),
        float(scale),
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        BLOCK_R=max(16, next_pow2(r)), PRECISION=precision, UPCAST=upcast,
    )  # fmt: skip
    return y


class _Triton(_Lean):
    """qlora_forward's forward, qlora_lean's backward (which saves x and x Aᵀ only)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, A: Tensor, B: Tensor, base: QuantizedBase,
                b: Tensor | None, scale: float) -> Tensor:  # fmt: skip
        xa = F.linear(x, A)
        ctx.save_for_backward(x, xa, A, B)
        ctx.base, ctx.scale = base, scale
        return qlora_forward(x, base, b, xa, B, scale)


def build_triton(w: QLoRAWeights) -> Op:
    def rows(x2: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return _Triton.apply(x2, w.A, w.B, w.base, w.b, w.scale)
        return qlora_forward(x2, w.base, w.b, F.linear(x2, w.A), w.B, w.scale)

    return rows_op(w, rows)


def _missing() -> str | None:
    return triton_missing("qlora_triton") or bnb_missing()


register(
    Impl(
        "qlora_triton",
        "one Triton kernel: the base GEMM dequantizes NF4/FP4 tiles in registers and adds "
        "s·(x Aᵀ) Bᵀ and b in its epilogue; qlora_lean's backward",
        build_triton,
        devices=frozenset({"cuda"}),
        requires=_missing,
        variant="qlora",
        formats=frozenset(FOUR_BIT),
    )
)
