"""Our Conv2d LoRA implementations, in the one registry (variant "conv"): each computes
y = conv(x, W, b) + s · conv1×1(conv(x, A), B) for x (N, in, H, W) on ConvLoRAWeights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lora_kernels.conv.weights import ConvLoRAWeights
from lora_kernels.registry import Impl, Op, register


def build_two_step(w: ConvLoRAWeights) -> Op:
    """PEFT's form: the base convolution, A's and B's, and an out-of-place add."""

    def op(x: Tensor) -> Tensor:
        return w.convolve(x, w.W, w.b) + w.scale * F.conv2d(w.convolve(x, w.A), w.B)

    return op


def build_add(w: ConvLoRAWeights) -> Op:
    """The base convolution, then B's output added into it in place (y written once more, no
    output-sized sum). The base's output is no input of any backward, so autograd allows it."""

    def op(x: Tensor) -> Tensor:
        y = w.convolve(x, w.W, w.b)
        return y.add_(F.conv2d(w.convolve(x, w.A), w.B), alpha=w.scale)

    return op


def build_merged(w: ConvLoRAWeights) -> Op:
    """W + s · B A folded into one kernel at build (a copy of W): one convolution a call."""
    kernel = w.merged_weight()

    def op(x: Tensor) -> Tensor:
        return w.convolve(x, kernel, w.b)

    return op


def build_stacked(w: ConvLoRAWeights) -> Op:
    """One convolution against [W; A] (out + r output channels, stacked at build: a copy of W
    and A), then B's 1×1 on the rank slice added into the base slice in place; returns that
    slice, a view of the stacked output."""
    out = w.out_features
    kernel = torch.cat([w.W.detach(), w.A.detach()])
    bias = None if w.b is None else torch.cat([w.b.detach(), w.b.new_zeros(w.rank)])

    def op(x: Tensor) -> Tensor:
        both = w.convolve(x, kernel, bias)  # (N, out + r, H_out, W_out)
        y = both[:, :out]  # a view: not contiguous when N > 1 (the bench charges the copy)
        return y.add_(F.conv2d(both[:, out:], w.B), alpha=w.scale)

    return op


for impl in (
    Impl("conv_two_step", "PEFT's form: the base conv, A's k×k conv, B's 1×1, an "
         "out-of-place add", build_two_step, variant="conv"),
    Impl("conv_add", "the base conv, then B's 1×1 output added into it in place",
         build_add, variant="conv"),
    Impl("conv_merged", "W + s·B A folded into one kernel at build (a W copy): one conv",
         build_merged, modes=frozenset({"infer"}), variant="conv"),
    Impl("conv_stacked", "one conv against [W; A] (stacked at build: a copy), then B's 1×1 on the "
         "rank slice added in place", build_stacked, modes=frozenset({"infer"}),
         variant="conv"),
):  # fmt: skip
    register(impl)
