"""Our implementations of DoRA on a Conv2d (variant "conv_dora"): each computes
y = c ⊙ (conv(x, W) + s · conv1×1(conv(x, A), B)) + b for x (N, in, H, W), with
c = m / ‖W + s·B A‖ per output channel, on ConvDoRAWeights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lora_kernels.conv.dora_weights import ConvDoRAWeights
from lora_kernels.dora.norm import factors, magnitude_scale, row_sq_norms, weight_sq_norms
from lora_kernels.registry import Impl, Op, register


def needs_grad(w: ConvDoRAWeights, x: Tensor) -> bool:
    """True when this call builds a graph: grad mode is on and x or a trainable tensor needs it."""
    return torch.is_grad_enabled() and (
        x.requires_grad or any(t.requires_grad for t in w.trainable().values())
    )


class NormCache:
    """‖W‖² (out,), P = W Aᵀ (out, r) and G = A Aᵀ (r, r) over W's and A's (in·kh·kw) columns,
    fp32, no gradient; recomputed only when W or A has changed in place since."""

    def __init__(self, w: ConvDoRAWeights) -> None:
        self.W, self.A = w.W, w.A
        self.key: tuple[int, int] | None = None
        self.parts: tuple[Tensor, Tensor, Tensor] = ()  # type: ignore[assignment]

    @torch.no_grad()
    def get(self) -> tuple[Tensor, Tensor, Tensor]:
        if (self.W._version, self.A._version) != self.key:
            W, A = self.W.detach().flatten(1), self.A.detach().flatten(1)
            self.key, self.parts = (self.W._version, self.A._version), (
                weight_sq_norms(W), *factors(W, A))  # fmt: skip
        return self.parts


def channel_scale(w: ConvDoRAWeights, cache: NormCache, grad: bool) -> Tensor:
    """c = m / ‖W + s·B A‖ per output channel (out,), in W's dtype, from the cache. The norm
    joins the graph only for the exact gradient (P and G then computed afresh)."""
    w2, P, G = cache.get()
    B = w.B.flatten(1)
    if grad and not w.detach_norm:
        sq = row_sq_norms(w2, *factors(w.W.detach().flatten(1), w.A.flatten(1)), B, w.scale)
    else:
        sq = row_sq_norms(w2, P, G, B.detach(), w.scale)
    return magnitude_scale(w.m, sq).to(w.dtype)


def build_dora(w: ConvDoRAWeights) -> Op:
    """The base convolution without its bias, B's output added into it in place, then each
    channel scaled by c (in place unless a graph is being built) and the bias added."""
    cache, conv = NormCache(w), w.lora.convolve

    def op(x: Tensor) -> Tensor:
        grad = needs_grad(w, x)
        c = channel_scale(w, cache, grad)[:, None, None]
        z = conv(x, w.W).add_(F.conv2d(conv(x, w.A), w.B), alpha=w.scale)
        b = None if w.b is None else w.b[:, None, None]
        if grad:  # the product's gradient needs z as it was
            return z * c if b is None else torch.addcmul(b, z, c)
        z.mul_(c)
        return z if b is None else z.add_(b)

    return op


def build_dora_merged(w: ConvDoRAWeights) -> Op:
    """(m / ‖V‖) ⊙ V folded into one kernel at build (a copy of W): one convolution a call."""
    kernel, conv = w.merged_weight(), w.lora.convolve

    def op(x: Tensor) -> Tensor:
        return conv(x, kernel, w.b)

    return op


for impl in (
    Impl("conv_dora", "the channel norm factored (‖W‖² once, W Aᵀ while A is unchanged, A Aᵀ); "
         "the base conv, B's 1×1 added in place, one channel scaling", build_dora,
         variant="conv_dora"),
    Impl("conv_dora_merged", "(m / ‖V‖) ⊙ V folded into one kernel at build (a W copy): one "
         "conv", build_dora_merged, modes=frozenset({"infer"}), variant="conv_dora"),
):  # fmt: skip
    register(impl)
