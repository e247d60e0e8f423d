"""ResNet-18 with LoRA on every convolution (ours through inject_conv, PEFT's lora.Conv2d),
checked against the float64 oracle, its training step timed in pairs with a full fine-tune
step of the same model."""

from __future__ import annotations

from pytest_benchmark.fixture import BenchmarkFixture

from bench.families.conv_models import ConvModelJob
from bench.families.conv_models_runner import time_conv_model
from bench.harness.runner import Harness


def test_conv_model(
    benchmark: BenchmarkFixture, harness: Harness, conv_model_job: ConvModelJob
) -> None:
    time_conv_model(harness, benchmark, conv_model_job)
