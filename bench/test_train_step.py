"""Training step (forward, then dx, dA, dB; DoRA adds dm) of every registered impl that trains,
on the cases of its variant, checked before timed; the ratio is against the frozen base step
(forward, then dx)."""

from __future__ import annotations

from pytest_benchmark.fixture import BenchmarkFixture

from bench.harness.cases import Case
from bench.harness.runner import Harness


def test_train_step(
    benchmark: BenchmarkFixture, harness: Harness, case: Case, impl_name: str
) -> None:
    harness.time(benchmark, case, impl_name, "train")
