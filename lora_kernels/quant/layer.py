"""QLoRALinear: a frozen quantized linear layer plus a trainable low-rank adapter, forward by a
registry impl of variant "qlora"; merging requantizes and keeps the original bytes to go back."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from lora_kernels.layer import MergedCannotTrain
from lora_kernels.plugins import get_impl
from lora_kernels.quant.formats import QuantizedBase
from lora_kernels.quant.merge import merge_requantize, weight_error
from lora_kernels.quant.weights import QLoRAWeights
from lora_kernels.registry import Impl, Op
from lora_kernels.weights import SUPPORTED_DTYPES

DEFAULT_IMPL = "qlora_lean"


class QLoRALinear(nn.Module):
    """y = x Ŵᵀ + b + s · (x Aᵀ) Bᵀ with Ŵ the dequantized `quant` (a QuantizedBase, frozen);
    A (r, in) and B (out, r) train, in the base's compute dtype. x: (..., in) -> (..., out).

    merge() puts Ŵ + s·B A quantized again in place of the base (the base's speed, a changed
    function: `merge_error` says by how much) and keeps the original base, so unmerge()
    restores its exact bytes. The layer stays on the device it was built on.
    """

    def __init__(self, quant: QuantizedBase, A: Tensor, B: Tensor, scale: float,
                 bias: Tensor | None = None, impl: str = DEFAULT_IMPL) -> None:  # fmt: skip
        super().__init__()
        QLoRAWeights(quant, bias, A, B, scale)  # shapes, dtypes and devices
        self.quant = quant
        self.bias = (
            bias
            if bias is None or isinstance(bias, nn.Parameter)
            else nn.Parameter(bias, requires_grad=False)
        )
        self.lora_A = A if isinstance(A, nn.Parameter) else nn.Parameter(A)
        self.lora_B = B if isinstance(B, nn.Parameter) else nn.Parameter(B)
        self.scale = scale
        self.impl = impl
        self.merged = False
        self.merge_error: float | None = None  # the last merge's weight_error
        self._original: QuantizedBase | None = None  # the base before merge()
        self._ops: dict[str, tuple[tuple, Op]] = {}
        self._seen: set[tuple] = set()  # input signatures (in, dtype, device) checked

    @property
    def impl(self) -> str:
        return self._impl.name

    @impl.setter
    def impl(self, name: str) -> None:
        impl = get_impl(name)
        if impl.variant != "qlora" or not impl.lora_equivalent:
            from lora_kernels.registry import IMPLS

            fits = [n for n, i in IMPLS.items() if i.variant == "qlora" and i.lora_equivalent]
            raise ValueError(f"impl {name!r} does not compute LoRA on a quantized base; "
                             f"pick one of: {', '.join(fits)}")  # fmt: skip
        reason = impl.unavailable_reason(self.quant.device, self.quant.dtype, "infer")
        if self.quant.fmt not in impl.formats or reason:
            raise ValueError(
                reason or f"impl {name!r} takes {sorted(impl.formats)}, not {self.quant.fmt!r}"
            )
        self._impl: Impl = impl
        self._ops = {}

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]

    @property
    def in_features(self) -> int:
        return self.quant.in_features

    @property
    def out_features(self) -> int:
        return self.quant.out_features

    def weights(self) -> QLoRAWeights:
        """The live tensors (no copies)."""
        return QLoRAWeights(self.quant, self.bias, self.lora_A, self.lora_B, self.scale)

    def _op(self, mode: str) -> Op:
        """The impl's op, rebuilt when A, B or the base change (an optimizer step bumps
        `_version`)."""
        A, B = self.lora_A, self.lora_B
        key = (id(self.quant), id(A), A._version, id(B), B._version, self.scale)
        cached = self._ops.get(mode)
        if cached is None or cached[0] != key:
            cached = (key, self._impl.build(self.weights(), mode))
            self._ops[mode] = cached
        return cached[1]

    def _check(self, x: Tensor) -> None:
        """Raise unless x fits the layer; each new (in, dtype, device) is checked once."""
        if not isinstance(x, Tensor) or x.dim() == 0:
            self.weights().check_input(x)
        signature = (x.shape[-1], x.dtype, x.device)
        if signature not in self._seen:
            self.weights().check_input(x)
            self._seen.add(signature)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        if self.merged:
            y = get_impl("qbase").build(self.weights())(x)
            if torch.is_grad_enabled() and (self.lora_A.requires_grad or self.lora_B.requires_grad):
                return MergedCannotTrain.apply(y, self.lora_A, self.lora_B, "QLoRALinear")
            return y
        grads = self.lora_A.requires_grad or self.lora_B.requires_grad or x.requires_grad
        return self._op("train" if grads and torch.is_grad_enabled() else "infer")(x)

    def merged_base(self) -> QuantizedBase:
        """Ŵ + s·B A quantized again in the base's format, without putting it in place.
        Raises ValueError when the layer is merged already or the sum is not finite."""
        if self.merged:
            raise ValueError("merge() called on a layer that is already merged; unmerge() first")
        return merge_requantize(self.weights())

    @torch.no_grad()
    def merge(self, merged: QuantizedBase | None = None) -> float:
        """Put Ŵ + s·B A, requantized (`merged`, from merged_base(), or made here), in place
        of the base; returns and keeps in `merge_error` its relative weight error (see
        merge.weight_error). The base is not written: it is kept for unmerge()."""
        merged = self.merged_base() if merged is None else merged
        if self.merged:
            raise ValueError("merge() called on a layer that is already merged; unmerge() first")
        self.merge_error = weight_error(self.weights(), merged)
        self._original, self.quant, self.merged = self.quant, merged, True
        self._ops = {}
        return self.merge_error

    def unmerge(self) -> None:
        """Put back the base merge() replaced: its exact bytes."""
        if not self.merged or self._original is None:
            raise ValueError("unmerge() called on a layer that is not merged; merge() first")
        self.quant, self._original, self.merged = self._original, None, False
        self._ops = {}

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> QLoRALinear:
        """nn.Module's .to(), .half(), .bfloat16(), .cuda() ... come through here. A cast to
        another compute dtype (float32, float16, bfloat16) that the impl runs is followed: A,
        B and the bias are cast and the base dequantizes to the new dtype (its codes stay as
        they are). A move to another device, or a cast to any other dtype, is refused with the
        layer unchanged: the codes were made on their device."""
        A = self.lora_A
        moved = fn(torch.empty(0, dtype=A.dtype, device=A.device))
        if (moved.dtype, moved.device) == (A.dtype, A.device):
            return super()._apply(fn, recurse)
        if moved.device != A.device:
            reason = f"the quantized base stays on {A.device}"
        elif moved.dtype not in SUPPORTED_DTYPES:
            allowed = ", ".join(str(d) for d in SUPPORTED_DTYPES)
            reason = f"a compute dtype is one of {allowed}"
        else:
            reason = self._impl.unavailable_reason(A.device, moved.dtype, "infer")
        if reason:
            raise TypeError(
                f"QLoRALinear cannot be cast or moved from ({A.dtype}, {A.device}) to "
                f"({moved.dtype}, {moved.device}): {reason}; quantize the base again there "
                "(QuantizedBase.quantize(..., dtype=...))"
            )
        super()._apply(fn, recurse)
        self.quant = self.quant.computing_in(moved.dtype)
        if self._original is not None:
            self._original = self._original.computing_in(moved.dtype)
        self._ops, self._seen = {}, set()
        return self

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, r={self.rank}, "
                f"format={self.quant.fmt}, scale={self.scale:.4g}, impl={self.impl}, "
                f"merged={self.merged}")  # fmt: skip
