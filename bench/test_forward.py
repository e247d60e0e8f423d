"""Inference throughput of every registered impl on every case, checked before timed."""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.cases import Case
from bench.runner import forward_work, measure
from bench.session import Settings
from lora_kernels import IMPLS


@pytest.mark.parametrize("impl_name", list(IMPLS))
def test_forward(
    benchmark: BenchmarkFixture, settings: Settings, case: Case, impl_name: str
) -> None:
    benchmark.group = f"forward {case}"
    measure(benchmark, settings, case, impl_name, "infer", forward_work(case, impl_name))
