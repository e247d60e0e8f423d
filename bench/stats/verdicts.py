"""What counts as a regression, for `check` and `ab` alike: a time change past the threshold
that is also significant, or a peak-memory growth past both a relative and an absolute margin.

The memory defaults come from the noise of the CPU probe: the same (case, impl, mode)
measured 9 times in 3 processes spread by at most 0.32 MiB, and by at most 3.9% of a peak of
4 MiB or more (bench/NOTES.md).
"""

from __future__ import annotations

ALPHA = 0.01  # a change is significant when its two-sided p-value is below this
MEMORY_REL = 0.05  # peak memory regresses past this growth ...
MEMORY_MIB = 1.0  # ... and past this many MiB
REGRESSION, IMPROVEMENT, SAME = "regression", "improvement", "same"


def time_status(change: float, p_value: float, threshold: float, alpha: float) -> str:
    """`change` is the relative growth of the time (or ratio to base): +0.10 is 10% slower.
    Past the threshold either way AND significant, or the same."""
    if p_value >= alpha or abs(change) <= threshold:
        return SAME
    return REGRESSION if change > 0 else IMPROVEMENT


def memory_status(base_bytes: int, current_bytes: int, rel: float, mib: float) -> str:
    """A growth (or a fall) of the peak past `rel` of the base peak and past `mib` MiB."""
    diff = current_bytes - base_bytes
    if abs(diff) <= mib * 2**20 or abs(diff) <= rel * base_bytes:
        return SAME
    return REGRESSION if diff > 0 else IMPROVEMENT
