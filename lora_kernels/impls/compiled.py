"""torch.compile of the two-step forward. Compilation happens on the first call per shape,
which the bench makes part of build; weights are passed as arguments so they are not baked in.

Dynamo compiles one graph per input shape and, past its recompile limit (8 by default), runs
the function eagerly without a word: `compiled` would then time eager code. Building either
impl therefore raises the limit and makes reaching it an error (see `no_silent_fallback`)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import torch
from torch import Tensor

from lora_kernels.impls.eager import two_step_forward
from lora_kernels.registry import Impl, Op, register
from lora_kernels.weights import LoRAWeights

RECOMPILE_LIMIT = 1024  # graphs per code object: one per shape, dtype, device and grad mode


def no_silent_fallback() -> None:
    """Raise dynamo's recompile limits to RECOMPILE_LIMIT (never lower them) and make hitting
    them an error rather than a silent fall back to eager. This sets torch._dynamo.config for
    the whole process."""
    dynamo = torch._dynamo.config
    dynamo.recompile_limit = max(dynamo.recompile_limit, RECOMPILE_LIMIT)
    dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, RECOMPILE_LIMIT)
    if hasattr(dynamo, "fail_on_recompile_limit_hit"):
        dynamo.fail_on_recompile_limit_hit = True


@cache
def compiled_two_step(mode: str | None = None) -> Callable[..., Tensor]:
    """One compiled function per mode; dynamo caches a graph per input shape, dtype, device."""
    return torch.compile(two_step_forward, mode=mode, dynamic=False, fullgraph=True)


def build_compiled(w: LoRAWeights) -> Op:
    no_silent_fallback()
    fn = compiled_two_step()

    def op(x: Tensor) -> Tensor:
        return fn(x, w.W, w.b, w.A, w.B, w.scale)

    return op


def build_compiled_graphs(w: LoRAWeights) -> Op:
    no_silent_fallback()
    fn = compiled_two_step("reduce-overhead")

    def op(x: Tensor) -> Tensor:
        torch.compiler.cudagraph_mark_step_begin()  # each call is one inference step
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
register(
    Impl(
        "compiled_graphs",
        "torch.compile(two_step, mode='reduce-overhead'): CUDA graphs; y lives until the next call",
        build_compiled_graphs,
        devices=frozenset({"cuda"}),
        modes=frozenset({"infer"}),
        compiles=True,
    )
)
