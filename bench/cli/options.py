"""Options that several commands share, parsed by one helper wherever they appear."""

from __future__ import annotations

import argparse

from bench.plugin.options import non_negative_number
from bench.schema.io import ResultError
from bench.stats.verdicts import ALPHA, MEMORY_MIB, MEMORY_REL


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
        type=non_negative_number,
        default=MEMORY_MIB,
        help=f"absolute peak-memory threshold, also needed (default {MEMORY_MIB:g} MiB)",
    )


def gate_thresholds(args: argparse.Namespace) -> tuple[float, float, float, float]:
    """(time threshold, alpha, memory rel, memory MiB) from the options; ResultError if bad."""
    return (
        parse_fraction(args.max_slowdown, "--max-slowdown"),
        parse_alpha(args.alpha),
        parse_fraction(args.max_memory_growth, "--max-memory-growth"),
        args.memory_mib,
    )
