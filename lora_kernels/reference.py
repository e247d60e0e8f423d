"""Float64 oracle for the LoRA forward and its gradients, in closed form (no autograd)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from lora_kernels.conv.dora_reference import conv_dora_reference_forward, conv_dora_reference_grads
from lora_kernels.conv.dora_weights import ConvDoRAWeights
from lora_kernels.conv.reference import conv_reference_forward, conv_reference_grads
from lora_kernels.conv.weights import ConvLoRAWeights
from lora_kernels.dora.reference import dora_reference_forward, dora_reference_grads
from lora_kernels.dora.weights import DoRAWeights
from lora_kernels.numerics import (  # re-exported: the bench imports them from here
    TOLERANCES,
    Grads,
    f64,
    poisoned_memory,
    rel_error,
    tolerance,
)
from lora_kernels.quant.weights import QLoRAWeights
from lora_kernels.weights import LoRAWeights

Weights = LoRAWeights | DoRAWeights | QLoRAWeights | ConvLoRAWeights | ConvDoRAWeights

__all__ = [
    "TOLERANCES",
    "Grads",
    "f64",
    "forward_error",
    "gradient_errors",
    "poisoned_memory",
    "reference_forward",
    "reference_grads",
    "rel_error",
    "tolerance",
]


def _lora(weights: Weights, x: Tensor) -> LoRAWeights:
    """The LoRA function to check against, x checked: QLoRAWeights on their dequantized base."""
    weights.check_input(x)
    return weights.dense() if isinstance(weights, QLoRAWeights) else weights  # type: ignore[return-value]


def reference_forward(weights: Weights, x: Tensor) -> Tensor:
    """y = x Wᵀ + b + s · (x Aᵀ) Bᵀ in float64 on the CPU; x: (..., in) -> (..., out).
    DoRAWeights get DoRA's oracle (`dora_reference_forward`), Conv2d weights theirs;
    QLoRAWeights LoRA's on their
    dequantized base (the format's error is not the impl's)."""
    if weights.variant == "dora":
        return dora_reference_forward(weights, x)  # type: ignore[arg-type]
    if weights.variant == "conv":
        return conv_reference_forward(weights, x)  # type: ignore[arg-type]
    if weights.variant == "conv_dora":
        return conv_dora_reference_forward(weights, x)  # type: ignore[arg-type]
    weights = _lora(weights, x)
    W, A, B = (f64(t) for t in (weights.W, weights.A, weights.B))
    x64 = f64(x)
    y = x64 @ W.T + weights.scale * ((x64 @ A.T) @ B.T)
    return y if weights.b is None else y + f64(weights.b)


def reference_grads(weights: Weights, x: Tensor, grad_out: Tensor) -> Grads:
    """Closed-form float64 gradients for upstream gradient `grad_out` (..., out).

    With xa = x Aᵀ and g = grad_out: dB = s gᵀ xa, dA = s (g B)ᵀ x, dx = g W + s (g B) A.
    DoRAWeights get DoRA's oracle (`dora_reference_grads`).
    """
    if weights.variant == "dora":
        return dora_reference_grads(weights, x, grad_out)  # type: ignore[arg-type]
    if weights.variant == "conv":
        return conv_reference_grads(weights, x, grad_out)  # type: ignore[arg-type]
    if weights.variant == "conv_dora":
        return conv_dora_reference_grads(weights, x, grad_out)  # type: ignore[arg-type]
    weights = _lora(weights, x)
    W, A, B = (f64(t) for t in (weights.W, weights.A, weights.B))
    s = weights.scale
    x2 = f64(x).reshape(-1, weights.in_features)  # (T, in)
    g = f64(grad_out).reshape(-1, weights.out_features)  # (T, out)
    xa = x2 @ A.T  # (T, r)
    gB = g @ B  # (T, r)
    dx = g @ W + s * (gB @ A)  # (T, in)
    return Grads(x=dx.reshape(x.shape), A=s * (gB.T @ x2), B=s * (g.T @ xa))


def forward_error(op: Callable[[Tensor], Tensor], weights: Weights, x: Tensor) -> float:
    """Relative error of op(x), run on poisoned memory, against the float64 oracle."""
    with poisoned_memory():
        y = op(x)
    if y.shape != weights.output_shape(x) or y.dtype != weights.dtype:
        raise ValueError(
            f"op returned {tuple(y.shape)} {y.dtype}; expected "
            f"{weights.output_shape(x)} {weights.dtype}"
        )
    return rel_error(y, reference_forward(weights, x))


def gradient_errors(
    op: Callable[[Tensor], Tensor],
    weights: Weights,
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
