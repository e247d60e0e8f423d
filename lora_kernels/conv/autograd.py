"""conv_autograd: Conv2d LoRA as one autograd.Function. The forward adds B's output into the
base's in place and keeps x and xa = conv(x, A), nothing output-sized; the backward takes dA
and A's share of dx in one convolution backward, the base's share in another, and dB as one
contraction, with no copy of W (which, at 1280 channels, is 59 MB)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

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
        need_x, need_a, need_b = ctx.needs_input_grad[:3]
        ga = w.scale * torch.einsum("nohw,or->nrhw", g, B[:, :, 0, 0])  # (N, r, H_out, W_out)
        dx = dA = dB = None
        if need_x or need_a:
            dx, dA = _conv_backward(ga, x, A, w, need_x, need_a)
        if dx is not None:  # the base's share, added to A's
            dx.add_(_conv_backward(g, x, w.W.detach(), w, True, False)[0])
        if need_b:
            dB = w.scale * torch.einsum("nohw,nrhw->or", g, xa)[:, :, None, None]
        return dx, dA, dB, None


def _conv_backward(
    g: Tensor, x: Tensor, kernel: Tensor, w: ConvLoRAWeights, need_x: bool, need_kernel: bool
) -> tuple[Any, Any]:
    """(dx, dkernel) of conv(x, kernel) at w's geometry for the upstream gradient g, each only
    where asked (None where not): one convolution backward for both."""
    dx, dk, _ = torch.ops.aten.convolution_backward(
        g, x, kernel, None, list(w.stride), list(w.padding), list(w.dilation), False, [0, 0], 1,
        [need_x, need_kernel, False],
    )  # fmt: skip
    return dx, dk


def build_autograd(w: ConvLoRAWeights) -> Op:
    def op(x: Tensor) -> Tensor:
        return _ConvLoRA.apply(x, w.A, w.B, w)

    return op


register(Impl("conv_autograd", "one autograd.Function: an in-place add; keeps x and x's A conv "
              "only; dA with A's share of dx in one conv backward", build_autograd,
              variant="conv"))  # fmt: skip
