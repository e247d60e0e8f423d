"""Eager DoRA forwards: PEFT's dense norm, the factored norm, the norm cached at build, and the
merged weight (LoRA's `merged` builder on DoRAWeights). Each builder closes over the weights
and returns op(x): (..., in) -> (..., out); y = c ⊙ (x Wᵀ + s·(x Aᵀ) Bᵀ) + b with
c = m / ‖W + s·B A‖ per row."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lora_kernels.dora.norm import factors, magnitude_scale, row_sq_norms, weight_sq_norms
from lora_kernels.dora.weights import DoRAWeights
from lora_kernels.impls.merged import build_merged
from lora_kernels.registry import Impl, Op, register, rows_op


def needs_grad(w: DoRAWeights, x: Tensor) -> bool:
    """True when this call builds a graph: grad mode is on and x or a trainable tensor needs it."""
    return torch.is_grad_enabled() and (
        x.requires_grad or any(t.requires_grad for t in w.trainable().values())
    )


def lora_rows(x2: Tensor, w: DoRAWeights) -> Tensor:
    """x Wᵀ + s·(x Aᵀ) Bᵀ for x2 (T, in), no bias: the base GEMM, then the expand added into
    its output in place (addmm's forward); (T, out)."""
    z = F.linear(x2, w.W)
    return z.addmm_(F.linear(x2, w.A), w.B.t(), alpha=w.scale)


def scale_rows(z: Tensor, c: Tensor, b: Tensor | None, grad: bool) -> Tensor:
    """c ⊙ z + b for z (T, out) and c (out,) of z's dtype; in place on z unless a graph is
    being built (the product's gradient needs z as it was)."""
    if grad:
        return z * c if b is None else torch.addcmul(b, z, c)
    z.mul_(c)
    return z if b is None else z.add_(b)


class FactorCache:
    """‖W‖² (out,), P = W Aᵀ (out, r) and G = A Aᵀ (r, r) of the weights' W and A, fp32, no
    gradient; recomputed only when W or A has changed in place since (an optimizer step bumps
    a tensor's version). ‖W‖² reads all of W: W is frozen, so it is computed once."""

    def __init__(self, w: DoRAWeights) -> None:
        self.W, self.A = w.W, w.A
        self._refresh_w2()
        self._refresh_factors()

    def _refresh_w2(self) -> None:
        self.w2_version, self.w2 = self.W._version, weight_sq_norms(self.W)

    @torch.no_grad()
    def _refresh_factors(self) -> None:
        self.key, self.PG = (self.W._version, self.A._version), factors(self.W, self.A)

    def get(self) -> tuple[Tensor, Tensor, Tensor]:
        """(‖W‖², P, G), each as of W's and A's current values."""
        if self.W._version != self.w2_version:
            self._refresh_w2()
        if (self.W._version, self.A._version) != self.key:
            self._refresh_factors()
        return self.w2, *self.PG


def build_dora_dense(w: DoRAWeights) -> Op:
    def rows(x2: Tensor) -> Tensor:
        grad = needs_grad(w, x2)
        with torch.set_grad_enabled(grad and not w.detach_norm):
            V = torch.addmm(w.W, w.B, w.A, alpha=w.scale)  # (out, in), every call
            sq = torch.linalg.vector_norm(V, dim=1, dtype=torch.float32).square()
        c = magnitude_scale(w.m, sq).to(x2.dtype)
        z = F.linear(x2, w.W) + w.scale * F.linear(F.linear(x2, w.A), w.B)
        return scale_rows(z, c, w.b, grad)

    return rows_op(w, rows)


def factored_scale(w: DoRAWeights, cache: FactorCache, grad: bool) -> Tensor:
    """c = m / ‖W + s·B A‖ per row (out,), in W's dtype, from the cache's ‖W‖², P and G. The
    norm joins the graph only for the exact gradient (P and G then computed afresh)."""
    w2, P, G = cache.get()
    if grad and not w.detach_norm:
        sq = row_sq_norms(w2, *factors(w.W, w.A), w.B, w.scale)
    else:
        sq = row_sq_norms(w2, P, G, w.B.detach(), w.scale)
    return magnitude_scale(w.m, sq).to(w.dtype)


def build_dora_factored(w: DoRAWeights) -> Op:
    cache = FactorCache(w)

    def rows(x2: Tensor) -> Tensor:
        grad = needs_grad(w, x2)
        return scale_rows(lora_rows(x2, w), factored_scale(w, cache, grad), w.b, grad)

    return rows_op(w, rows)


def dropout_forward(x: Tensor, xd: Tensor, w: DoRAWeights, cache: FactorCache) -> Tensor:
    """PEFT's DoRA with active dropout, x (..., in) and xd = dropout(x): the base layer sees x,
    the adapter and the rescaled base term see xd: x Wᵀ + b + (c - 1) ⊙ (xd Wᵀ) + c ⊙ s·(xd Aᵀ) Bᵀ.
    Equal to the DoRA forward when xd = x. `cache` holds w's factors across calls."""
    c = factored_scale(w, cache, needs_grad(w, x))
    base_d = F.linear(xd, w.W)
    lora_d = w.scale * F.linear(F.linear(xd, w.A), w.B)
    return F.linear(x, w.W, w.b) + (c - 1) * base_d + c * lora_d


def build_dora_cached(w: DoRAWeights) -> Op:
    c = w.magnitude_scale().to(w.dtype)  # (out,), once
    b = None if w.b is None else w.b.detach()

    def rows(x2: Tensor) -> Tensor:
        return scale_rows(lora_rows(x2, w), c, b, grad=False)

    return rows_op(w, rows)


INFER = frozenset({"infer"})
register(
    Impl(
        "dora_dense",
        "PEFT's way: forms W + s·B A (out×in) on every call for its row norm",
        build_dora_dense,
        variant="dora",
    )
)
register(
    Impl(
        "dora_factored",
        "row norm from ‖W‖² (once), W Aᵀ (kept while A is unchanged) and A Aᵀ; addmm forward",
        build_dora_factored,
        variant="dora",
    )
)
register(
    Impl(
        "dora_cached",
        "m / ‖W + s·B A‖ computed once at build, then addmm's forward and one row scaling",
        build_dora_cached,
        modes=INFER,
        variant="dora",
    )
)
register(
    Impl(
        "dora_merged",
        "(m / ‖V‖) ⊙ (W + s·B A) merged once in fp32 at build, then one GEMM",
        build_merged,  # the same builder as LoRA's merged: each weights class merges its own
        modes=INFER,
        variant="dora",
    )
)
