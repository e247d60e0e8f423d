"""QLoRAWeights: LoRA on a quantized base, the tensors of one layer validated in one place."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar, Self

import torch
from torch import Tensor

from lora_kernels.quant.formats import QuantizedBase
from lora_kernels.weights import LoRAWeights, check_rank, check_tensor


@dataclass(frozen=True)
class QLoRAWeights:
    """A quantized base W (out, in) (see QuantizedBase), b (out,) or None, A (r, in),
    B (out, r) and the scale s.

    Computes y = x Ŵᵀ + b + s · (x Aᵀ) Bᵀ with Ŵ = base.dequantize(): the function of the
    quantized layer, whose distance to the float W is the format's error, not the impl's.
    b, A and B are in the compute dtype (base.dtype), on the base's device.
    """

    variant: ClassVar[str] = "qlora"
    base: QuantizedBase
    b: Tensor | None
    A: Tensor
    B: Tensor
    scale: float

    def __post_init__(self) -> None:
        if not isinstance(self.base, QuantizedBase):
            raise TypeError(f"base must be a QuantizedBase, got {type(self.base).__name__}")
        out_f, in_f = self.base.shape
        for name, t in self._adapter().items():
            check_tensor(name, t)
            if t.dtype != self.base.dtype:
                raise TypeError(
                    f"{name} has dtype {t.dtype}, but the base computes in {self.base.dtype}; "
                    "the adapter must be in the compute dtype (quantize the base with "
                    f"dtype={t.dtype}, or cast the adapter)"
                )
            if t.device != self.base.device:
                raise ValueError(f"{name} is on {t.device}; the base is on {self.base.device}")
        if self.A.dim() != 2 or self.A.shape[1] != in_f:
            raise ValueError(
                f"A must have shape (r, in) with in = {in_f}, got {tuple(self.A.shape)}"
            )
        rank = check_rank(self.A.shape[0], in_f, out_f)
        if tuple(self.B.shape) != (out_f, rank):
            raise ValueError(
                f"B must have shape (out, r) = {(out_f, rank)}, got {tuple(self.B.shape)}"
            )
        if self.b is not None and tuple(self.b.shape) != (out_f,):
            raise ValueError(f"b must have shape (out,) = ({out_f},), got {tuple(self.b.shape)}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)):
            raise TypeError(f"scale must be a number, got {type(self.scale).__name__}")
        if not math.isfinite(self.scale):
            raise ValueError(f"scale must be finite, got {self.scale}")

    def _adapter(self) -> dict[str, Tensor]:
        return {"A": self.A, "B": self.B, **({} if self.b is None else {"b": self.b})}

    def _named(self) -> dict[str, Tensor | None]:
        """Every tensor the layer holds, the base's codes and scales first."""
        return {**self.base.tensors(), "b": self.b, "A": self.A, "B": self.B}

    def trainable(self) -> dict[str, Tensor]:
        """The tensors that train, by name: A and B."""
        return {"A": self.A, "B": self.B}

    def requires_grad_(self, flag: bool = True) -> Self:
        """Make A and B require grad, in place; the base and b stay frozen."""
        for t in self.trainable().values():
            t.requires_grad_(flag)
        return self

    def copy(self) -> Self:
        """b, A and B in fresh memory (same values and grad flags); the base is shared (frozen)."""
        fresh = {n: t.detach().clone().requires_grad_(t.requires_grad)
                 for n, t in self._adapter().items()}  # fmt: skip
        return dataclasses.replace(self, **fresh)  # type: ignore[arg-type]

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def fmt(self) -> str:
        return self.base.fmt

    def output_shape(self, x: Tensor) -> tuple[int, ...]:
        """The shape of the layer's output for x: (..., out)."""
        return (*x.shape[:-1], self.out_features)

    def check_input(self, x: Tensor) -> None:
        """Raise unless x is (..., in) in the compute dtype, on the base's device."""
        self.dense_like().check_input(x)

    def dense_like(self) -> LoRAWeights:
        """LoRAWeights of the same shapes with W a (0-stride) stand-in: for checks only."""
        W = torch.empty((), dtype=self.dtype, device=self.device).expand(self.base.shape)
        return LoRAWeights(W, self.b, self.A, self.B, self.scale)

    def dense(self) -> LoRAWeights:
        """The same function on a float W: the base dequantized, A, B and b shared."""
        return LoRAWeights(self.base.dequantize(), self.b, self.A, self.B, self.scale)

    @classmethod
    def quantize(cls, w: LoRAWeights, fmt: str, *, blocksize: int = 64) -> QLoRAWeights:
        """w with its W quantized to `fmt` (compute dtype: w's); b, A and B shared."""
        return cls(QuantizedBase.quantize(w.W, fmt, blocksize=blocksize), w.b, w.A, w.B, w.scale)
