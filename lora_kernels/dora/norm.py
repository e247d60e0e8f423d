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


def magnitude_scale(m: Tensor, sq_norms: Tensor) -> Tensor:
    """c = m / ‖V‖ per row, fp32 (out,). A row whose squared norm is not positive (V's row is
    zero) gets c = 0, so that output is the bias alone; the gradients stay finite there."""
    positive = sq_norms > 0
    norms = torch.where(positive, sq_norms, 1.0).sqrt()
    return torch.where(positive, m.float() / norms, 0.0)
