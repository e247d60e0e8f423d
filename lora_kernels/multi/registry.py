"""The MultiImpl record and MULTI_IMPLS, the one list of multi-adapter implementations, which
the tests and the benchmarks iterate as they do IMPLS."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch.nn.functional as F
from torch import Tensor

from lora_kernels.multi.weights import MultiLoRAWeights
from lora_kernels.registry import Impl

# op(x, index) -> y: x (..., in), index (T,) int64 as MultiLoRAWeights.check_index returns it
# (the op trusts it), y (..., out).
MultiOp = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class MultiImpl(Impl):
    """One multi-adapter implementation: `build(weights)` returns `op(x, index) -> y`.

    Everything done once (padding masks, transposed stacks) happens in `builder`. Serving
    only: every multi-adapter impl runs the "infer" mode.
    """

    def build(self, weights: MultiLoRAWeights, mode: str = "infer") -> MultiOp:  # type: ignore[override]
        return cast(MultiOp, super().build(weights, mode))  # type: ignore[arg-type]


MULTI_IMPLS: dict[str, MultiImpl] = {}


def get_multi_impl(name: str) -> MultiImpl:
    """The multi-adapter impl called `name`; the error lists the known names."""
    if not isinstance(name, str):
        raise TypeError(f"multi-adapter impl name must be a str, got {type(name).__name__}")
    try:
        return MULTI_IMPLS[name]
    except KeyError:
        raise ValueError(
            f"unknown multi-adapter impl {name!r}; known: {', '.join(MULTI_IMPLS)}"
        ) from None


def multi_rows(w: MultiLoRAWeights, fn: Callable[[Tensor, Tensor], Tensor]) -> MultiOp:
    """An op that runs fn on x flattened to (T, in) rows and gives y back as (..., out); no
    tokens (T = 0) give the base layer's empty output without calling fn."""

    def op(x: Tensor, index: Tensor) -> Tensor:
        x2 = x.reshape(-1, w.in_features)
        y = fn(x2, index) if x2.shape[0] else F.linear(x2, w.W, w.b)
        return y.view(*x.shape[:-1], w.out_features)

    return op
