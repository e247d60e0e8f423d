"""The steps every timing benchmark takes: skip what cannot run, build (timed apart),
check against the oracle, time in pairs with base, and record the figures."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture

from bench.cases import Case
from bench.memory import CPU_METHOD, CUDA_METHOD, CpuProbe, measure_cuda
from bench.metrics import paired_info, throughput
from bench.peers import lookup
from bench.session import Settings
from bench.timing import Work, run_paired, synchronize
from lora_kernels import IMPLS, Impl, LoRAWeights, Op, tolerance
from lora_kernels.reference import forward_error, gradient_errors


def runnable(impl_name: str, case: Case, mode: str) -> Impl:
    """The impl, or a pytest.skip that says why it cannot run this case."""
    impl = lookup(impl_name)
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


def assert_equivalent(impl: Impl, case: Case, errors: dict[str, float]) -> float:
    """Fail unless every error is within the dtype's tolerance; returns the largest.
    `base` drops the adapter on purpose: its error is recorded, not asserted."""
    worst = max(errors.values())
    tol = tolerance(case.torch_dtype, case.device)
    if impl.lora_equivalent and not worst <= tol:
        pytest.fail(f"{impl.name} on {case}: rel error {errors} exceeds {tol:g}; not timed")
    return worst


def forward_work(case: Case, impl_name: str) -> tuple[Work, Work, float, float]:
    """Checked forward of the impl and of base on the case: (work, base_work, err, build_s)."""
    impl = runnable(impl_name, case, "infer")
    w, x = case.weights(), case.input()
    op, build_s = build_timed(impl, w, lambda op: op(x), case.device)
    err = assert_equivalent(impl, case, {"y": forward_error(op, w, x)})
    base = IMPLS["base"].build(w)
    return (lambda: op(x)), (lambda: base(x)), err, build_s


def train_work(case: Case, impl_name: str) -> tuple[Work, Work, float, float]:
    """Checked training step (forward, then dx, dA, dB) of the impl, and the frozen base
    step (forward, then dx): (work, base_work, err, build_s)."""
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
    base = IMPLS["base"].build(w, "train")
    return step_of(op), step_of(base), err, build_s


def measure(
    benchmark: BenchmarkFixture,
    settings: Settings,
    case: Case,
    impl_name: str,
    mode: str,
    work: tuple[Work, Work, float, float],
) -> None:
    """Time the work in pairs with base and store every figure in extra_info."""
    fn, base_fn, err, build_s = work
    info = benchmark.extra_info
    info.update(case=str(case), key=case.key, impl=impl_name, mode=mode)
    info.update(case.as_dict(), rel_error=err, build_s=build_s)
    info.update(threads=settings.threads, tf32=settings.tf32())
    if benchmark.disabled:
        fn()
        return
    peaks = settings.peaks(case.device, case.dtype)
    paired = run_paired(benchmark, fn, base_fn, case.device, settings.profile)
    adapter = lookup(impl_name).lora_equivalent
    info.update(throughput(case, mode, paired.impl_median_s, peaks, adapter))
    info.update(paired_info(paired))
    info["kind"] = "time"  # last: the results writer keeps only complete entries


def measure_memory(
    benchmark: BenchmarkFixture, probe: CpuProbe, case: Case, impl_name: str, mode: str
) -> None:
    """Peak memory of building and running the impl once: CUDA in-process, CPU in the probe."""
    runnable(impl_name, case, mode)
    benchmark.group = "memory"
    cuda = torch.device(case.device).type == "cuda"
    peak = benchmark.pedantic(
        measure_cuda if cuda else probe.measure, args=(impl_name, case, mode), rounds=1
    )
    info = benchmark.extra_info
    info.update(case=str(case), key=case.key, impl=impl_name, mode=mode, **case.as_dict())
    info.update(method=CUDA_METHOD if cuda else CPU_METHOD, peak_bytes=peak)
    info["kind"] = "memory"  # last: the results writer keeps only complete entries
