"""Timing helpers: inner-loop sizing, rounds, quartiles, paired ratios and peaks."""

from __future__ import annotations

import pytest

from bench.harness.rounds import choose_inner, choose_rounds
from bench.harness.timing import PairedTimer, Peaks, make_round, warm_up
from bench.schema.entries import Paired, quartiles


def test_choose_inner_makes_rounds_of_at_least_1ms() -> None:
    assert choose_inner(2e-3) == 1
    assert choose_inner(1e-3) == 1
    assert choose_inner(3e-4) == 4
    assert choose_inner(1e-6) == 1000


def test_choose_rounds_is_clamped() -> None:
    assert choose_rounds(0.01, budget_s=1.0, min_rounds=5, max_rounds=100) == 50
    assert choose_rounds(1.0, budget_s=1.0, min_rounds=5, max_rounds=100) == 5
    assert choose_rounds(1e-6, budget_s=1.0, min_rounds=5, max_rounds=30) == 30


def test_make_round_runs_inner_times() -> None:
    calls = []
    make_round(lambda: calls.append(1), 7, "cpu")()
    assert len(calls) == 7
    assert warm_up(lambda: calls.append(1), "cpu", min_s=0.0) >= 0
    assert len(calls) >= 9


def test_quartiles() -> None:
    assert quartiles([1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 3.0, 4.0)
    assert quartiles([2.5]) == (2.5, 2.5, 2.5)


def test_paired_ratio_is_median_of_pair_ratios() -> None:
    # Drift: base and impl both slow down over time; each pair's ratio stays 1.1.
    base = [1.0, 2.0, 3.0, 4.0, 5.0]
    impl = [1.1 * b for b in base]
    paired = Paired(inner=3, impl_s=impl, base_s=base)
    assert paired.ratio == pytest.approx(1.1)
    assert paired.ratio_iqr == pytest.approx(0.0, abs=1e-12)
    # The ratio of separate medians would mislead here; pairing does not.
    assert paired.impl_median_s / paired.base_median_s == pytest.approx(1.1)
    noisy = Paired(1, impl_s=[1.0, 1.2, 1.0, 1.5], base_s=[1.0, 1.0, 1.0, 1.0])
    assert noisy.ratio == pytest.approx(1.1)
    assert noisy.ratio_iqr == pytest.approx(0.275)


def test_paired_rejects_unpaired_rounds() -> None:
    with pytest.raises(ValueError, match="as many base as impl rounds"):
        Paired(1, impl_s=[1.0, 2.0], base_s=[1.0])


def test_paired_timer_alternates_base_then_impl() -> None:
    order: list[str] = []
    timer = PairedTimer(lambda: order.append("impl"), lambda: order.append("base"), "cpu")
    order.clear()  # drop the warm-up calls
    paired = timer.run(3)
    inner = timer.inner
    assert order == (["base"] * inner + ["impl"] * inner) * 3
    assert len(paired.impl_s) == len(paired.base_s) == 3
    assert paired.inner == inner


def test_roofline_floor() -> None:
    peaks = Peaks(gemm_flops_per_s=1e11, copy_bytes_per_s=1e10, gemm_n=2048, copy_bytes=2**28)
    assert peaks.floor_s(flops=10**11, nbytes=10**9) == pytest.approx(1.0)  # compute-bound
    assert peaks.floor_s(flops=10**9, nbytes=10**10) == pytest.approx(1.0)  # memory-bound
    assert peaks.as_dict()["gemm_gflops"] == pytest.approx(100.0)
