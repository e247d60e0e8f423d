"""Float64 oracles of the fused modules: forward, and the gradients of x and of every A and B
for given upstream gradients, by autograd over plain float64 ops on the CPU (independent of
the hand-written backwards they check)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lora_kernels.fused.weights import MLPWeights, ModuleWeights, QKVWeights
from lora_kernels.numerics import f64
from lora_kernels.weights import LoRAWeights


def _lora64(w: LoRAWeights, x: Tensor, A: Tensor, B: Tensor) -> Tensor:
    b = None if w.b is None else f64(w.b)
    return F.linear(x, f64(w.W), b) + w.scale * F.linear(F.linear(x, A), B)


def module_reference(
    w: ModuleWeights, x: Tensor, grads: tuple[Tensor, ...] | None = None
) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
    """(outputs, gradients): QKV gives (q, k, v), an MLP (y,); with `grads` (one per output)
    the gradients of x and of every A and B by name ("x", "A_q", "B_q", ...), else {}."""
    w.check_input(x)
    x64 = f64(x).requires_grad_(grads is not None)
    params = {n: f64(t).requires_grad_(grads is not None) for n, t in w.trainable().items()}
    with torch.enable_grad():
        out: tuple[Tensor, ...]
        if isinstance(w, QKVWeights):
            out = tuple(_lora64(p, x64, params[f"A_{n}"], params[f"B_{n}"])
                        for n, p in w.projections().items())  # fmt: skip
        elif isinstance(w, MLPWeights):
            g = _lora64(w.gate, x64, params["A_gate"], params["B_gate"])
            u = _lora64(w.up, x64, params["A_up"], params["B_up"])
            out = (_lora64(w.down, F.silu(g) * u, params["A_down"], params["B_down"]),)
        else:
            raise TypeError(f"no oracle for {type(w).__name__}")
        if grads is None:
            return tuple(o.detach() for o in out), {}
        torch.autograd.backward(out, [f64(g) for g in grads])
    found = {"x": x64.grad, **{n: p.grad for n, p in params.items()}}
    return tuple(o.detach() for o in out), {n: t for n, t in found.items() if t is not None}
