"""The float64 oracle of Conv2d LoRA: its forward and the gradients of x, A and B, as the pair
of convolutions it is, on the CPU (torch's float64 convolution and its closed-form input and
weight gradients, no autograd)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.grad import conv2d_input, conv2d_weight

from lora_kernels.conv.weights import ConvLoRAWeights
from lora_kernels.numerics import Grads, f64


def conv_reference_forward(w: ConvLoRAWeights, x: Tensor) -> Tensor:
    """y = conv(x, W, b) + s · conv1×1(conv(x, A), B) in float64 on the CPU; x (N, in, H, W)
    -> (N, out, H_out, W_out)."""
    w.check_input(x)
    x64 = f64(x)
    b = None if w.b is None else f64(w.b)
    xa = w.convolve(x64, f64(w.A))  # (N, r, H_out, W_out)
    return w.convolve(x64, f64(w.W), b) + w.scale * F.conv2d(xa, f64(w.B))


def conv_reference_grads(w: ConvLoRAWeights, x: Tensor, grad_out: Tensor) -> Grads:
    """Closed-form float64 gradients for the upstream gradient g (N, out, H_out, W_out): with
    xa = conv(x, A) and ga = s · conv1×1ᵀ(g, B), dB = s · Σ g ⊗ xa, dA = conv_weight(x, ga),
    dx = conv_input(g, W) + conv_input(ga, A)."""
    w.check_input(x)
    x64, g = f64(x), f64(grad_out)
    geometry = {"stride": w.stride, "padding": w.padding, "dilation": w.dilation}
    xa = w.convolve(x64, f64(w.A))
    if g.shape != (xa.shape[0], w.out_features, *xa.shape[2:]):
        raise ValueError(f"grad_out must have shape {(xa.shape[0], w.out_features, *xa.shape[2:])}"
                         f", got {tuple(g.shape)}")  # fmt: skip
    B = f64(w.B)[:, :, 0, 0]  # (out, r)
    ga = w.scale * torch.einsum("nohw,or->nrhw", g, B)
    dB = w.scale * torch.einsum("nohw,nrhw->or", g, xa)[:, :, None, None]
    dA = conv2d_weight(x64, list(w.A.shape), ga, **geometry)
    dx = (conv2d_input(list(x.shape), f64(w.W), g, **geometry)
          + conv2d_input(list(x.shape), f64(w.A), ga, **geometry))  # fmt: skip
    return Grads(x=dx, A=dA, B=dB)
