"""The gates' statistics against values from scipy.stats (not a dependency: figures only),
and the verdict rules of check and ab."""

from __future__ import annotations

import math
import random
import statistics

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
from bench.stats.setups import quotient, summarize, t975
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


@pytest.mark.parametrize(("df", "t"), [(1, 12.706), (2, 4.303), (5, 2.571), (30, 2.042),
                                       (31, 2.0395), (60, 2.0003), (1000, 1.9623)])  # fmt: skip
def test_t975_matches_scipy(df: int, t: float) -> None:
    assert t975(df) == pytest.approx(t, abs=2e-3)


def test_one_setup_is_the_median_and_its_distribution_free_interval() -> None:
    ratios = [1.0 + 0.01 * ((7 * i) % 20) for i in range(20)]
    s = summarize(ratios)
    assert (s.ratio, s.ci, s.setups) == (statistics.median(ratios), median_ci(ratios), 1)
    assert summarize(ratios, [0] * 20) == s


def test_setups_that_disagree_widen_the_interval_by_their_spread() -> None:
    """Each setup sure of itself (no spread within), the setups apart: the CI is Student's t
    over their medians, not the pairs' order statistics."""
    medians = [1.00, 1.02, 0.99, 1.03]
    ratios = [m for m in medians for _ in range(10)]
    s = summarize(ratios, [i for i in range(4) for _ in range(10)])
    logs = [math.log(m) for m in medians]
    half = 3.182 * statistics.stdev(logs) / 2
    assert s.ratio == pytest.approx(math.exp(statistics.fmean(logs)))
    assert s.ci == pytest.approx((s.ratio * math.exp(-half), s.ratio * math.exp(half)), rel=1e-3)
    assert s.between == pytest.approx(math.exp(statistics.stdev(logs)) - 1)


def test_setups_that_agree_by_chance_keep_the_pairs_own_spread() -> None:
    """Four setups with one median but noisy pairs: the CI is what the pairs allow for a
    median of that many, not zero."""
    pattern = [0.9, 1.0, 1.1, 0.95, 1.05]
    ratios = [r for _ in range(4) for r in pattern]
    s = summarize(ratios, [k for k in range(4) for _ in pattern])
    assert s.between == 0.0
    assert s.reach > 0.02


def test_setup_intervals_cover_what_changes_between_setups() -> None:
    """Simulated runs of 4 setups, each shifted by its own placement (sd 3%) with pairs of
    sd 4% around it: the setups' 95% CI covers the true ratio in about 95% of runs; the
    pairs' pooled interval, blind to the shifts, in far fewer."""
    rng = random.Random(1)
    covered = pooled = 0
    runs = 400
    for _ in range(runs):
        shifts = [rng.gauss(0, 0.03) for _ in range(4)]
        logs = [s + rng.gauss(0, 0.04) for s in shifts for _ in range(15)]
        setups = [k for k in range(4) for _ in range(15)]
        ratios = [math.exp(v) for v in logs]
        lo, hi = summarize(ratios, setups).ci
        covered += lo <= 1 <= hi
        plo, phi = median_ci(ratios)
        pooled += plo <= 1 <= phi
    assert 0.90 <= covered / runs <= 0.995
    assert pooled / runs < 0.75


def test_quotient_of_two_ratios() -> None:
    a = summarize([1.10, 1.11, 1.09] * 4, [k for k in range(4) for _ in range(3)])
    b = summarize([1.00, 1.01, 0.99] * 4, [k for k in range(4) for _ in range(3)])
    q, lo, hi = quotient(a, b)
    assert q == pytest.approx(a.ratio / b.ratio)
    assert lo > 1, "10% apart with every pair within 1%: resolved"
    q, lo, hi = quotient(a, a)
    assert q == pytest.approx(1.0) and lo < 1 < hi


def test_summarize_refuses_what_it_cannot_use() -> None:
    with pytest.raises(ValueError, match="at least one"):
        summarize([])
    with pytest.raises(ValueError, match="setup indices"):
        summarize([1.0, 1.1], [0])
    with pytest.raises(ValueError, match="degree of freedom"):
        t975(0)
