"""Multi-adapter batches: every multi-adapter impl and PEFT's mixed batch on each case's
index distribution, and single-adapter impls on the same shape as the reference; each
checked against the float64 oracle, then timed in pairs with the base GEMM."""

from __future__ import annotations

from pytest_benchmark.fixture import BenchmarkFixture

from bench.families.multi import MultiJob
from bench.families.multi_runner import time_multi
from bench.harness.memory import CpuProbe
from bench.harness.runner import Harness


def test_multi(
    benchmark: BenchmarkFixture, harness: Harness, memory_probe: CpuProbe, multi_job: MultiJob
) -> None:
    time_multi(harness, benchmark, memory_probe, multi_job.case, multi_job.variant)
