"""A Triton kernel that does the shrink (x Aᵀ) and the expand (· Bᵀ) in one launch and adds
s · (x Aᵀ) Bᵀ into the base GEMM's output in place: x is read once more, y is read and
written once, and x Aᵀ never leaves the chip. CUDA; on a CPU it runs under TRITON_INTERPRET=1.

Each program takes BLOCK_M rows of x, computes their (BLOCK_M, r) shrink in fp32, then walks
its share of the output columns. Programs split the columns so that decode (T = 1) still
fills the GPU; each split recomputes the small shrink of its rows.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lora_kernels.registry import Impl, Op, register, rows_op
from lora_kernels.weights import LoRAWeights


def triton_missing(impl: str = "triton_fused") -> str | None:
    """Why `impl`, a Triton kernel, cannot run here, or None."""
    if importlib.util.find_spec("triton") is None:
        return f"impl {impl!r} needs triton: pip install 'lora-bench[triton]'"
    return None


@cache
def _kernel() -> Any:  # a triton.JITFunction, launched as kernel[grid](...)
    """Define the kernel on first use, so TRITON_INTERPRET set by then takes effect."""
    import triton
    import triton.language as tl

    @triton.jit
    def lora_add_kernel(
        x_ptr, a_ptr, b_ptr, y_ptr,
        T, IN, OUT, R,
        sxm, sxk, sar, sak, sbn, sbr, sym, syn,
        scale,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_R: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):  # fmt: skip
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rr = tl.arange(0, BLOCK_R)
        rk = tl.arange(0, BLOCK_K)
        xa = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)  # shrink of these rows
        for k0 in range(0, IN, BLOCK_K):
            kk = k0 + rk
            x = tl.load(
                x_ptr + rm[:, None] * sxm + kk[None, :] * sxk,
                mask=(rm[:, None] < T) & (kk[None, :] < IN),
                other=0.0,
            )  # (BLOCK_M, BLOCK_K)
            a = tl.load(
                a_ptr + rr[None, :] * sar + kk[:, None] * sak,
                mask=(rr[None, :] < R) & (kk[:, None] < IN),
                other=0.0,
            )  # (BLOCK_K, BLOCK_R) = Aᵀ tile
            if UPCAST:
                x, a = x.to(tl.float32), a.to(tl.float32)
            xa += tl.dot(x, a, input_precision=PRECISION)
        xa = (xa * scale).to(y_ptr.dtype.element_ty)
        for nb in range(pid_n, tl.cdiv(OUT, BLOCK_N), tl.num_programs(1)):
            rn = nb * BLOCK_N + tl.arange(0, BLOCK_N)
            b = tl.load(
                b_ptr + rn[None, :] * sbn + rr[:, None] * sbr,
                mask=(rr[:, None] < R) & (rn[None, :] < OUT),
                other=0.0,
            )  # (BLOCK_R, BLOCK_N) = Bᵀ tile
            if UPCAST:
                acc = tl.dot(xa.to(tl.float32), b.to(tl.float32), input_precision=PRECISION)
            else:
                acc = tl.dot(xa, b, input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
            y_ptrs = y_ptr + rm[:, None] * sym + rn[None, :] * syn
            mask = (rm[:, None] < T) & (rn[None, :] < OUT)
            y = tl.load(y_ptrs, mask=mask, other=0.0)
            tl.store(y_ptrs, (y.to(tl.float32) + acc).to(y_ptr.dtype.element_ty), mask=mask)

    return lora_add_kernel


def target_programs(device: torch.device) -> int:
    """Programs to aim for: a few per SM on a GPU, a handful under the interpreter."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def lora_add_(y: Tensor, x: Tensor, A: Tensor, B: Tensor, scale: float) -> Tensor:
    """y += scale · (x Aᵀ) Bᵀ in one kernel launch; x (T, in), A (r, in), B (out, r), y (T, out)."""
    T, in_f = x.shape
    out_f, r = B.shape
    if y.shape != (T, out_f) or A.shape != (r, in_f):
        raise ValueError(
            f"lora_add_ needs y (T, out), x (T, in), A (r, in), B (out, r); got y "
            f"{tuple(y.shape)}, x {tuple(x.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}"
        )
    block_r = max(16, next_pow2(r))
    block_m = 16 if T <= 16 else (32 if block_r >= 128 else 64)
    block_n = 64 if block_r >= 128 else 128
    block_k = 32 if x.dtype == torch.float32 else 64
    m_blocks = -(-T // block_m)
    n_blocks = -(-out_f // block_n)
    n_split = max(1, min(n_blocks, target_programs(x.device) // m_blocks))
    # fp32 dots in full precision (Triton's default is tf32). The interpreter's bf16 dot is
    # wrong (numpy has no bf16), so there bf16 tiles are upcast to fp32 before the dot.
    upcast = x.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"
    precision = "ieee" if x.dtype == torch.float32 or upcast else "tf32"
    _kernel()[(m_blocks, n_split)](
        x, A, B, y,
        T, in_f, out_f, r,
        x.stride(0), x.stride(1), A.stride(0), A.stride(1),
        B.stride(0), B.stride(1), y.stride(0), y.stride(1),
        float(scale),
        BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_N=block_n, BLOCK_R=block_r,
        PRECISION=precision, UPCAST=upcast,
    )  # fmt: skip
    return y


def next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def build_triton_fused(w: LoRAWeights) -> Op:
    A, B = w.A.detach(), w.B.detach()

    def rows(x2: Tensor) -> Tensor:  # x2: (T, in)
        return lora_add_(F.linear(x2, w.W, w.b), x2, A, B, w.scale)  # GEMM by cuBLAS, then ours

    return rows_op(w, rows)


register(
    Impl(
        "triton_fused",
        "base GEMM, then one Triton kernel: shrink and expand fused, added into y in place",
        build_triton_fused,
        devices=frozenset({"cuda"}),
        modes=frozenset({"infer"}),
        requires=triton_missing,
    )
)
