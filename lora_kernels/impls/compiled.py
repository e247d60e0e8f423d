"""torch.compile of the two-step forward. Compilation happens on the first call per shape,
which the bench makes part of build; weights are passed as arguments so they are not baked in."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import torch
from torch import Tensor

from lora_kernels.impls.eager import two_step_forward
from lora_kernels.registry import Impl, Op, register
from lora_kernels.weights import LoRAWeights


@cache
def compiled_two_step() -> Callable[..., Tensor]:
    """The one compiled function; dynamo caches a graph per input shape, dtype and device."""
    return torch.compile(two_step_forward, dynamic=False, fullgraph=True)


def build_compiled(w: LoRAWeights) -> Op:
    fn = compiled_two_step()

    def op(x: Tensor) -> Tensor:
        return fn(x, w.W, w.b, w.A, w.B, w.scale)

    return op


register(
    Impl(
        "compiled",
        "torch.compile(two_step), fullgraph, static shapes; compile cost is recorded as build_s",
        build_compiled,
        compiles=True,
    )
)
