"""Peak memory of building and running each impl once, inference and training step.
The time pytest-benchmark shows for these rows is the cost of the measurement itself."""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.cases import Case
from bench.memory import CpuProbe
from bench.runner import measure_memory
from lora_kernels import IMPLS
from lora_kernels.registry import MODES


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl_name", list(IMPLS))
def test_memory(
    benchmark: BenchmarkFixture,
    memory_probe: CpuProbe,
    memory_case: Case,
    impl_name: str,
    mode: str,
) -> None:
    measure_memory(benchmark, memory_probe, memory_case, impl_name, mode)
