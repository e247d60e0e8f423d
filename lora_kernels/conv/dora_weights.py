"""ConvDoRAWeights: a Conv2d LoRA layer's tensors plus DoRA's magnitude m, one per output
channel, as PEFT defines DoRA on a convolution."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from lora_kernels.conv.weights import ConvLoRAWeights, Pair
from lora_kernels.dora.norm import magnitude_scale, sq_norms
from lora_kernels.dora.weights import MagnitudeTensors
from lora_kernels.weights import all_finite


@dataclass(frozen=True)
class ConvDoRAWeights(MagnitudeTensors):
    """W (out, in, kh, kw), b (out,) or None, A (r, in, kh, kw), B (out, r, 1, 1), the scale s,
    the magnitude m (out,), and the base convolution's stride, padding and dilation.

    With V = W + s · B A (a kernel), y = (m / ‖V‖) ⊙ conv(x, V) + b, the norm taken per output
    channel over (in, kh, kw), PEFT's definition (its magnitude is stored as (1, out, 1, 1)).
    A zero channel of V gives that output the bias alone. detach_norm=True treats ‖V‖ as a
    constant in backward, as PEFT does; False gives the exact gradient. A, B and m train."""

    variant: ClassVar[str] = "conv_dora"
    W: Tensor
    b: Tensor | None
    A: Tensor
    B: Tensor
    scale: float
    m: Tensor
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)
    detach_norm: bool = True

    def __post_init__(self) -> None:
        conv = ConvLoRAWeights(self.W, self.b, self.A, self.B, self.scale, self.stride,
                               self.padding, self.dilation)  # everything but m  # fmt: skip
        for name in ("stride", "padding", "dilation"):  # as pairs
            object.__setattr__(self, name, getattr(conv, name))
        object.__setattr__(self, "_conv", conv)  # `lora`, built and checked once
        self._check_magnitude()

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    @property
    def kernel_size(self) -> Pair:
        return self.lora.kernel_size

    @property
    def lora(self) -> ConvLoRAWeights:
        """The same tensors without m: the Conv2d LoRA layer this one decomposes (made and
        checked once, in __post_init__: convolve and the frozen side call it per step)."""
        conv: ConvLoRAWeights = self.__dict__["_conv"]
        return conv

    def convolve(self, x: Tensor, kernel: Tensor, bias: Tensor | None = None) -> Tensor:
        """x convolved with `kernel` at the base convolution's stride, padding and dilation."""
        return self.lora.convolve(x, kernel, bias)

    def check_input(self, x: Tensor) -> None:
        """Raise unless x is (N, in, H, W) of the weights' dtype and device (ConvLoRAWeights')."""
        self.lora.check_input(x)

    def output_shape(self, x: Tensor) -> tuple[int, ...]:
        """(N, out, H_out, W_out) for x (N, in, H, W)."""
        return self.lora.output_shape(x)

    def magnitude_scale(self) -> Tensor:
        """m / ‖W + s·B A‖ per output channel (out,), fp32, no gradient; formed without the
        merged kernel (the norm factored as for a linear layer over in·kh·kw columns)."""
        with torch.no_grad():
            sq = sq_norms(self.W.flatten(1), self.A.flatten(1), self.B.flatten(1), self.scale)
            return magnitude_scale(self.m, sq)

    def merged_weight(self) -> Tensor:
        """(m / ‖V‖) ⊙ V with V = W + s·B A, a kernel (out, in, kh, kw) computed in fp32 and
        cast to W's dtype; ValueError when it is not finite."""
        with torch.no_grad():
            c = self.magnitude_scale()
            merged = (self.W.float() + self.lora.delta()).mul_(c[:, None, None, None])
            merged = merged.to(self.W.dtype)
            if not all_finite(merged):
                raise ValueError(f"merging gives a non-finite kernel (overflow in {self.W.dtype})"
                                 "; (m / ‖V‖) ⊙ V must be representable")  # fmt: skip
        return merged

    @classmethod
    def from_lora(
        cls, lora: ConvLoRAWeights, m: Tensor | None = None, *, detach_norm: bool = True
    ) -> ConvDoRAWeights:
        """DoRA on a Conv2d LoRA layer's tensors (no copies). m defaults to ‖W + s·B A‖ per
        output channel, PEFT's initialisation: the layer then computes the LoRA output."""
        if not isinstance(lora, ConvLoRAWeights):
            raise TypeError(f"lora must be ConvLoRAWeights, got {type(lora).__name__}")
        if m is None:
            with torch.no_grad():
                sq = sq_norms(lora.W.flatten(1), lora.A.flatten(1), lora.B.flatten(1),
                              lora.scale)  # fmt: skip
                m = sq.clamp_min(0).sqrt().to(lora.W.dtype)
        return cls(lora.W, lora.b, lora.A, lora.B, lora.scale, m, lora.stride, lora.padding,
                   lora.dilation, detach_norm)  # fmt: skip

    @classmethod
    def with_random_m(
        cls, lora: ConvLoRAWeights, seed: int = 0, *, detach_norm: bool = True
    ) -> ConvDoRAWeights:
        """DoRA on lora's tensors with m = ‖W + s·B A‖ per output channel times a seeded factor
        in [0.5, 1.5): every channel is rescaled, so a wrong norm or a dropped m shows."""
        gen = torch.Generator().manual_seed(seed + 7)
        factor = 0.5 + torch.rand(lora.out_features, generator=gen, dtype=torch.float64)
        norms = cls.from_lora(lora).m.double().cpu()
        m = (norms * factor).to(device=lora.device, dtype=lora.dtype)
        return cls.from_lora(lora, m, detach_norm=detach_norm)
