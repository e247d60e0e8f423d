"""The gates' statistics against values from scipy.stats (not a dependency: figures only),
and the verdict rules of check and ab."""

from __future__ import annotations

import math
import random

import pytest

from bench.cli.options import parse_alpha, parse_fraction
from bench.schema.io import ResultError
from bench.stats.ranks import (
    mann_whitney,
    median_ci,
    ranks,
    ratio_summary,
    shift_ci,
    wilcoxon,
)
from bench.stats.verdicts import memory_status, time_status


def test_ranks_average_ties() -> None:
    assert ranks([3.0, 1.0, 3.0, 2.0]) == ([3.5, 1.0, 3.5, 2.0], [2])


@pytest.mark.parametrize(
    ("diffs", "p"),
    [
        ([1, 2, 3, -4, 5], 0.4375),  # exact: 2 * 7 / 32
        ([0.5, -0.2, 0.3, 0.9, -0.1, 0.4, 0.7, 0.8, 0.6, 1.0, 1.1, -0.35], 0.00927734375),
        ([0.01 * ((i * 7) % 13 - 3) for i in range(70)], 5.258889491651825e-07),  # ties: normal
    ],
)
def test_wilcoxon_matches_scipy(diffs: list[float], p: float) -> None:
    assert wilcoxon(diffs) == pytest.approx(p, rel=1e-6)


def test_wilcoxon_edges() -> None:
    assert wilcoxon([]) == 1.0
    assert wilcoxon([0.0, 0.0]) == 1.0  # zero differences are dropped
    assert wilcoxon([0.1] * 8) < 0.01  # 8 pairs the same way: 2 / 256
    assert wilcoxon([0.1] * 7) > 0.01  # 7 cannot reach 1%


@pytest.mark.parametrize(
    ("a", "b", "p"),
    [
        ([1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7], [1.25, 1.35, 1.45, 1.55, 1.65, 1.75, 1.85,
                                                     1.95, 2.05], 0.048539622897320577),
        ([1, 1, 2, 2, 3, 3, 4, 4], [2, 3, 3, 4, 4, 5, 5, 6], 0.04757643517835389),  # ties
    ],
)  # fmt: skip
def test_mann_whitney_matches_scipy(a: list[float], b: list[float], p: float) -> None:
    assert mann_whitney(a, b) == pytest.approx(p, rel=1e-9)


def test_mann_whitney_edges() -> None:
    assert mann_whitney([], [1.0]) == 1.0
    assert mann_whitney([2.0] * 5, [2.0] * 5) == 1.0


def test_median_ci_is_the_binomial_interval() -> None:
    assert median_ci(list(range(1, 21))) == (6, 15)  # the textbook 95% interval for n = 20
    assert median_ci([3.0, 1.0, 2.0]) == (1.0, 3.0)  # too few values: the range
    for n in (1000, 1001, 5000):  # exact sums, then log-gamma terms: near n/2 - 0.98 sqrt(n)
        k = median_ci(list(range(n)))[0] + 1
        assert abs(k - (n / 2 - 0.98 * n**0.5)) <= 1.5
    with pytest.raises(ValueError, match="at least one"):
        median_ci([])


def test_ratio_summary_finds_a_10_percent_change() -> None:
    rng = random.Random(0)
    base = [1e-3 * (1 + 0.03 * rng.random()) for _ in range(30)]
    cur = [b * 1.1 * (1 + 0.01 * rng.gauss(0, 1)) for b in base]
    ratio, lo, hi, p = ratio_summary(cur, base)
    assert lo < ratio < hi
    assert ratio == pytest.approx(1.1, rel=0.01)
    assert p < 1e-6
    same = ratio_summary(base, base)
    assert same[:3] == (1.0, 1.0, 1.0) and same[3] == 1.0
    assert math.isfinite(ratio_summary([2.0], [1.0])[3])


def test_time_verdict_needs_significance_and_a_ci_that_reaches_the_threshold() -> None:
    assert time_status(0.15, (0.12, 0.18), 0.001, 0.10, 0.01) == "regression"
    assert time_status(-0.15, (-0.18, -0.12), 0.001, 0.10, 0.01) == "improvement"
    assert time_status(0.15, (0.12, 0.18), 0.05, 0.10, 0.01) == "same"  # not significant
    # A change of the threshold whose estimate fell just under it is caught ...
    assert time_status(0.048, (0.041, 0.056), 1e-9, 0.05, 0.01) == "regression"
    assert time_status(-0.048, (-0.056, -0.041), 1e-9, 0.05, 0.01) == "improvement"
    # ... one whose CI stays under the threshold is not, however significant ...
    assert time_status(0.033, (0.026, 0.043), 1e-9, 0.05, 0.01) == "same"
    # ... nor one under half the threshold, however wide its CI.
    assert time_status(0.02, (0.001, 0.09), 1e-9, 0.05, 0.01) == "same"


def test_shift_ci_brackets_the_shift() -> None:
    a = [0.01 * i for i in range(30)]
    b = [x + 0.5 for x in a]
    lo, hi = shift_ci(a, b)
    assert lo < 0.5 < hi and hi - lo < 0.2
    lo, hi = shift_ci(a, a)
    assert lo < 0 < hi
    with pytest.raises(ValueError, match="both sides"):
        shift_ci([], a)


def test_memory_verdict_needs_both_margins() -> None:
    mib = 2**20
    assert memory_status(10 * mib, 20 * mib, 0.05, 1.0) == "regression"
    assert memory_status(10 * mib, 10 * mib + mib // 2, 0.05, 1.0) == "same"  # 5%, < 1 MiB
    assert memory_status(100 * mib, 104 * mib, 0.05, 1.0) == "same"  # 4 MiB, < 5%
    assert memory_status(0, 2 * mib, 0.05, 1.0) == "regression"  # from nothing
    assert memory_status(20 * mib, 10 * mib, 0.05, 1.0) == "improvement"


@pytest.mark.parametrize(("text", "value"), [("10%", 0.1), ("0.25", 0.25), ("150%", 1.5)])
def test_parse_fraction(text: str, value: float) -> None:
    assert parse_fraction(text, "--x") == pytest.approx(value)


@pytest.mark.parametrize("text", ["fast", "0", "-5%", "2000%"])
def test_parse_fraction_refuses(text: str) -> None:
    with pytest.raises(ResultError, match="--x must"):
        parse_fraction(text, "--x")
    with pytest.raises(ResultError, match="--alpha"):
        parse_alpha("0.9")
