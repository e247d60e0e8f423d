"""Peak memory of building and running each impl once, inference and training step.
The time pytest-benchmark shows for these rows is the cost of the measurement itself."""

from __future__ import annotations

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture

from bench.cases import Case
from bench.memory import CPU_METHOD, CUDA_METHOD, CpuProbe, measure_cuda
from bench.runner import runnable
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
    case = memory_case
    runnable(impl_name, case, mode)
    benchmark.group = "memory"
    cuda = torch.device(case.device).type == "cuda"
    measure = measure_cuda if cuda else memory_probe.measure
    peak = benchmark.pedantic(measure, args=(impl_name, case, mode), rounds=1)
    info = benchmark.extra_info
    info.update(case=str(case), key=case.key, impl=impl_name, mode=mode)
    info.update(case.as_dict(), method=CUDA_METHOD if cuda else CPU_METHOD)
    info.update(
        peak_bytes=peak, input_bytes=case.tokens * case.in_features * case.torch_dtype.itemsize
    )
    info["kind"] = "memory"  # last: the results writer keeps only complete entries
