"""DoRA's row norm ‖W_i + s·B_i A‖ without the out×in matrix, and the factor m / ‖·‖.

With W frozen, ‖W_i + s·B_i A‖² = ‖W_i‖² + 2s·B_i·(A W_iᵀ) + s²·B_i (A Aᵀ) B_iᵀ: ‖W‖² is
computed once, P = W Aᵀ is (out, r) and G = A Aᵀ is (r, r). Every result here is fp32, whatever
the weights' dtype, so half-precision weights lose nothing to the cancellation in the sum.
"""

from __future__ import annotations

import torch
from torch import Tensor


def weight_sq_norms(W: Tensor) -> Tensor:
    """‖W_i‖² per row, fp32; W (out, in) -> (out,). Reduces in fp32 without an fp32 copy of W."""
    return torch.linalg.vector_norm(W.detach(), dim=1, dtype=torch.float32).square()


def factors(W: Tensor, A: Tensor) -> tuple[Tensor, Tensor]:
    """(P, G) = (W Aᵀ (out, r), A Aᵀ (r, r)), fp32; differentiable in A."""
    P = (W @ A.t()).float()
    A32 = A.float()
    return P, A32 @ A32.t()


def row_sq_norms(w2: Tensor, P: Tensor, G: Tensor, B: Tensor, scale: float) -> Tensor:
    """‖W_i + s·B_i A‖² per row (out,), fp32, from ‖W‖² (out,), P = W Aᵀ and G = A Aᵀ."""
    B32 = B.float()
    cross = (B32 * P).sum(1)  # B_i · (A W_iᵀ)
    inner = ((B32 @ G) * B32).sum(1)  # B_i (A Aᵀ) B_iᵀ
    return w2 + (2 * scale) * cross + (scale * scale) * inner


def sq_norms(W: Tensor, A: Tensor, B: Tensor, scale: float) -> Tensor:
    """‖W_i + s·B_i A‖² per row (out,), fp32, from scratch: ‖W‖², P and G computed here."""
    return row_sq_norms(weight_sq_norms(W), *factors(W, A), B, scale)


def safe_norms(sq: Tensor) -> tuple[Tensor, Tensor]:
    """(positive, n): which rows have a squared norm > 0, and their norms, with 1 in place of
    the others (so that dividing by n and differentiating stay finite)."""
    positive = sq > 0
    return positive, torch.where(positive, sq, 1.0).sqrt()


def magnitude_scale(m: Tensor, sq: Tensor) -> Tensor:
    """c = m / ‖V‖ per row, fp32 (out,), from the squared norms. A row whose squared norm is
    not positive (V's row is zero) gets c = 0, so that output is the bias alone; the gradients
    stay finite there."""
    positive, n = safe_norms(sq)
    return torch.where(positive, m.float() / n, 0.0)
