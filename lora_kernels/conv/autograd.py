"""conv_autograd: Conv2d LoRA as one autograd.Function with a lean backward. The forward keeps
x and xa = conv(x, A) and nothing output-sized; the backward takes dx in one transposed
convolution against the stacked kernel [W; A] (out + r channels) rather than two and a sum."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.grad import conv2d_input, conv2d_weight

from lora_kernels.conv.weights import ConvLoRAWeights
from lora_kernels.registry import Impl, Op, register


class _ConvLoRA(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, A: Tensor, B: Tensor, w: ConvLoRAWeights) -> Tensor:
        xa = w.convolve(x, A)  # (N, r, H_out, W_out)
        y = w.convolve(x, w.W, w.b).add_(F.conv2d(xa, B), alpha=w.scale)
        ctx.save_for_backward(x, xa, A, B)
        ctx.w = w
        return y

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, xa, A, B = ctx.saved_tensors
        w = ctx.w
        geometry = {"stride": w.stride, "padding": w.padding, "dilation": w.dilation}
        g = g.contiguous()
        ga = w.scale * torch.einsum("nohw,or->nrhw", g, B[:, :, 0, 0])  # (N, r, H_out, W_out)
        dx = dA = dB = None
        if ctx.needs_input_grad[0]:
            kernel = torch.cat([w.W.detach(), A])  # (out + r, in, kh, kw)
            dx = conv2d_input(list(x.shape), kernel, torch.cat([g, ga], dim=1), **geometry)
        if ctx.needs_input_grad[1]:
            dA = conv2d_weight(x, list(A.shape), ga, **geometry)
        if ctx.needs_input_grad[2]:
            dB = w.scale * torch.einsum("nohw,nrhw->or", g, xa)[:, :, None, None]
        return dx, dA, dB, None


def build_autograd(w: ConvLoRAWeights) -> Op:
    def op(x: Tensor) -> Tensor:
        return _ConvLoRA.apply(x, w.A, w.B, w)

    return op


register(Impl("conv_autograd", "one autograd.Function: keeps x and x's A conv only; dx in one "
              "transposed conv against [W; A]", build_autograd, variant="conv"))  # fmt: skip
