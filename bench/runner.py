"""The steps every benchmark takes: skip what cannot run, build (timed apart), check against
the oracle, time in pairs with base, and record one typed entry of the results."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture

from bench.cases import Case
from bench.memory import CPU_METHOD, CUDA_METHOD, CpuProbe, measure_cuda
from bench.results import Entry, MemoryEntry, TimeEntry, entry_dict
from bench.session import Settings
from bench.timing import Work, run_paired, synchronize
from lora_kernels import IMPLS, Impl, LoRAWeights, Op, get_impl, tolerance
from lora_kernels.reference import forward_error, gradient_errors


class Checked(NamedTuple):
    """An impl's work and base's work on one case, checked against the oracle first."""

    work: Work
    base_work: Work
    rel_error: float
    build_s: float
    copied_output: bool  # the op's output is not contiguous: `work` includes the copy


def runnable(impl_name: str, case: Case, mode: str) -> Impl:
    """The impl, or a pytest.skip that says why it cannot run this case."""
    impl = get_impl(impl_name)
    reason = case.skip_reason() or impl.unavailable_reason(case.device, case.torch_dtype, mode)
    if reason:
        pytest.skip(reason)
    return impl


def build_timed(impl: Impl, w: LoRAWeights, first_call: Callable[[Op], object], device: str):
    """Build the op and make its first call (compile, autotune, caches), synchronized.
    Returns (op, build_s): build_s is kept out of the timed rounds and recorded apart."""
    synchronize(device)
    start = time.perf_counter()
    op = impl.build(w, "train" if w.A.requires_grad else "infer")
    first_call(op)
    synchronize(device)
    return op, time.perf_counter() - start


def charge_copy(op: Op, x: torch.Tensor) -> tuple[Op, bool]:
    """op, or when its output is not contiguous, op followed by the copy to contiguous memory
    that the next op needing it would pay; and whether the copy was added."""
    if op(x).is_contiguous():
        return op, False
    return (lambda x: op(x).contiguous()), True


def assert_equivalent(impl: Impl, case: Case, errors: dict[str, float]) -> float:
    """Fail unless every error is within the dtype's tolerance; returns the largest.
    `base` drops the adapter on purpose: its error is recorded, not asserted."""
    worst = max(errors.values())
    tol = tolerance(case.torch_dtype, case.device)
    if impl.lora_equivalent and not worst <= tol:
        pytest.fail(f"{impl.name} on {case}: rel error {errors} exceeds {tol:g}; not timed")
    return worst


def forward_work(case: Case, impl_name: str) -> Checked:
    """Checked forward of the impl and of base on the case."""
    impl = runnable(impl_name, case, "infer")
    w, x = case.weights(), case.input()
    op, build_s = build_timed(impl, w, lambda op: op(x), case.device)
    err = assert_equivalent(impl, case, {"y": forward_error(op, w, x)})
    op, copied = charge_copy(op, x)
    base = IMPLS["base"].build(w)
    return Checked(lambda: op(x), lambda: base(x), err, build_s, copied)


def train_work(case: Case, impl_name: str) -> Checked:
    """Checked training step (forward, then dx, dA, dB) of the impl, and the frozen base
    step (forward, then dx)."""
    impl = runnable(impl_name, case, "train")
    w, x = case.weights().requires_grad_(), case.input().requires_grad_()
    grad_out = torch.randn(case.tokens, case.out_features, generator=torch.Generator())
    grad_out = grad_out.to(x)
    leaves = (x, w.A, w.B)

    def step_of(op: Op) -> Work:
        def step() -> None:
            for t in leaves:
                t.grad = None
            op(x).backward(grad_out)

        return step

    op, build_s = build_timed(impl, w, lambda op: step_of(op)(), case.device)
    errors = {"y": forward_error(op, w, x), **gradient_errors(op, w, x, grad_out)}
    err = assert_equivalent(impl, case, errors)
    op, copied = charge_copy(op, x)
    base = IMPLS["base"].build(w, "train")
    return Checked(step_of(op), step_of(base), err, build_s, copied)


@dataclass
class Harness:
    """What a benchmark test needs: the run's settings and the test's node id. Each test
    records one entry, into the run and into pytest-benchmark's extra_info."""

    settings: Settings
    nodeid: str

    def record(self, benchmark: BenchmarkFixture, entry: Entry) -> None:
        self.settings.entries.append(entry)
        benchmark.extra_info.update(entry_dict(entry))

    def time(self, benchmark: BenchmarkFixture, case: Case, impl_name: str, mode: str) -> None:
        """Check, then time the impl in pairs with base; a forward or a training step."""
        benchmark.group = f"{'forward' if mode == 'infer' else 'train'} {case}"
        checked = (forward_work if mode == "infer" else train_work)(case, impl_name)
        if benchmark.disabled:
            checked.work()
            return
        peaks = self.settings.peaks(case.device, case.dtype)
        paired = run_paired(benchmark, checked.work, checked.base_work, case.device,
                            self.settings.profile)  # fmt: skip
        adapter = get_impl(impl_name).lora_equivalent
        entry = TimeEntry(
            fullname=self.nodeid,
            **case.fields(),
            impl=impl_name,
            mode=mode,
            in_features=case.in_features,
            out_features=case.out_features,
            bias=case.bias,
            flops=case.flops(mode, adapter),
            min_bytes=case.min_bytes(mode, adapter),
            floor_s=peaks.floor_s(case.flops(mode), case.min_bytes(mode)),
            rel_error=checked.rel_error,
            build_s=checked.build_s,
            threads=self.settings.threads,
            tf32=self.settings.tf32(),
            copied_output=checked.copied_output,
            rounds=paired,
        )
        self.record(benchmark, entry)

    def memory(
        self, benchmark: BenchmarkFixture, probe: CpuProbe, case: Case, impl_name: str, mode: str
    ) -> None:
        """Peak memory of building and running the impl once: CUDA in-process, CPU in the
        probe. The time pytest-benchmark shows for it is the cost of the measurement."""
        runnable(impl_name, case, mode)
        benchmark.group = "memory"
        cuda = torch.device(case.device).type == "cuda"
        peak = benchmark.pedantic(
            measure_cuda if cuda else probe.measure, args=(impl_name, case, mode), rounds=1
        )
        entry = MemoryEntry(
            fullname=self.nodeid,
            **case.fields(),
            impl=impl_name,
            mode=mode,
            method=CUDA_METHOD if cuda else CPU_METHOD,
            peak_bytes=peak,
        )
        self.record(benchmark, entry)
