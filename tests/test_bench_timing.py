"""Timing helpers: inner-loop sizing, rounds, quartiles, paired ratios and peaks."""

from __future__ import annotations

import itertools
import math

import pytest

from bench.harness.rounds import (
    BUDGET,
    PAIRS,
    STOPS,
    SURE,
    Budget,
    choose_inner,
    ci_halfwidth,
    stop_reason,
)
from bench.harness.timing import PairedTimer, Peaks, base_first, make_round, warm_up
from bench.schema.decode import CHOICES
from bench.schema.entries import Paired, quartiles


def test_choose_inner_makes_rounds_of_at_least_1ms() -> None:
    assert choose_inner(2e-3) == 1
    assert choose_inner(1e-3) == 1
    assert choose_inner(3e-4) == 4
    assert choose_inner(1e-6) == 1000


def test_rounds_stop_when_the_ratio_is_sure() -> None:
    budget = Budget(seconds=10.0, min_pairs=5, max_pairs=1000, target=0.01)
    tight = [1.0 + 0.001 * (i % 3) for i in range(30)]
    assert stop_reason(tight[:4], 0.1, budget) is None  # fewer than min_pairs
    assert stop_reason(tight[:5], 0.1, budget) is None  # 5 values: no 95% CI yet
    assert stop_reason(tight[:9], 0.1, budget) == SURE
    wide = [1.0, 1.2] * 20
    assert stop_reason(wide, 0.1, budget) is None  # still wide, time left
    assert stop_reason(wide, 10.0, budget) == BUDGET
    assert stop_reason(wide, 0.1, Budget(10.0, 5, 40, 0.01)) == PAIRS
    assert stop_reason(tight, 99.0, budget) == SURE  # sure wins over an ended budget


def test_ci_halfwidth_is_relative_to_the_median() -> None:
    assert ci_halfwidth([1.0] * 5) == math.inf
    assert ci_halfwidth([2.0] * 20) == 0.0
    values = [1.0 + 0.01 * i for i in range(20)]  # median 1.095; CI x(6), x(15) = 1.05, 1.14
    assert ci_halfwidth(values) == pytest.approx(max(1.14 / 1.095 - 1, 1 - 1.05 / 1.095))


@pytest.mark.parametrize(
    "kwargs",
    [{"seconds": 0.0}, {"seconds": -1.0}, {"seconds": math.nan}, {"target": 0.0},
     {"target": math.inf}, {"min_pairs": 0}, {"min_pairs": 9, "max_pairs": 8}, {"setups": 0},
     {"setups": 4}],
)  # fmt: skip
def test_budget_refuses_what_cannot_stop(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="budget"):
        Budget(**{"seconds": 1.0, "min_pairs": 3, "max_pairs": 9, **kwargs})


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


def test_paired_timer_takes_both_orders_by_turns() -> None:
    """base impl, impl base, base impl: a round's place in its pair falls on both sides."""
    order: list[str] = []
    timer = PairedTimer([(lambda: order.append("impl"), lambda: order.append("base"))], "cpu")
    order.clear()  # drop the warm-up calls
    paired = timer.run(Budget(seconds=60.0, min_pairs=3, max_pairs=3))
    inner = timer.inner
    base, impl = ["base"] * inner, ["impl"] * inner
    assert order == base + impl + impl + base + base + impl
    assert len(paired.impl_s) == len(paired.base_s) == 3
    assert paired.inner == inner and paired.setups == []
    assert paired.stopped == PAIRS and paired.target == 0.01


def test_pytest_benchmark_s_pedantic_and_our_loop_make_the_same_pairs() -> None:
    """pedantic calls before_impl, then impl_round, `rounds` times; `run` finishes the pair
    an impl-first round left open and goes on whole pairs at a time."""
    order: list[str] = []
    setups = [(lambda s=s: order.append(f"impl{s}"), lambda s=s: order.append(f"base{s}"))
              for s in range(2)]  # fmt: skip
    timer = PairedTimer(setups, "cpu", per_call_s=1.0)  # inner 1, no warm-up
    for _ in range(3):
        timer.before_impl()
        timer.impl_round()
    paired = timer.run(Budget(seconds=60.0, min_pairs=4, max_pairs=4, setups=2))
    assert order == ["base0", "impl0", "impl1", "base1", "impl0", "base0", "base1", "impl1"]
    assert paired.setups == [0, 1, 0, 1]


def test_base_first_alternates_within_each_setup() -> None:
    for setups in (1, 2, 3, 4):
        for s in range(setups):
            turns = [base_first(k, setups) for k in range(s, 8 * setups, setups)]
            assert turns == [turns[0], not turns[0]] * 4, (setups, s)


def test_paired_timer_stops_once_sure() -> None:
    """Work whose ratio is exactly known stops at the first pair count with a 95% CI; a
    ratio that alternates far stops at the end of its budget."""
    timer = PairedTimer([(lambda: None, lambda: None)], "cpu")
    timer.impl_s, timer.base_s, timer.setups = [2.0] * 6, [1.0] * 6, [0] * 6
    timer.started = 0.0
    assert timer.run(Budget(600.0, 3, 1000)).stopped == SURE
    sway = itertools.cycle([0.5, 2.0])
    timer = PairedTimer([(lambda: [sum(range(int(5000 * next(sway))))], lambda: None)], "cpu")
    paired = timer.run(Budget(seconds=0.05, min_pairs=3, max_pairs=10**6, target=1e-6))
    assert paired.stopped == BUDGET


def test_rounds_over_setups_stop_only_after_whole_sweeps() -> None:
    budget = Budget(seconds=10.0, min_pairs=6, max_pairs=1000, target=0.05, setups=3)
    tight = [1.0 + 0.001 * (i % 2) for i in range(12)]
    setups = [i % 3 for i in range(12)]
    assert stop_reason(tight[:7], 0.1, budget, setups[:7]) is None  # a sweep under way
    assert stop_reason(tight[:6], 0.1, budget, setups[:6]) is None  # 2 pairs a setup: no CI
    assert stop_reason(tight[:9], 0.1, budget, setups[:9]) == SURE
    apart = [1.0, 1.2, 1.4] * 4  # each setup is sure of itself; together they are not
    assert stop_reason(apart, 0.1, budget, setups) is None
    assert stop_reason(apart, 11.0, budget, setups) == BUDGET


def test_roofline_floor() -> None:
    peaks = Peaks(gemm_flops_per_s=1e11, copy_bytes_per_s=1e10, gemm_n=2048, copy_bytes=2**28)
    assert peaks.floor_s(flops=10**11, nbytes=10**9) == pytest.approx(1.0)  # compute-bound
    assert peaks.floor_s(flops=10**9, nbytes=10**10) == pytest.approx(1.0)  # memory-bound
    assert peaks.as_dict()["gemm_gflops"] == pytest.approx(100.0)


def test_the_reader_accepts_every_stop_the_rule_gives() -> None:
    assert CHOICES["stopped"] == STOPS
