"""Float64 oracle for the LoRA forward and its gradients, in closed form (no autograd)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lora_kernels.weights import LoRAWeights

if TYPE_CHECKING:
    from lora_kernels.dora.weights import DoRAWeights

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
    """‖y − ref‖ / ‖ref‖ in float64; NaN or inf in y gives inf, never a pass. An empty pair
    (T = 0) gives 0; a zero reference gives 0 only for an exactly zero y."""
    if y.shape != ref.shape:
        raise ValueError(f"shape {tuple(y.shape)} does not match the reference {tuple(ref.shape)}")
    y64 = y.detach().to("cpu", torch.float64)
    ref64 = ref.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(y64).all()):
        return float("inf")
    diff, norm = torch.linalg.vector_norm(y64 - ref64), torch.linalg.vector_norm(ref64)
    if norm == 0:
        return 0.0 if diff == 0 else float("inf")
    return float(diff / norm)


def f64(t: Tensor) -> Tensor:
    """t detached, as float64 on the CPU."""
    return t.detach().to("cpu", torch.float64)


def reference_forward(weights: LoRAWeights | DoRAWeights, x: Tensor) -> Tensor:
    """y = x Wᵀ + b + s · (x Aᵀ) Bᵀ in float64 on the CPU; x: (..., in) -> (..., out).
    DoRAWeights get DoRA's oracle (`dora_reference_forward`)."""
    if weights.variant == "dora":
        from lora_kernels.dora.reference import dora_reference_forward

        return dora_reference_forward(weights, x)  # type: ignore[arg-type]
    weights.check_input(x)
    W, A, B = (f64(t) for t in (weights.W, weights.A, weights.B))
    x64 = f64(x)
    y = x64 @ W.T + weights.scale * ((x64 @ A.T) @ B.T)
    return y if weights.b is None else y + f64(weights.b)


@dataclass(frozen=True)
class Grads:
    """Gradients of sum(y · grad_out) with respect to x (..., in), A (r, in), B (out, r) and,
    for DoRA, m (out,)."""

    x: Tensor
    A: Tensor
    B: Tensor
    m: Tensor | None = None


def reference_grads(weights: LoRAWeights | DoRAWeights, x: Tensor, grad_out: Tensor) -> Grads:
    """Closed-form float64 gradients for upstream gradient `grad_out` (..., out).

    With xa = x Aᵀ and g = grad_out: dB = s gᵀ xa, dA = s (g B)ᵀ x, dx = g W + s (g B) A.
    DoRAWeights get DoRA's oracle (`dora_reference_grads`).
    """
    if weights.variant == "dora":
        from lora_kernels.dora.reference import dora_reference_grads

        return dora_reference_grads(weights, x, grad_out)  # type: ignore[arg-type]
    weights.check_input(x)
    W, A, B = (f64(t) for t in (weights.W, weights.A, weights.B))
    s = weights.scale
    x2 = f64(x).reshape(-1, weights.in_features)  # (T, in)
    g = f64(grad_out).reshape(-1, weights.out_features)  # (T, out)
    xa = x2 @ A.T  # (T, r)
    gB = g @ B  # (T, r)
    dx = g @ W + s * (gB @ A)  # (T, in)
    return Grads(x=dx.reshape(x.shape), A=s * (gB.T @ x2), B=s * (g.T @ xa))


@contextmanager
def poisoned_memory() -> Iterator[None]:
    """Fill fresh memory from torch.empty & co. with NaN, so an unwritten output shows.

    Uses torch's deterministic mode (warn-only) with fill_uninitialized_memory; restores both.
    """
    was_on = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    was_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        with warnings.catch_warnings():
            # warn-only mode reports ops without a deterministic kernel; we want the fill only
            warnings.filterwarnings("ignore", message=".*determinis", category=UserWarning)
            yield
    finally:
        torch.use_deterministic_algorithms(was_on, warn_only=was_warn)
        torch.utils.deterministic.fill_uninitialized_memory = was_fill


def forward_error(
    op: Callable[[Tensor], Tensor], weights: LoRAWeights | DoRAWeights, x: Tensor
) -> float:
    """Relative error of op(x), run on poisoned memory, against the float64 oracle."""
    with poisoned_memory():
        y = op(x)
    if y.shape != (*x.shape[:-1], weights.out_features) or y.dtype != weights.dtype:
        raise ValueError(
            f"op returned {tuple(y.shape)} {y.dtype}; expected "
            f"{(*x.shape[:-1], weights.out_features)} {weights.dtype}"
        )
    return rel_error(y, reference_forward(weights, x))


def gradient_errors(
    op: Callable[[Tensor], Tensor],
    weights: LoRAWeights | DoRAWeights,
    x: Tensor,
    grad_out: Tensor,
) -> dict[str, float]:
    """Relative errors of dx and of each trainable tensor's gradient (dA, dB; DoRA adds dm)
    from op(x).backward(grad_out) against the oracle.

    op must be built on `weights`; x and the trainable tensors must require grad. Their .grad
    is reset first. A missing gradient counts as inf.
    """
    tensors = {"x": x, **weights.trainable()}
    for name, t in tensors.items():
        if not t.requires_grad:
            raise ValueError(f"{name} must require grad to check its gradient")
        t.grad = None
    with poisoned_memory():
        op(x).backward(grad_out)
    ref = reference_grads(weights, x, grad_out)
    return {
        k: float("inf") if t.grad is None else rel_error(t.grad, getattr(ref, k))
        for k, t in tensors.items()
    }
