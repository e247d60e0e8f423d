"""Training step (forward, then dx, dA, dB) of every registered impl that trains, checked
before timed; the ratio is against the frozen base step (forward, then dx)."""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.cases import Case
from bench.runner import Harness
from lora_kernels import IMPLS


@pytest.mark.parametrize("impl_name", list(IMPLS))
def test_train_step(
    benchmark: BenchmarkFixture, harness: Harness, case: Case, impl_name: str
) -> None:
    harness.time(benchmark, case, impl_name, "train")
