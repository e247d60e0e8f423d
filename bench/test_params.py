"""Trainable and total parameters of LoRALinear across shapes and ranks, against the closed
form r·(in + out). The time shown is that of building the module on the meta device."""

from __future__ import annotations

from itertools import product

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.harness.cases import RANKS, SHAPES
from bench.harness.runner import Harness
from bench.schema.entries import ParamsEntry
from lora_kernels import LoRALinear, count_parameters, linear_total, lora_trainable

GRID = [
    (shape, rank)
    for shape, rank in product(SHAPES, RANKS)
    if rank <= min(SHAPES[shape].in_features, SHAPES[shape].out_features)
]


@pytest.mark.parametrize(("shape", "rank"), GRID, ids=[f"{s} r={r}" for s, r in GRID])
def test_params(benchmark: BenchmarkFixture, harness: Harness, shape: str, rank: int) -> None:
    s = SHAPES[shape]

    def count() -> object:
        layer = LoRALinear(s.in_features, s.out_features, rank, bias=s.bias, device="meta")
        return count_parameters(layer)

    counts = benchmark.pedantic(count, rounds=3)
    assert counts.trainable == lora_trainable(s.in_features, s.out_features, rank)
    assert counts.total == linear_total(s.in_features, s.out_features, rank, s.bias)
    benchmark.group = "params"
    entry = ParamsEntry(
        fullname=harness.nodeid,
        case=f"{shape} r={rank}",
        shape=shape,
        in_features=s.in_features,
        out_features=s.out_features,
        rank=rank,
        bias=s.bias,
        trainable=counts.trainable,
        total=counts.total,
    )
    harness.record(benchmark, entry)
