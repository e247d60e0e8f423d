"""Segmented gather matrix-vector (SGMV, as Punica calls it) in one Triton kernel: the tokens
sorted by adapter, each program takes up to BLOCK_M tokens of one adapter, computes their
shrink (x A_iᵀ, in fp32, never leaving the chip) and adds s_i · (x A_iᵀ) B_iᵀ into the base
GEMM's output rows in place. CUDA; on a CPU it runs under TRITON_INTERPRET=1.

The grid is (row blocks, adapters, column splits) and is sized without reading the segment
lengths back to the host: a program past its adapter's segment does nothing.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lora_kernels.impls.triton_fused import next_pow2, target_programs, triton_missing
from lora_kernels.multi.index import sort_by_adapter
from lora_kernels.multi.registry import MULTI_IMPLS, MultiImpl, MultiOp, multi_rows
from lora_kernels.multi.weights import MultiLoRAWeights
from lora_kernels.registry import register


@cache
def _kernel() -> Any:  # a triton.JITFunction, launched as kernel[grid](...)
    """Define the kernel on first use, so TRITON_INTERPRET set by then takes effect."""
    import triton
    import triton.language as tl

    @triton.jit
    def sgmv_kernel(
        x_ptr, a_ptr, b_ptr, y_ptr, order_ptr, start_ptr, count_ptr, rank_ptr, scale_ptr,
        IN, OUT,
        sxm, sxk, sai, sar, sak, sbi, sbn, sbr, sym, syn,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_R: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):  # fmt: skip
        pid_m = tl.program_id(0)
        i = tl.program_id(1)  # the adapter
        pid_n = tl.program_id(2)
        count = tl.load(count_ptr + i)
        if pid_m * BLOCK_M < count:
            start = tl.load(start_ptr + i)
            rank = tl.load(rank_ptr + i)
            scale = tl.load(scale_ptr + i)
            rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
            live = rm < count
            tok = tl.load(order_ptr + start + rm, mask=live, other=0)  # this block's tokens
            rr = tl.arange(0, BLOCK_R)
            rk = tl.arange(0, BLOCK_K)
            a_base = a_ptr + i * sai
            xa = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
            for k0 in range(0, IN, BLOCK_K):
                kk = k0 + rk
                x = tl.load(
                    x_ptr + tok[:, None] * sxm + kk[None, :] * sxk,
                    mask=live[:, None] & (kk[None, :] < IN),
                    other=0.0,
                )  # (BLOCK_M, BLOCK_K)
                a = tl.load(
                    a_base + rr[None, :] * sar + kk[:, None] * sak,
                    mask=(rr[None, :] < rank) & (kk[:, None] < IN),
                    other=0.0,
                )  # (BLOCK_K, BLOCK_R) = A_iᵀ tile; rows past the rank read as zero
                if UPCAST:
                    x, a = x.to(tl.float32), a.to(tl.float32)
                xa += tl.dot(x, a, input_precision=PRECISION)
            xa = (xa * scale).to(y_ptr.dtype.element_ty)
            b_base = b_ptr + i * sbi
            for nb in range(pid_n, tl.cdiv(OUT, BLOCK_N), tl.num_programs(2)):
                rn = nb * BLOCK_N + tl.arange(0, BLOCK_N)
                b = tl.load(
                    b_base + rn[None, :] * sbn + rr[:, None] * sbr,
                    mask=(rr[:, None] < rank) & (rn[None, :] < OUT),
                    other=0.0,
                )  # (BLOCK_R, BLOCK_N) = B_iᵀ tile
                if UPCAST:
                    acc = tl.dot(xa.to(tl.float32), b.to(tl.float32), input_precision=PRECISION)
                else:
                    acc = tl.dot(xa, b, input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
                y_ptrs = y_ptr + tok[:, None] * sym + rn[None, :] * syn
                mask = live[:, None] & (rn[None, :] < OUT)
                y = tl.load(y_ptrs, mask=mask, other=0.0)
                tl.store(y_ptrs, (y.to(tl.float32) + acc).to(y_ptr.dtype.element_ty), mask=mask)

    return sgmv_kernel


def adapter_table(w: MultiLoRAWeights) -> tuple[Tensor, Tensor]:
    """The adapters' ranks (n,) int32 and scales (n,) fp32 on w's device, for the kernel."""
    ranks = torch.tensor(w.ranks, dtype=torch.int32, device=w.device)
    return ranks, torch.tensor(w.scales, dtype=torch.float32, device=w.device)


def sgmv_add_(
    y: Tensor,
    x: Tensor,
    index: Tensor,
    w: MultiLoRAWeights,
    table: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """y_t += s_i · (x_t A_iᵀ) B_iᵀ for every token t with adapter i = index_t >= 0, in one
    kernel launch; x (T, in), index (T,) int64 in [-1, n), y (T, out). Reads no padding.
    `table` is adapter_table(w), made once by a caller that calls often."""
    T = x.shape[0]
    order, counts, starts = sort_by_adapter(index, w.adapters)
    ranks, scales = adapter_table(w) if table is None else table
    block_r = max(16, next_pow2(w.r_max))
    block_m = 16
    block_n = 64 if block_r >= 128 else 128
    block_k = 32 if x.dtype == torch.float32 else 64
    m_blocks = -(-T // block_m)
    n_blocks = -(-w.out_features // block_n)
    live_blocks = min(m_blocks + w.adapters, m_blocks * w.adapters)  # at most, sizing only
    n_split = max(1, min(n_blocks, target_programs(x.device) // live_blocks))
    upcast = x.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"
    precision = "ieee" if x.dtype == torch.float32 or upcast else "tf32"
    A, B = w.A.detach(), w.B.detach()
    _kernel()[(m_blocks, w.adapters, n_split)](
        x, A, B, y, order, starts, counts, ranks, scales,
        w.in_features, w.out_features,
        x.stride(0), x.stride(1), A.stride(0), A.stride(1), A.stride(2),
        B.stride(0), B.stride(1), B.stride(2), y.stride(0), y.stride(1),
        BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_N=block_n, BLOCK_R=block_r,
        PRECISION=precision, UPCAST=upcast,
    )  # fmt: skip
    return y


def build_triton_sgmv(w: MultiLoRAWeights) -> MultiOp:
    table = adapter_table(w)

    def rows(x: Tensor, index: Tensor) -> Tensor:
        return sgmv_add_(F.linear(x, w.W, w.b), x, index, w, table)  # GEMM by cuBLAS, then ours

    return multi_rows(w, rows)


register(
    MultiImpl(
        "triton_sgmv",
        "base GEMM, then one Triton kernel over the tokens sorted by adapter: shrink and "
        "expand fused per segment, added into y in place",
        build_triton_sgmv,
        devices=frozenset({"cuda"}),
        requires=lambda: triton_missing("triton_sgmv"),
    ),
    MULTI_IMPLS,
)
