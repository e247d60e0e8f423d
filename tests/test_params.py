"""Parameter counts: the seed toy, and the closed form on a grid of sizes."""

from __future__ import annotations

import pytest

from lora_kernels import LoRALinear, count_parameters, linear_total, lora_trainable


def test_seed_toy_counts() -> None:
    counts = count_parameters(LoRALinear(64, 10, rank=4))
    assert (counts.trainable, counts.total) == (296, 946)
    assert counts.fraction == pytest.approx(296 / 946)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rank", [1, 4, 10])
@pytest.mark.parametrize(("in_f", "out_f"), [(64, 10), (96, 288), (384, 96), (17, 33)])
def test_closed_form_matches_module(in_f: int, out_f: int, rank: int, bias: bool) -> None:
    counts = count_parameters(LoRALinear(in_f, out_f, rank, bias=bias, device="meta"))
    assert counts.trainable == lora_trainable(in_f, out_f, rank) == rank * (in_f + out_f)
    assert counts.total == linear_total(in_f, out_f, rank, bias)
