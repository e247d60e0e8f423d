"""Float64 oracle for the DoRA forward and its gradients, in closed form (no autograd), on the
dense V = W + s·B A: it shares nothing with the implementations' factored norm."""

from __future__ import annotations

import torch
from torch import Tensor

from lora_kernels.dora.weights import DoRAWeights
from lora_kernels.numerics import Grads, f64


def _parts(w: DoRAWeights) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(V, n, c, m) in float64: V = W + s·B A (out, in), n = ‖V‖ per row, c = m / n (0 where
    n = 0), m."""
    W, A, B, m = (f64(t) for t in (w.W, w.A, w.B, w.m))
    V = W + w.scale * (B @ A)
    n = torch.linalg.vector_norm(V, dim=1)
    c = torch.where(n > 0, m / torch.where(n > 0, n, 1.0), 0.0)
    return V, n, c, m


def dora_reference_forward(w: DoRAWeights, x: Tensor) -> Tensor:
    """y = (m / ‖V‖) ⊙ (x Vᵀ) + b in float64 on the CPU; x: (..., in) -> (..., out)."""
    w.check_input(x)
    V, _, c, _ = _parts(w)
    y = (f64(x) @ V.T) * c
    return y if w.b is None else y + f64(w.b)


def dora_reference_grads(w: DoRAWeights, x: Tensor, grad_out: Tensor) -> Grads:
    """Closed-form float64 gradients of sum(y · grad_out) for x, A, B and m.

    With z = x Vᵀ, g = grad_out and dc = Σ_t g ⊙ z: dx = (g ⊙ c) V, dm = dc / n, and
    dV = (g ⊙ c)ᵀ x, plus (exact gradient only) -(dc m / n³) ⊙ V through the norm; then
    dA = s Bᵀ dV and dB = s dV Aᵀ. Rows with n = 0 pass no gradient to m or the norm.
    """
    w.check_input(x)
    V, n, c, m = _parts(w)
    A, B = f64(w.A), f64(w.B)
    x2 = f64(x).reshape(-1, w.in_features)  # (T, in)
    g = f64(grad_out).reshape(-1, w.out_features)  # (T, out)
    gc = g * c  # (T, out)
    dc = (g * (x2 @ V.T)).sum(0)  # (out,)
    safe_n = torch.where(n > 0, n, 1.0)
    dm = torch.where(n > 0, dc / safe_n, 0.0)
    dV = gc.T @ x2  # (out, in)
    if not w.detach_norm:
        dV += torch.where(n > 0, -dc * m / safe_n**3, 0.0)[:, None] * V
    return Grads(x=(gc @ V).reshape(x.shape), A=w.scale * (B.T @ dV), B=w.scale * (dV @ A.T), m=dm)
