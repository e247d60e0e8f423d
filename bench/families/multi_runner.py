"""The multi-adapter bench's steps for one job: build the case's batch (once for all its
variants), check the variant against the float64 oracle, measure its memory over one call,
then time it in pairs with the base GEMM."""

from __future__ import annotations

import time

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture
from torch import Tensor

from bench.families.multi import MULTI_PROFILES, SINGLE, Batch, MultiCase, build_work
from bench.harness.memory import CPU_CALL_METHOD, CUDA_CALL_METHOD, CpuProbe, peak_bytes
from bench.harness.runner import Harness
from bench.harness.timing import run_paired, synchronize
from bench.schema.entries import MultiEntry
from lora_kernels import IMPLS, MULTI_IMPLS, tolerance
from lora_kernels.multi import multi_reference_forward
from lora_kernels.reference import poisoned_memory, rel_error

_LAST: list[tuple[MultiCase, Batch, Tensor]] = []  # the latest case: its variants run in a row


def batch_of(case: MultiCase) -> tuple[Batch, Tensor]:
    """The case's batch and its oracle output, built once while its variants run."""
    if not _LAST or _LAST[0][0] != case:
        batch = Batch.of(case)
        # a single-adapter reference runs adapter 0 on every token: the identical index
        ref = multi_reference_forward(batch.weights, batch.x, batch.index)
        _LAST[:] = [(case, batch, ref)]
    return _LAST[0][1], _LAST[0][2]


def runnable(case: MultiCase, variant: str) -> None:
    """pytest.skip, saying why, when the variant cannot run the case here."""
    single = variant.startswith(SINGLE)
    impl = IMPLS[variant.removeprefix(SINGLE)] if single else MULTI_IMPLS[variant]
    reason = impl.unavailable_reason(case.device, case.torch_dtype, "infer")
    if reason:
        pytest.skip(reason)


def origin(variant: str) -> str:
    return "single" if variant.startswith(SINGLE) else MULTI_IMPLS[variant].origin


def time_multi(
    harness: Harness, benchmark: BenchmarkFixture, probe: CpuProbe, case: MultiCase, variant: str
) -> None:
    """Check the variant against the oracle, measure its memory over one call, then time it
    in pairs with the base GEMM and record a MultiEntry."""
    runnable(case, variant)
    benchmark.group = f"multi {case}"
    batch, ref = batch_of(case)
    synchronize(case.device)
    start = time.perf_counter()
    work, base_work = build_work(variant, batch)
    with poisoned_memory():
        y = work()
    synchronize(case.device)
    build_s = time.perf_counter() - start
    error = rel_error(y, ref)
    tol = tolerance(case.torch_dtype, case.device)
    if not error <= tol:
        pytest.fail(f"{variant} on {case}: rel error {error:.3g} > {tol:g}; not timed")
    if benchmark.disabled:
        return
    cuda = torch.device(case.device).type == "cuda"
    peak = peak_bytes(work, "cuda") if cuda else probe.measure_multi(case, variant)
    spec = MULTI_PROFILES[harness.settings.profile.name]
    budget = harness.settings.budget(spec.budget)
    paired = run_paired(benchmark, [(work, base_work)], case.device, budget)
    entry = MultiEntry(
        fullname=harness.nodeid,
        **case.fields(),
        r_max=case.r_max,
        variant=variant,
        origin=origin(variant),
        in_use=int(torch.unique(batch.index[batch.index >= 0]).numel()),
        rel_error=error,
        build_s=build_s,
        threads=harness.settings.threads,
        peak_bytes=peak,
        memory_method=CUDA_CALL_METHOD if cuda else CPU_CALL_METHOD,
        rounds=paired,
    )
    harness.record(benchmark, entry)
