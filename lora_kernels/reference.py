"""Float64 oracle for the LoRA forward and its gradients, in closed form (no autograd)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lora_kernels.weights import LoRAWeights

# Max ‖y − y_ref‖ / ‖y_ref‖ against the float64 oracle, per dtype (DESIGN.md, section 3).
TOLERANCES: dict[str, float] = {"fp32": 1e-5, "tf32": 1e-3, "fp16": 5e-3, "bf16": 2e-2}


def tolerance(dtype: torch.dtype, device: str | torch.device) -> float:
    """Relative-error tolerance for `dtype` on `device`; fp32 on CUDA with TF32 on gets 1e-3."""
    if dtype == torch.float16:
        return TOLERANCES["fp16"]
    if dtype == torch.bfloat16:
        return TOLERANCES["bf16"]
    if torch.device(device).type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return TOLERANCES["tf32"]
    return TOLERANCES["fp32"]


def rel_error(y: Tensor, ref: Tensor) -> float:
    """‖y − ref‖ / ‖ref‖ in float64; NaN or inf in y gives inf, never a pass."""
    if y.shape != ref.shape:
        raise ValueError(f"shape {tuple(y.shape)} does not match the reference {tuple(ref.shape)}")
    y64 = y.detach().to("cpu", torch.float64)
    ref64 = ref.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(y64).all()):
        return float("inf")
    return float(torch.linalg.vector_norm(y64 - ref64) / torch.linalg.vector_norm(ref64))


def _f64(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().to("cpu", torch.float64)


def reference_forward(weights: LoRAWeights, x: Tensor) -> Tensor:
    """y = x Wᵀ + b + s · (x Aᵀ) Bᵀ in float64 on the CPU; x: (..., in) -> (..., out)."""
    weights.check_input(x)
    W, b, A, B = (_f64(t) for t in (weights.W, weights.b, weights.A, weights.B))
    x64 = _f64(x)
    y = x64 @ W.T + weights.scale * ((x64 @ A.T) @ B.T)
    return y if b is None else y + b


@dataclass(frozen=True)
class Grads:
    """Gradients of sum(y · grad_out) with respect to x (..., in), A (r, in) and B (out, r)."""

    x: Tensor
    A: Tensor
    B: Tensor


def reference_grads(weights: LoRAWeights, x: Tensor, grad_out: Tensor) -> Grads:
    """Closed-form float64 gradients for upstream gradient `grad_out` (..., out).

    With xa = x Aᵀ and g = grad_out: dB = s gᵀ xa, dA = s (g B)ᵀ x, dx = g W + s (g B) A.
    """
    weights.check_input(x)
    W, A, B = (_f64(t) for t in (weights.W, weights.A, weights.B))
    s = weights.scale
    x2 = _f64(x).reshape(-1, weights.in_features)  # (T, in)
    g = _f64(grad_out).reshape(-1, weights.out_features)  # (T, out)
    xa = x2 @ A.T  # (T, r)
    gB = g @ B  # (T, r)
    dx = g @ W + s * (gB @ A)  # (T, in)
    return Grads(x=dx.reshape(x.shape), A=s * (gB.T @ x2), B=s * (g.T @ xa))
