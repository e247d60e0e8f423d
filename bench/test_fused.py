"""Whole modules with LoRA on each projection (q, k and v together; a SwiGLU MLP): the
module-level impls, our per-layer `autograd` and PEFT's layers, each checked against the
module's float64 oracle, then timed in pairs with the frozen module."""

from __future__ import annotations

from pytest_benchmark.fixture import BenchmarkFixture

from bench.families.fused import FusedJob
from bench.families.fused_runner import time_fused
from bench.harness.runner import Harness


def test_fused(benchmark: BenchmarkFixture, harness: Harness, fused_job: FusedJob) -> None:
    time_fused(harness, benchmark, fused_job)
