"""Float64 oracle of DoRA on a Conv2d, forward and gradients in closed form (no autograd), on
the dense kernel V = W + s·B A: it shares nothing with the implementations' factored norm."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.grad import conv2d_input, conv2d_weight

from lora_kernels.conv.dora_weights import ConvDoRAWeights
from lora_kernels.numerics import Grads, f64


def _parts(w: ConvDoRAWeights) -> tuple[Tensor, Tensor, Tensor]:
    """(V, n, c) in float64: V = W + s·B A (out, in, kh, kw), n = ‖V‖ per output channel,
    c = m / n (0 where n = 0)."""
    W, A, B = f64(w.W), f64(w.A), f64(w.B)[:, :, 0, 0]
    V = W + w.scale * torch.einsum("or,rikl->oikl", B, A)
    n = torch.linalg.vector_norm(V.flatten(1), dim=1)
    return V, n, torch.where(n > 0, f64(w.m) / torch.where(n > 0, n, 1.0), 0.0)


def _channels(t: Tensor) -> Tensor:
    return t[:, None, None]  # (out,) against (N, out, H, W)


def conv_dora_reference_forward(w: ConvDoRAWeights, x: Tensor) -> Tensor:
    """y = (m / ‖V‖) ⊙ conv(x, V) + b in float64 on the CPU; x (N, in, H, W) ->
    (N, out, H_out, W_out)."""
    w.check_input(x)
    V, _, c = _parts(w)
    y = w.lora.convolve(f64(x), V) * _channels(c)
    return y if w.b is None else y + _channels(f64(w.b))


def conv_dora_reference_grads(w: ConvDoRAWeights, x: Tensor, grad_out: Tensor) -> Grads:
    """Closed-form float64 gradients of sum(y · g) for x, A, B and m. With z = conv(x, V),
    gc = g ⊙ c and dc = Σ g ⊙ z per channel: dx = conv_input(gc, V), dm = dc / n,
    dV = conv_weight(x, gc), plus (exact gradient only) -(dc m / n³) ⊙ V through the norm;
    then dA = s Bᵀ dV and dB = s dV Aᵀ (contracting in, kh, kw). Channels with n = 0 pass no
    gradient to m or the norm."""
    w.check_input(x)
    V, n, c = _parts(w)
    x64, g = f64(x), f64(grad_out)
    if g.shape != w.output_shape(x):
        raise ValueError(f"grad_out must have shape {w.output_shape(x)}, got {tuple(g.shape)}")
    geometry = {"stride": w.stride, "padding": w.padding, "dilation": w.dilation}
    gc = g * _channels(c)
    dc = (g * w.lora.convolve(x64, V)).sum((0, 2, 3))
    safe_n = torch.where(n > 0, n, 1.0)
    dV = conv2d_weight(x64, list(V.shape), gc, **geometry)
    if not w.detach_norm:
        dV += torch.where(n > 0, -dc * f64(w.m) / safe_n**3, 0.0)[:, None, None, None] * V
    A, B = f64(w.A), f64(w.B)[:, :, 0, 0]
    return Grads(x=conv2d_input(list(x.shape), V, gc, **geometry),
                 A=w.scale * torch.einsum("or,oikl->rikl", B, dV),
                 B=w.scale * torch.einsum("oikl,rikl->or", dV, A)[:, :, None, None],
                 m=torch.where(n > 0, dc / safe_n, 0.0))  # fmt: skip
