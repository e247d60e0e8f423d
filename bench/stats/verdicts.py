"""What counts as a regression, for `check` and `ab` alike: a significant time change whose
confidence interval reaches the threshold, or a peak-memory growth past both a relative and an
absolute margin.

The memory defaults come from the noise of the CPU probe: the same (case, impl, mode)
measured 9 times in 3 processes spread by at most 0.32 MiB, and by at most 3.9% of a peak of
4 MiB or more (bench/NOTES.md).
"""

from __future__ import annotations

ALPHA = 0.01  # a change is significant when its two-sided p-value is below this
MEMORY_REL = 0.05  # peak memory regresses past this growth ...
MEMORY_MIB = 1.0  # ... and past this many MiB
REGRESSION, IMPROVEMENT, SAME = "regression", "improvement", "same"
NOT_JUDGED = "not judged"  # a change at a case whose A/A control is off


def time_status(
    change: float, ci: tuple[float, float], p_value: float, threshold: float, alpha: float
) -> str:
    """`change` is the relative growth of the time (or ratio to base): +0.10 is 10% slower;
    `ci` its 95% confidence interval, as changes too. A regression (or improvement) when the
    change is significant, past half the threshold, and its CI reaches the threshold: a
    change of the threshold or more is caught although its estimate falls either side of
    the threshold, and one under half the threshold never is."""
    if p_value >= alpha or abs(change) <= threshold / 2:
        return SAME
    if change > 0 and ci[1] >= threshold:
        return REGRESSION
    if change < 0 and ci[0] <= -threshold:
        return IMPROVEMENT
    return SAME


def memory_status(base_bytes: int, current_bytes: int, rel: float, mib: float) -> str:
    """A growth (or a fall) of the peak past `rel` of the base peak and past `mib` MiB."""
    diff = current_bytes - base_bytes
    if abs(diff) <= mib * 2**20 or abs(diff) <= rel * base_bytes:
        return SAME
    return REGRESSION if diff > 0 else IMPROVEMENT


def control_off(ratio: float, threshold: float) -> bool:
    """Whether an A/A control (the same work on both sides, apart only in where its tensors
    sit or which process runs it) reads past half the gate's threshold: setups alone then
    move that case's ratios as far as a change the gate would call, so no change there can be
    told from them (time_status never calls a change under half the threshold)."""
    return abs(ratio - 1) > threshold / 2
