"""PEFT and loralib on the same cases and weights as ours, checked against the oracle first,
timed in pairs with our base GEMM, and measured for memory: their ratios sit beside ours."""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.cases import Case
from bench.memory import CpuProbe
from bench.peers import PEERS
from bench.runner import forward_work, measure, measure_memory, train_work
from bench.session import Settings

PEER_NAMES = list(PEERS)


@pytest.mark.parametrize("peer", PEER_NAMES)
def test_peer_forward(
    benchmark: BenchmarkFixture, settings: Settings, case: Case, peer: str
) -> None:
    benchmark.group = f"forward {case}"
    measure(benchmark, settings, case, peer, "infer", forward_work(case, peer))


@pytest.mark.parametrize("peer", PEER_NAMES)
def test_peer_train_step(
    benchmark: BenchmarkFixture, settings: Settings, case: Case, peer: str
) -> None:
    benchmark.group = f"train {case}"
    measure(benchmark, settings, case, peer, "train", train_work(case, peer))


@pytest.mark.parametrize("mode", ["infer", "train"])
@pytest.mark.parametrize("peer", PEER_NAMES)
def test_peer_memory(
    benchmark: BenchmarkFixture, memory_probe: CpuProbe, memory_case: Case, peer: str, mode: str
) -> None:
    measure_memory(benchmark, memory_probe, memory_case, peer, mode)
