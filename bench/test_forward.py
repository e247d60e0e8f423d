"""Inference of every registered impl (ours, peers, plugins) on every case, checked before
timed, in pairs with the base GEMM."""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.cases import Case
from bench.runner import Harness
from lora_kernels import IMPLS


@pytest.mark.parametrize("impl_name", list(IMPLS))
def test_forward(benchmark: BenchmarkFixture, harness: Harness, case: Case, impl_name: str) -> None:
    harness.time(benchmark, case, impl_name, "infer")
