"""Conv2d LoRA weights in PEFT's layout: the frozen convolution W (out, in, kh, kw) and b, the
adapter's A, a convolution of the base's kernel, stride, padding and dilation from in to r
channels (r, in, kh, kw), and B, a 1×1 convolution from r to out channels (out, r, 1, 1)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lora_kernels.weights import LayerTensors, all_finite, scaling, seeded_uniform

Pair = tuple[int, int]


def _pair(name: str, value: object, least: int) -> Pair:
    """(a, b) from an int or a pair of ints, each >= least; ValueError or TypeError naming it."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(pair, tuple) or len(pair) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) for v in pair)):  # fmt: skip
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < least:
        raise ValueError(f"{name} must be >= {least} in each dimension, got {pair}")
    return pair


@dataclass(frozen=True)
class ConvLoRAWeights(LayerTensors):
    """W (out, in, kh, kw), b (out,) or None, A (r, in, kh, kw), B (out, r, 1, 1), the scale s,
    and the base convolution's stride, padding and dilation, which A shares.

    Computes y = conv(x, W, b) + s · conv1×1(conv(x, A), B) for x (N, in, H, W). The function
    is the base convolution with the kernel W + s · B A (B A contracts r). All tensors share one
    dtype and one device."""

    variant: ClassVar[str] = "conv"
    W: Tensor
    b: Tensor | None
    A: Tensor
    B: Tensor
    scale: float
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)

    def __post_init__(self) -> None:
        self._check_types()
        if self.W.dim() != 4:
            raise ValueError(f"W must be 4-D (out, in, kh, kw), got shape {tuple(self.W.shape)}")
        out_c, in_c, kh, kw = self.W.shape
        if self.A.dim() != 4 or self.A.shape[0] < 1 or tuple(self.A.shape[1:]) != (in_c, kh, kw):
            raise ValueError(f"A must have shape (r, in, kh, kw) = (r, {in_c}, {kh}, {kw}) with "
                             f"r >= 1, got {tuple(self.A.shape)}")  # fmt: skip
        rank = self.A.shape[0]
        if tuple(self.B.shape) != (out_c, rank, 1, 1):
            raise ValueError(f"B must have shape (out, r, 1, 1) = {(out_c, rank, 1, 1)}, got "
                             f"{tuple(self.B.shape)}")  # fmt: skip
        if self.b is not None and tuple(self.b.shape) != (out_c,):
            raise ValueError(f"b must have shape (out,) = {(out_c,)}, got {tuple(self.b.shape)}")
        self._check_one_place()
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)):
            raise TypeError(f"scale must be a number, got {type(self.scale).__name__}")
        if not math.isfinite(self.scale):
            raise ValueError(f"scale must be finite, got {self.scale}")
        object.__setattr__(self, "stride", _pair("stride", self.stride, 1))
        object.__setattr__(self, "padding", _pair("padding", self.padding, 0))
        object.__setattr__(self, "dilation", _pair("dilation", self.dilation, 1))

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    @property
    def kernel_size(self) -> Pair:
        return self.W.shape[2], self.W.shape[3]

    def output_size(self, height: int, width: int) -> Pair:
        """The (H_out, W_out) of an input of (height, width), as torch's conv2d computes it."""
        sizes = []
        for n, k, s, p, d in zip((height, width), self.kernel_size, self.stride, self.padding,
                                 self.dilation, strict=True):  # fmt: skip
            sizes.append((n + 2 * p - d * (k - 1) - 1) // s + 1)
        return sizes[0], sizes[1]

    def convolve(self, x: Tensor, kernel: Tensor, bias: Tensor | None = None) -> Tensor:
        """x convolved with `kernel` at the base convolution's stride, padding and dilation."""
        return F.conv2d(x, kernel, bias, stride=self.stride, padding=self.padding,
                        dilation=self.dilation)  # fmt: skip

    def output_shape(self, x: Tensor) -> tuple[int, ...]:
        """The shape of the layer's output for x (N, in, H, W): (N, out, H_out, W_out)."""
        return (x.shape[0], self.out_features, *self.output_size(x.shape[2], x.shape[3]))

    def check_input(self, x: Tensor) -> None:
        """Raise unless x is (N, in, H, W) with the weights' dtype and device, large enough for
        one output position."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.in_features:
            raise ValueError(f"x must have shape (N, in, H, W) with in = {self.in_features}, got "
                             f"{tuple(x.shape)}")  # fmt: skip
        if min(self.output_size(x.shape[2], x.shape[3])) < 1:
            raise ValueError(f"x's {tuple(x.shape[2:])} map is smaller than the kernel "
                             f"{self.kernel_size} at dilation {self.dilation} and padding "
                             f"{self.padding}: no output position")  # fmt: skip
        if x.dtype != self.dtype:
            raise TypeError(f"x has dtype {x.dtype}; the weights have {self.dtype}")
        if x.device != self.device:
            raise ValueError(f"x is on {x.device}; the weights are on {self.device}")

    def delta(self) -> Tensor:
        """s · B A as a kernel (out, in, kh, kw) in fp32: what merging adds to W."""
        with torch.no_grad():
            B = self.B[:, :, 0, 0].float()
            return torch.einsum("or,rikl->oikl", B, self.A.float()).mul_(self.scale)

    def merged_weight(self, sign: float = 1.0) -> Tensor:
        """W + sign · s · B A as a kernel (out, in, kh, kw), computed in fp32 and cast to W's
        dtype; ValueError when it is not finite."""
        with torch.no_grad():
            merged = (self.W.float() + sign * self.delta()).to(self.W.dtype)
            if not all_finite(merged):
                raise ValueError("merging gives a non-finite kernel (NaN or inf in W, A or B, or "
                                 f"overflow in {self.W.dtype})")  # fmt: skip
        return merged

    @classmethod
    def random(
        cls,
        in_channels: int,
        out_channels: int,
        rank: int,
        kernel_size: int | Pair = 3,
        *,
        stride: int | Pair = 1,
        padding: int | Pair = 0,
        dilation: int | Pair = 1,
        alpha: float = 16.0,
        use_rslora: bool = False,
        bias: bool = True,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> ConvLoRAWeights:
        """Seeded random weights, B non-zero so the adapter term is exercised: W, b and A
        uniform in ±1/sqrt(in·kh·kw) (nn.Conv2d's range), B uniform in ±1/sqrt(r) over s."""
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be an int >= 1, got {rank!r}")
        kh, kw = _pair("kernel_size", kernel_size, 1)
        scale = scaling(alpha, rank, use_rslora)
        uniform = seeded_uniform(seed, dtype, device)
        bound = 1 / math.sqrt(in_channels * kh * kw)
        return cls(W=uniform((out_channels, in_channels, kh, kw), bound),
                   b=uniform((out_channels,), bound) if bias else None,
                   A=uniform((rank, in_channels, kh, kw), bound),
                   B=uniform((out_channels, rank, 1, 1), 1 / math.sqrt(rank)) / scale,
                   scale=scale, stride=_pair("stride", stride, 1),
                   padding=_pair("padding", padding, 0),
                   dilation=_pair("dilation", dilation, 1))  # fmt: skip

    @classmethod
    def from_conv2d(cls, conv: nn.Module, A: Tensor, B: Tensor, scale: float) -> ConvLoRAWeights:
        """The weights of an adapter (A, B, s) on `conv`, sharing its weight and bias (no copy).
        Refuses, naming what it is and what is allowed, a module that is no nn.Conv2d (a
        transposed convolution among them), a grouped or depthwise one, a padding mode other
        than zeros, and a padding given as a string."""
        if type(conv) is not nn.Conv2d:
            raise TypeError(f"Conv2d LoRA needs a torch.nn.Conv2d, got {type(conv).__name__} "
                            "(transposed, 1-D and 3-D convolutions are not taken)")  # fmt: skip
        if conv.groups != 1:
            raise ValueError(f"Conv2d LoRA needs groups=1, got a convolution with groups="
                             f"{conv.groups} (grouped or depthwise)")  # fmt: skip
        if conv.padding_mode != "zeros":
            raise ValueError(f"Conv2d LoRA needs padding_mode 'zeros', got {conv.padding_mode!r}")
        if isinstance(conv.padding, str):
            raise ValueError(f"Conv2d LoRA needs a numeric padding, got {conv.padding!r}")
        weight, bias = conv.weight.detach(), None if conv.bias is None else conv.bias.detach()
        return cls(W=weight, b=bias, A=A, B=B, scale=scale, stride=tuple(conv.stride),  # type: ignore[arg-type]
                   padding=tuple(conv.padding), dilation=tuple(conv.dilation))  # type: ignore[arg-type]  # fmt: skip
