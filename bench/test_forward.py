"""Inference of every registered impl (ours, peers, plugins) on the cases of its variant
(conftest pairs them: LoRA impls on the grid, DoRA impls on the DoRA cases), checked before
timed, in pairs with the base GEMM."""

from __future__ import annotations

from pytest_benchmark.fixture import BenchmarkFixture

from bench.harness.cases import Case
from bench.harness.runner import Harness


def test_forward(benchmark: BenchmarkFixture, harness: Harness, case: Case, impl_name: str) -> None:
    harness.time(benchmark, case, impl_name, "infer")
