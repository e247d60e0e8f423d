"""What counts as a regression, for `check` and `ab` alike: a time change past the threshold
that is also significant, or a peak-memory growth past both a relative and an absolute margin.

The memory defaults come from the noise of the CPU probe: the same (case, impl, mode)
measured 9 times in 3 processes spread by at most 0.32 MiB, and by at most 3.9% of a peak of
4 MiB or more (bench/NOTES.md).
"""

from __future__ import annotations

import argparse

from bench.results import ResultError

ALPHA = 0.01  # a change is significant when its two-sided p-value is below this
MEMORY_REL = 0.05  # peak memory regresses past this growth ...
MEMORY_MIB = 1.0  # ... and past this many MiB
REGRESSION, IMPROVEMENT, SAME = "regression", "improvement", "same"


def parse_fraction(text: str, option: str, high: float = 10.0) -> float:
    """'10%' or '0.1' -> 0.1; must be in (0, high]."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ResultError(f"{option} must look like 10% or 0.1, got {text!r}") from None
    if not 0 < value <= high:
        raise ResultError(f"{option} must be in (0%, {100 * high:g}%], got {text!r}")
    return value


def parse_alpha(text: str) -> float:
    """A significance level in (0, 0.5]."""
    return parse_fraction(text, "--alpha", high=0.5)


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


def add_gate_options(parser: argparse.ArgumentParser) -> None:
    """The thresholds `check` and `ab` share."""
    parser.add_argument("--max-slowdown", default="10%", help="time threshold (default 10%%)")
    parser.add_argument("--alpha", default=str(ALPHA), help=f"significance level (default {ALPHA})")
    parser.add_argument(
        "--max-memory-growth",
        default=f"{100 * MEMORY_REL:g}%",
        help=f"relative peak-memory threshold (default {100 * MEMORY_REL:g}%%)",
    )
    parser.add_argument(
        "--memory-mib",
        type=float,
        default=MEMORY_MIB,
        help=f"absolute peak-memory threshold, also needed (default {MEMORY_MIB:g} MiB)",
    )


def gate_thresholds(args: argparse.Namespace) -> tuple[float, float, float, float]:
    """(time threshold, alpha, memory rel, memory MiB) from the options; ResultError if bad."""
    if args.memory_mib < 0:
        raise ResultError(f"--memory-mib must be >= 0, got {args.memory_mib}")
    return (
        parse_fraction(args.max_slowdown, "--max-slowdown"),
        parse_alpha(args.alpha),
        parse_fraction(args.max_memory_growth, "--max-memory-growth"),
        args.memory_mib,
    )
