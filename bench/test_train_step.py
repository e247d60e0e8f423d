"""Training step (forward, then dx, dA, dB) of every impl that trains, checked before timed;
the ratio is against the frozen base step (forward, then dx)."""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.cases import Case
from bench.runner import measure, train_work
from bench.session import Settings
from lora_kernels import IMPLS


@pytest.mark.parametrize("impl_name", list(IMPLS))
def test_train_step(
    benchmark: BenchmarkFixture, settings: Settings, case: Case, impl_name: str
) -> None:
    benchmark.group = f"train {case}"
    measure(benchmark, settings, case, impl_name, "train", train_work(case, impl_name))
