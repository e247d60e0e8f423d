"""Where the time goes: the profiler's breakdown of a few impls' call, forward and training
step, on the profile's breakdown cases (its timer cases; on a CPU none in quick), beside
base's, taken outside any timed round. The results' "Where the time goes" tables show them
with the paired timing of the same case."""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.harness.cases import Case
from bench.harness.runner import Harness

BREAKDOWN_IMPLS = ["base", "two_step", "addmm", "merged"]


@pytest.mark.parametrize("mode", ["infer", "train"])
@pytest.mark.parametrize("impl_name", BREAKDOWN_IMPLS)
def test_breakdown(
    benchmark: BenchmarkFixture, harness: Harness, breakdown_case: Case, impl_name: str, mode: str
) -> None:
    harness.breakdown(benchmark, breakdown_case, impl_name, mode)
