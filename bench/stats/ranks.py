"""Rank tests and a confidence interval for the regression gates, in plain Python (no scipy):
Wilcoxon's signed-rank test for paired rounds (`ab`), Mann-Whitney's U test for rounds of two
runs (`check`), and the distribution-free confidence interval of a median."""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Sequence

EXACT_MAX = 60  # exact signed-rank distribution up to this many pairs (without ties)


def normal_two_sided(z: float) -> float:
    """P(|Z| >= |z|) for a standard normal Z."""
    return math.erfc(abs(z) / math.sqrt(2))


def ranks(values: Sequence[float]) -> tuple[list[float], list[int]]:
    """Ranks 1..n of `values`, ties given their mean rank; and the sizes of the tie groups."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    ties = []
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        if j > i:
            ties.append(j - i + 1)
        i = j + 1
    return out, ties


def _signed_rank_counts(n: int) -> list[int]:
    """counts[w]: how many of the 2^n sign patterns give a positive rank sum of w."""
    counts = [1] + [0] * (n * (n + 1) // 2)
    for k in range(1, n + 1):
        for w in range(len(counts) - 1, k - 1, -1):
            counts[w] += counts[w - k]
    return counts


def wilcoxon(diffs: Sequence[float]) -> float:
    """Two-sided p-value of Wilcoxon's signed-rank test that the differences are centred on 0.
    Zero differences are dropped (Wilcoxon's way). Exact for up to EXACT_MAX differences
    without ties; otherwise the normal approximation with tie and continuity corrections.
    1.0 when no difference is left."""
    d = [x for x in diffs if x != 0]
    n = len(d)
    if n == 0:
        return 1.0
    r, ties = ranks([abs(x) for x in d])
    w_plus = sum(rk for rk, x in zip(r, d, strict=True) if x > 0)
    if not ties and n <= EXACT_MAX:
        counts = _signed_rank_counts(n)
        w = round(min(w_plus, n * (n + 1) / 2 - w_plus))
        return min(1.0, 2 * sum(counts[: w + 1]) / 2**n)
    mean = n * (n + 1) / 4
    var = n * (n + 1) * (2 * n + 1) / 24 - sum(t**3 - t for t in ties) / 48
    if var <= 0:
        return 1.0
    return normal_two_sided(max(0.0, abs(w_plus - mean) - 0.5) / math.sqrt(var))


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Mann-Whitney's U test that `a` and `b` come from one distribution:
    the normal approximation with tie and continuity corrections (fine from about 8 values a
    side; below that the p-value is only indicative). 1.0 when a side is empty."""
    n1, n2 = len(a), len(b)
    if not n1 or not n2:
        return 1.0
    r, ties = ranks([*a, *b])
    u = sum(r[:n1]) - n1 * (n1 + 1) / 2
    n = n1 + n2
    var = n1 * n2 / 12 * ((n + 1) - sum(t**3 - t for t in ties) / (n * (n - 1)))
    if var <= 0:
        return 1.0
    return normal_two_sided(max(0.0, abs(u - n1 * n2 / 2) - 0.5) / math.sqrt(var))


@functools.lru_cache(maxsize=4096)
def _median_ci_index(n: int, level: float) -> int:
    """The largest k >= 1 whose order statistics x(k), x(n+1-k) cover the median of n values
    with binomial probability at least `level` (1 when no k does). Exact sums up to 1000
    values, log-gamma terms beyond (2^-n underflows a float)."""
    below = 0.0  # P(Binomial(n, 1/2) <= k - 1)
    k = 0
    while k < n // 2:
        if n <= 1000:
            term = math.comb(n, k) / 2**n
        else:
            term = math.exp(
                math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)
            )
        if 1 - 2 * (below + term) < level:
            break
        below, k = below + term, k + 1
    return max(k, 1)


def median_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median: the order statistics x(k) and
    x(n+1-k) with the largest k whose binomial coverage is at least `level`. Too few values
    for that give (min, max)."""
    x = sorted(values)
    n = len(x)
    if n == 0:
        raise ValueError("median_ci needs at least one value")
    k = _median_ci_index(n, level)
    return x[k - 1], x[n - k]


def ci_reach(center: float, lo: float, hi: float) -> float:
    """How far a confidence interval [lo, hi] reaches from its positive `center`, relative to
    it: the larger of hi / center - 1 and 1 - lo / center."""
    return max(hi / center - 1, 1 - lo / center)


def shift_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Confidence interval of the shift from `a` to `b` (how much b's values exceed a's), the
    one that goes with Mann-Whitney's test: order statistics of the pairwise differences b - a,
    by the normal approximation of U's distribution. Too few values give the range of the
    differences."""
    m, n = len(a), len(b)
    if not m or not n:
        raise ValueError("shift_ci needs values on both sides")
    diffs = sorted(y - x for x in a for y in b)
    z = statistics.NormalDist().inv_cdf(0.5 + level / 2)
    k = max(1, math.floor(m * n / 2 - z * math.sqrt(m * n * (m + n + 1) / 12)))
    return diffs[k - 1], diffs[m * n - k]


def ratio_summary(num: Sequence[float], den: Sequence[float]) -> tuple[float, float, float, float]:
    """Paired rounds num[i] against den[i]: (median ratio, its 95% CI low and high, Wilcoxon's
    two-sided p on the log ratios)."""
    logs = [math.log(a / b) for a, b in zip(num, den, strict=True)]
    lo, hi = median_ci(logs)
    return math.exp(statistics.median(logs)), math.exp(lo), math.exp(hi), wilcoxon(logs)
