"""A ratio and its 95% confidence interval from paired rounds taken on several independent
setups (each a fresh allocation of the weights, inputs and cache copies), so that the interval
covers what changes from one setup to the next, not only the spread of pairs within one.

Each setup gives the median of its log ratios. The estimate is their mean, and the interval is
Student's t on those medians (S - 1 degrees of freedom), with their variance taken as at least
what the pairs' own spread implies for a median of that many pairs: three setups that agree
by chance do not give an interval narrower than their rounds allow. One setup falls back to
the distribution-free interval of the median of the pairs, which covers that setup only.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from bench.stats.ranks import median_ci

# Student's t, two-sided 95% (the 0.975 quantile), by degrees of freedom.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip
Z975 = 1.959964
MAD_SIGMA = 1.4826  # a normal's sigma per median absolute deviation
MEDIAN_VAR = math.pi / 2  # a median's variance over a mean's, for normal values


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` >= 1 degrees of freedom (beyond the table,
    the first terms of its expansion around the normal's)."""
    if df < 1:
        raise ValueError(f"t needs at least 1 degree of freedom, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def median_variance(logs: Sequence[float]) -> float:
    """The variance of the median of these values as an estimate of their centre, from their
    median absolute deviation (0 for fewer than 2)."""
    n = len(logs)
    if n < 2:
        return 0.0
    med = statistics.median(logs)
    sigma = MAD_SIGMA * statistics.median(abs(v - med) for v in logs)
    return MEDIAN_VAR * sigma**2 / n


@dataclass(frozen=True)
class SetupSummary:
    """A ratio from setups: the estimate, its 95% CI, and what it rests on. `between` is the
    spread (sd, as a fraction) of the setups' medians, 0 with one setup."""

    ratio: float
    low: float
    high: float
    setups: int
    pairs: int
    between: float

    @property
    def ci(self) -> tuple[float, float]:
        return self.low, self.high

    @property
    def reach(self) -> float:
        """How far the CI reaches from the ratio, relative to it."""
        return max(self.high / self.ratio - 1, 1 - self.low / self.ratio)

    @property
    def log_se(self) -> float:
        """The standard error of the log ratio the CI implies (its half-width over the
        quantile it was taken with)."""
        q = t975(self.setups - 1) if self.setups > 1 else Z975
        return (math.log(self.high) - math.log(self.low)) / (2 * q)

    @property
    def df(self) -> int:
        """Degrees of freedom of the CI: setups - 1, or many pairs' worth for one setup."""
        return self.setups - 1 if self.setups > 1 else max(self.pairs - 1, 1)


def by_setup(values: Sequence[float], setups: Sequence[int]) -> dict[int, list[float]]:
    """The values grouped by their setup, in order of first appearance."""
    if len(values) != len(setups):
        raise ValueError(f"{len(values)} values but {len(setups)} setup indices")
    groups: dict[int, list[float]] = {}
    for v, s in zip(values, setups, strict=True):
        groups.setdefault(s, []).append(v)
    return groups


def summarize(ratios: Sequence[float], setups: Sequence[int] = ()) -> SetupSummary:
    """Positive per-pair ratios, each with the index of the setup it ran on (none: one
    setup), summarized as described in the module docstring."""
    if not ratios:
        raise ValueError("a summary needs at least one ratio")
    logs = [math.log(r) for r in ratios]
    groups = by_setup(logs, setups or [0] * len(logs))
    if len(groups) == 1:
        lo, hi = median_ci(ratios)
        return SetupSummary(statistics.median(ratios), lo, hi, 1, len(ratios), 0.0)
    medians = [statistics.median(g) for g in groups.values()]
    s = len(medians)
    centre = statistics.fmean(medians)
    between = statistics.variance(medians)
    within = statistics.fmean(median_variance(g) for g in groups.values())
    half = t975(s - 1) * math.sqrt(max(between, within) / s)
    return SetupSummary(math.exp(centre), math.exp(centre - half), math.exp(centre + half),
                        s, len(logs), math.exp(math.sqrt(between)) - 1)  # fmt: skip


def quotient(a: SetupSummary, b: SetupSummary) -> tuple[float, float, float]:
    """a's ratio over b's, each measured against its own base in its own rounds, with a 95% CI
    (Welch: the two log standard errors added in quadrature, the smaller df): how much slower
    a is than b. A verdict between the two stands only where this CI leaves out 1."""
    d = math.log(a.ratio) - math.log(b.ratio)
    half = t975(min(a.df, b.df)) * math.hypot(a.log_se, b.log_se)
    return math.exp(d), math.exp(d - half), math.exp(d + half)
