"""Whole models end to end: PEFT's LoRA (unmerged and merged) and each of our LoRA impls
through from_peft, on the same weights, checked against PEFT's model, then timed in pairs
with the frozen model: a forward and a training step."""

from __future__ import annotations

from pytest_benchmark.fixture import BenchmarkFixture

from bench.families.model_runner import time_model
from bench.families.models import ModelJob
from bench.harness.runner import Harness


def test_model(benchmark: BenchmarkFixture, harness: Harness, model_job: ModelJob) -> None:
    time_model(harness, benchmark, model_job.case, model_job.variant, model_job.mode)
