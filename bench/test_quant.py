"""LoRA on a quantized base (QLoRA): our impls and PEFT's QLoRA layer timed in pairs with the
quantized base's own forward and training step, the dense base beside them, the bytes training
keeps, the error of merging into the quantized weight, and a whole QLoRA model's training step
against PEFT's."""

from __future__ import annotations

from pytest_benchmark.fixture import BenchmarkFixture

from bench.families.quant import QuantJob
from bench.families.quant_runner import time_quant
from bench.harness.runner import Harness


def test_quant(benchmark: BenchmarkFixture, harness: Harness, quant_job: QuantJob) -> None:
    time_quant(harness, benchmark, quant_job)
