"""conv_autograd: Conv2d LoRA as one autograd.Function. The forward adds B's output into the
base's in place and keeps x and xa = conv(x, A), nothing output-sized; the backward takes
B's two gradients (for xa, and dB) in one convolution backward, dA and A's share of dx in a
second, the base's share of dx in a third, with no copy of W (59 MB at 1280 channels)."""

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
        # B's 1×1: x's A convolution's gradient (ga, before s) and dB in one backward
        ga, dB = _conv_backward(g, xa, B, POINT, need_x or need_a, need_b)
        if dB is not None:
            dB.mul_(w.scale)
        dx = dA = None
        if ga is not None:
            geometry = (w.stride, w.padding, w.dilation)
            dx, dA = _conv_backward(ga.mul_(w.scale), x, A, geometry, need_x, need_a)
            if dx is not None:  # the base's share, added to A's
                dx.add_(_conv_backward(g, x, w.W.detach(), geometry, True, False)[0])
        return dx, dA, dB, None


Geometry = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # stride, padding, dilation
POINT: Geometry = ((1, 1), (0, 0), (1, 1))  # a 1×1 convolution's


def _conv_backward(
    g: Tensor, x: Tensor, kernel: Tensor, geometry: Geometry, need_x: bool, need_kernel: bool
) -> tuple[Any, Any]:
    """(dx, dkernel) of conv(x, kernel) at `geometry` for the upstream gradient g, each only
    where asked (None where not): one convolution backward for both."""
    stride, padding, dilation = geometry
    dx, dk, _ = torch.ops.aten.convolution_backward(
        g, x, kernel, None, list(stride), list(padding), list(dilation), False, [0, 0], 1,
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
