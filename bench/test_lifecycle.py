"""What adapters cost in service: loading one from PEFT's files, switching, deleting (with 1
to 64 loaded already), merging and unmerging a whole model, and hot-swapping a compiled
model's adapter; PEFT's PeftModel against ours, each op's outcome checked against PEFT's
function of the adapter it left active."""

from __future__ import annotations

from pytest_benchmark.fixture import BenchmarkFixture

from bench.families.lifecycle import LifeJob
from bench.families.lifecycle_runner import time_lifecycle
from bench.harness.runner import Harness


def test_lifecycle(benchmark: BenchmarkFixture, harness: Harness, life_job: LifeJob) -> None:
    time_lifecycle(harness, benchmark, life_job.case, life_job.variant, life_job.op)
