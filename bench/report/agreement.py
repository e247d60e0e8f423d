"""How well two runs of the same setup agree: entry by entry, each timed figure of one run
against the same figure of the other, and whether each run's confidence intervals cover what
changed between them. Also, within each run: the A/A control, computations that are one and
the same, and implementations that read faster than base by more than their CI allows.

`lora-bench agree RUN1 RUN2` prints it. Two fresh runs of one commit on one machine should
agree within their intervals; where they do not, the intervals do not cover what changes
between setups, and no verdict drawn from one run can be trusted.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bench.report.base import Table, fmt_ci, overlap
from bench.report.dora import dora_comparisons
from bench.report.generation import generation_comparisons
from bench.report.models import model_comparisons
from bench.report.multi import multi_comparisons
from bench.report.verdicts import Comparison
from bench.schema.entries import Paired, TimeEntry
from bench.schema.run import Run

NEAR = 0.05  # two figures "agree" within this
DECODE_MAX_TOKENS = 16
CONTROL_LIMIT = 0.01  # the A/A control should read 1 within this
IDENTICAL = (("merged", "peft_merged"),)  # the same GEMM on a merged weight, two ways
FLOOR = 0.98  # no impl doing base's work or more may read below this, CI and all


Timed = Any  # an entry with `rounds` (Paired) and a `key`: time, model, multi, generation, ...


def identity(e: Timed) -> tuple[str, str, str, str]:
    """What an entry measured, the same in two runs: its kind, case key, impl or variant, and
    mode or phase."""
    who = str(getattr(e, "impl", None) or getattr(e, "variant", ""))
    what = str(getattr(e, "mode", None) or getattr(e, "phase", ""))
    return e.kind, e.key, who, what


def family(e: Timed, run: Run) -> str:
    """The family a table row of `by_family` counts it under: layer entries by function and
    mode, the others by kind."""
    if isinstance(e, TimeEntry):
        return f"layer {run.variant(e.impl)} {e.mode}"
    return e.kind


@dataclass(frozen=True)
class Pair:
    """One timed figure in both runs."""

    first: Timed
    second: Timed

    @property
    def deviation(self) -> float:
        """|second / first - 1| of the ratio to base."""
        return abs(self.second.rounds.ratio / self.first.rounds.ratio - 1)

    @property
    def overlap(self) -> bool:
        return overlap(self.first.rounds.ratio_ci, self.second.rounds.ratio_ci) == "yes"

    @property
    def covered(self) -> bool:
        """The second run's ratio lies in the first run's CI."""
        lo, hi = self.first.rounds.ratio_ci
        return lo <= self.second.rounds.ratio <= hi

    @property
    def decode(self) -> bool:
        return self.first.tokens <= DECODE_MAX_TOKENS


def timed(run: Run) -> list[Timed]:
    """Every entry of the run timed in pairs with its base."""
    return [e for e in run.entries if isinstance(getattr(e, "rounds", None), Paired)]


def pairs(first: Run, second: Run, times_only: bool = True) -> list[Pair]:
    """The entries of both runs, matched by identity: the layer family's time entries, or
    with `times_only` False every family's timed entries."""
    pick = (lambda run: run.times()) if times_only else timed
    theirs = {identity(e): e for e in pick(second)}
    return [Pair(e, theirs[identity(e)]) for e in pick(first) if identity(e) in theirs]


def _share(hits: int, total: int) -> str:
    return f"{hits} of {total} ({100 * hits / total:.0f}%)" if total else "none"


def summary_table(first: Run, second: Run) -> Table:
    matched = pairs(first, second)
    decode = [p for p in matched if p.decode]
    devs = [p.deviation for p in matched]
    rows = [
        ["time entries in both runs", str(len(matched))],
        [f"within {100 * NEAR:g}% of each other", _share(sum(d <= NEAR for d in devs), len(devs))],
        [f"  at decode (T <= {DECODE_MAX_TOKENS})",
         _share(sum(p.deviation <= NEAR for p in decode), len(decode))],
        ["median deviation", f"{100 * statistics.median(devs):.2f}%" if devs else "-"],
        ["95% CIs that overlap", _share(sum(p.overlap for p in matched), len(matched))],
        ["second run's ratio inside the first's CI",
         _share(sum(p.covered for p in matched), len(matched))],
    ]  # fmt: skip
    flips = verdict_flips(first, second)
    rows.append(["verdicts resolved in both runs that flip", _share(flips[0], flips[1])])
    note = (
        "The layer family's time entries (ratio to the base GEMM), matched by case, impl and "
        "mode. Deviation: |second ratio / first ratio - 1|. Two runs of one commit on one "
        "machine should agree: CIs that do not overlap, or a verdict that flips, mean the "
        "intervals do not cover what changes between setups"
    )
    return Table("Agreement of two runs", ["figure", "value"], rows, note)


def by_family_table(first: Run, second: Run) -> Table:
    groups: dict[str, list[Pair]] = {}
    for p in pairs(first, second, times_only=False):
        groups.setdefault(family(p.first, first), []).append(p)
    rows = []
    for name, group in groups.items():
        devs = [p.deviation for p in group]
        rows.append([name, len(group), _share(sum(d <= NEAR for d in devs), len(devs)),
                     f"{100 * statistics.median(devs):.2f}%",
                     _share(sum(p.overlap for p in group), len(group))])  # fmt: skip
    headers = ["family", "entries", f"within {100 * NEAR:g}%", "median deviation",
               "95% CIs overlap"]  # fmt: skip
    return Table("Agreement by family", headers, rows,
                 "every family's ratios to its own base: the base GEMM, the frozen model, "
                 "the frozen module, the quantized base")  # fmt: skip


def control_rows(run: Run, label: str) -> list[list[object]]:
    rows: list[list[object]] = []
    for e in run.times():
        if e.control:
            lo, hi = e.rounds.ratio_ci
            ok = abs(e.ratio_to_base - 1) <= CONTROL_LIMIT
            rows.append([label, "A/A control (base on its own allocation)", e.case, e.mode,
                         f"{e.ratio_to_base:.3f} {fmt_ci((lo, hi))}",
                         "yes" if ok else "no"])  # fmt: skip
    if not any(e.control for e in run.times()):
        rows.append([label, "A/A control", "-", "-", "not measured (an older run)", "-"])
    return rows


def identical_rows(run: Run, label: str) -> list[list[object]]:
    by = {(e.key, e.impl, e.mode): e for e in run.times()}
    rows: list[list[object]] = []
    for key, impl, mode in by:
        for a_name, b_name in IDENTICAL:
            if impl != a_name or (key, b_name, mode) not in by:
                continue
            a, b = by[(key, a_name, mode)], by[(key, b_name, mode)]
            q = a.ratio_to_base / b.ratio_to_base
            rows.append([label, f"{a_name} / {b_name}", a.case, mode, f"{q:.3f}",
                         "yes" if abs(q - 1) <= CONTROL_LIMIT else "no"])  # fmt: skip
    return rows


def below_floor(run: Run) -> list[TimeEntry]:
    """Entries whose whole CI lies below FLOOR: faster than base by more than their rounds
    allow, which only an impl that does less work than base may be."""
    return [e for e in run.times() if e.rounds.ratio_ci[1] < FLOOR]


def within_table(first: Run, second: Run) -> Table:
    rows: list[list[object]] = []
    for label, run in (("first", first), ("second", second)):
        rows += control_rows(run, label)
        rows += identical_rows(run, label)
        for e in below_floor(run):
            figure = f"{e.impl} {e.ratio_to_base:.3f} {fmt_ci(e.rounds.ratio_ci)}"
            rows.append([label, f"below {FLOOR} outside its CI", e.case, e.mode, figure, "no"])
    note = (
        f"Within each run: the A/A control should read 1 within {100 * CONTROL_LIMIT:g}%, and "
        f"two ways of one computation agree within {100 * CONTROL_LIMIT:g}%; an impl whose "
        f"whole CI lies below {FLOOR} reads faster than base, which only one doing less "
        "work than base may"
    )
    return Table("Within each run", ["run", "check", "case", "mode", "figure", "holds"], rows,
                 note)  # fmt: skip


def worst_table(first: Run, second: Run, count: int = 10) -> Table:
    matched = sorted(pairs(first, second), key=lambda p: -p.deviation)[:count]
    rows = [
        [p.first.case, p.first.impl, p.first.mode,
         f"{p.first.ratio_to_base:.3f} {fmt_ci(p.first.rounds.ratio_ci)}",
         f"{p.second.ratio_to_base:.3f} {fmt_ci(p.second.rounds.ratio_ci)}",
         f"{100 * (p.second.ratio_to_base / p.first.ratio_to_base - 1):+.1f}%",
         "yes" if p.overlap else "no"]
        for p in matched
    ]  # fmt: skip
    headers = ["case", "impl", "mode", "first [95% CI]", "second [95% CI]", "change",
               "CIs overlap"]  # fmt: skip
    return Table(f"The {len(rows)} entries that moved most", headers, rows)


def comparisons(run: Run) -> list[Comparison]:
    """Every verdict between variants that the run's tables state."""
    families = (dora_comparisons, model_comparisons, multi_comparisons, generation_comparisons)
    return [c for family in families for c in family(run)]


def verdict_flips(first: Run, second: Run) -> tuple[int, int]:
    """(flips, comparisons resolved in both runs): a comparison of two variants whose
    verdict each run states, and states the other way round."""
    mine = {c.label: c for c in comparisons(first)}
    flips = both = 0
    for c in comparisons(second):
        other = mine.get(c.label)
        if other is None or not (c.resolved and other.resolved):
            continue
        both += 1
        flips += (c.quotient < 1) != (other.quotient < 1)
    return flips, both


def agreement_header(first: Run, second: Run) -> str:
    """Which two runs: when, where, of which commit, on which profile."""

    def said(label: str, run: Run) -> str:
        commit = str(run.commit_info.get("id", ""))[:10] or "an unknown commit"
        dirty = ", with uncommitted changes" if run.commit_info.get("dirty") else ""
        m = run.meta
        return (f"- {label}: {m.created}, {m.device_name}, {m.profile} profile, {m.threads} "
                f"threads, commit {commit}{dirty}")  # fmt: skip

    return f"## lora-bench agree\n\n{said('first', first)}\n{said('second', second)}\n"


def agreement_tables(first: Run, second: Run) -> list[Table]:
    return [summary_table(first, second), by_family_table(first, second),
            within_table(first, second), worst_table(first, second)]  # fmt: skip
