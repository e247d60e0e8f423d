"""Tensor-parallel LoRA layers: each split (column- and row-parallel base; adapter replicated,
sharded, fully sharded) checked against the whole layer's float64 oracle on every rank, its
collectives' bytes against the formulas, then timed in pairs with the frozen tensor-parallel
layer of the same split, in `world` processes started by the benchmark."""

from __future__ import annotations

from pytest_benchmark.fixture import BenchmarkFixture

from bench.families.tp import TPJob
from bench.families.tp_runner import time_tp
from bench.harness.runner import Harness


def test_tp(benchmark: BenchmarkFixture, harness: Harness, tp_job: TPJob) -> None:
    time_tp(harness, benchmark, tp_job)
