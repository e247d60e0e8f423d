"""Our timing checked independently: the paired per-op time of base, two_step and the fused
Triton kernel against torch.utils.benchmark's Timer of the same work (and, on CUDA, CUDA
events and triton's do_bench). Recorded as a table of the results, never asserted: a noisy
machine moves both clocks."""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.harness.cases import Case
from bench.harness.runner import Harness

TIMER_IMPLS = ["base", "two_step", "triton_fused"]


@pytest.mark.parametrize("impl_name", TIMER_IMPLS)
def test_timer_check(
    benchmark: BenchmarkFixture, harness: Harness, timer_case: Case, impl_name: str
) -> None:
    harness.timer_check(benchmark, timer_case, impl_name)
