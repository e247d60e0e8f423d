"""Conv2d LoRA layers at the shapes of SD 1.5's and SDXL's UNets and of ResNet-50: every
registered Conv2d impl (ours, PEFT's lora.Conv2d, plugins), checked against the float64 oracle,
then its forward and training step timed in pairs with the frozen convolution."""

from __future__ import annotations

from pytest_benchmark.fixture import BenchmarkFixture

from bench.families.conv import ConvJob
from bench.families.conv_runner import time_conv
from bench.harness.runner import Harness


def test_conv(benchmark: BenchmarkFixture, harness: Harness, conv_job: ConvJob) -> None:
    time_conv(harness, benchmark, conv_job)
