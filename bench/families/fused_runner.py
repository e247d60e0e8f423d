"""The fused-module bench's steps for one job: build, check the module against its float64
oracle (outputs, and in training the gradients of x and of every A and B), time in pairs with
the frozen module, count what a step keeps, and record a FusedEntry."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from pytest_benchmark.fixture import BenchmarkFixture
from torch import Tensor

from bench.families.fused import FUSED_PROFILES, FusedJob
from bench.harness.cases import DTYPES
from bench.harness.memory import peak_bytes, saved_bytes
from bench.harness.runner import Harness
from bench.harness.timing import call_or_step, run_paired
from bench.schema.entries import FusedEntry
from lora_kernels import rel_error, tolerance
from lora_kernels.fused import FUSED_IMPLS, MLPWeights, ModuleWeights, module_reference


def frozen(w: ModuleWeights) -> Callable[[Tensor], tuple[Tensor, ...]]:
    """The module without its adapters: the denominator of every ratio."""
    ps = w.projections()
    if isinstance(w, MLPWeights):
        g, u, d = (ps[n] for n in ("gate", "up", "down"))
        return lambda x: (
            F.linear(F.silu(F.linear(x, g.W, g.b)) * F.linear(x, u.W, u.b), d.W, d.b),
        )
    return lambda x: tuple(F.linear(x, p.W, p.b) for p in ps.values())


def time_fused(harness: Harness, benchmark: BenchmarkFixture, job: FusedJob) -> None:
    case, train = job.case, job.mode == "train"
    impl = FUSED_IMPLS[job.impl]
    reason = impl.unavailable_reason(case.device, DTYPES[case.dtype], job.mode)
    if reason:
        pytest.skip(reason)
    benchmark.group = f"fused {case}"
    w = case.weights()
    x = case.input(train)
    op = impl.build(w, job.mode)
    outs = op(x)
    gen = torch.Generator().manual_seed(1)
    grads = tuple(torch.randn(o.shape, generator=gen).to(o) for o in outs) if train else None
    want, want_grads = module_reference(w, x.detach().requires_grad_(train), grads)
    errors = [rel_error(o, r) for o, r in zip(outs, want, strict=True)]
    if grads is not None:
        torch.autograd.backward(outs, grads)
        got = {"x": x.grad, **{n: t.grad for n, t in w.trainable().items()}}
        errors += [rel_error(g, want_grads[n]) if g is not None else float("inf")
                   for n, g in got.items()]  # fmt: skip
    tol = tolerance(DTYPES[case.dtype], case.device)
    if not max(errors) <= tol:
        pytest.fail(f"{job}: rel error {max(errors):.3g} > {tol:g} against the oracle; not timed")
    tensors = [x, *w.trainable().values()]
    mine, base = call_or_step(op, x, grads, tensors), call_or_step(frozen(w), x, grads, tensors)
    mine(), base()  # warm
    budget = harness.settings.budget(FUSED_PROFILES[harness.settings.profile.name].budget)
    rounds = run_paired(benchmark, [(mine, base)], case.device, budget)
    weights = [t for p in w.projections().values() for t in (p.W, p.b, p.A, p.B) if t is not None]
    saved, peak = (saved_bytes(mine, weights), peak_bytes(mine, case.device, tensors)
                   ) if train else (0, 0)  # fmt: skip
    frozen_saved = saved_bytes(base, weights) if train else 0
    harness.record(benchmark, FusedEntry(
        fullname=harness.nodeid, **case.fields(), impl=job.impl, mode=job.mode,
        origin=impl.origin, threads=harness.settings.threads, rel_error=max(errors),
        saved_bytes=saved, frozen_saved_bytes=frozen_saved, peak_bytes=peak, rounds=rounds,
    ))  # fmt: skip
