"""Generation with LoRA: greedy decoding with the KV cache, each variant's tokens checked equal
to PEFT's greedy choices, then whole generations timed in pairs with the frozen model's, time
to first token and time per output token on their own clocks (one adapter; many adapters in
one batch, one per sequence)."""

from __future__ import annotations

from pytest_benchmark.fixture import BenchmarkFixture

from bench.families.generation import GenJob
from bench.families.generation_runner import time_generation
from bench.harness.runner import Harness


def test_generate(benchmark: BenchmarkFixture, harness: Harness, gen_job: GenJob) -> None:
    time_generation(harness, benchmark, gen_job.case, gen_job.variant)
