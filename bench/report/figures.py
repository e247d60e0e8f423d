"""Figures derived from a run's entries, shared by its tables, compare, check and plot."""

from __future__ import annotations

import statistics

from bench.schema.entries import TimeEntry, UserModelEntry
from bench.schema.run import Run


def lora_only(run: Run, items: list) -> list:
    """The entries of LoRA impls and base: DoRA's have their own tables (bench/dora_tables)."""
    return [e for e in items if run.variant(e.impl) == "lora"]


def case_base_s(items: list[TimeEntry]) -> dict[str, float]:
    """One base time per case: the median of the base medians of all its benchmarks."""
    per_case: dict[str, list[float]] = {}
    for e in items:
        per_case.setdefault(e.case, []).append(e.base_median_s)
    return {case: statistics.median(v) for case, v in per_case.items()}


def paired_times(items: list[TimeEntry]) -> dict[tuple[str, str], float]:
    """Seconds per op of each (case, impl): its paired ratio x the case's one base time.
    Medians of benchmarks timed minutes apart drift on a shared machine; within a case,
    these times stand in the same relation as the paired ratios."""
    base = case_base_s(items)
    return {(e.case, e.impl): e.ratio_to_base * base[e.case] for e in items}


def time_index(run: Run) -> dict[tuple[str, str, str], TimeEntry | UserModelEntry]:
    """Timed entries by (case key without device, impl, mode): how runs are matched. A
    `lora-bench model` entry's impl is its variant (and "compiled"), its mode the phase."""
    timed: list[TimeEntry | UserModelEntry] = [*run.times(), *run.user_model()]
    return {(e.key, e.impl, e.mode): e for e in timed}
