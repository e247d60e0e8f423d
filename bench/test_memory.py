"""Peak memory of building and running each registered impl once, inference and training
step, on the memory cases of its variant. The time pytest-benchmark shows for these rows is
the cost of the measurement itself."""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.harness.cases import Case
from bench.harness.memory import CpuProbe
from bench.harness.runner import Harness
from lora_kernels.registry import MODES


@pytest.mark.parametrize("mode", MODES)
def test_memory(
    benchmark: BenchmarkFixture,
    harness: Harness,
    memory_probe: CpuProbe,
    memory_case: Case,
    impl_name: str,
    mode: str,
) -> None:
    harness.memory(benchmark, memory_probe, memory_case, impl_name, mode)
