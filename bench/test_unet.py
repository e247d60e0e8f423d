"""A diffusers UNet with LoRA on its attention, or on its attention and convolutions: PEFT's
layers as diffusers puts them and ours through from_peft, checked against PEFT's, a denoising
call and a training step timed in pairs with the frozen UNet's; our merge and unmerge against
diffusers' fuse_lora and unfuse_lora."""

from __future__ import annotations

from pytest_benchmark.fixture import BenchmarkFixture

from bench.families.unet import UNetJob
from bench.families.unet_runner import time_unet
from bench.harness.runner import Harness


def test_unet(benchmark: BenchmarkFixture, harness: Harness, unet_job: UNetJob) -> None:
    time_unet(harness, benchmark, unet_job)
