"""Compare two runs case by case, e.g. CPU against CUDA: times and the speed-up of B over A."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.report.base import MODES_ORDER, Table, fmt_ci, fmt_seconds, overlap
from bench.report.figures import paired_times
from bench.schema.io import ResultError
from bench.schema.run import Run


@dataclass(frozen=True)
class Pair:
    key: str
    impl: str
    mode: str
    a_s: float
    b_s: float
    a_ci: tuple[float, float]  # 95% CI of each run's ratio to its own base
    b_ci: tuple[float, float]

    @property
    def speedup(self) -> float:
        """How many times faster B is than A."""
        return self.a_s / self.b_s


def _seconds(run: Run) -> dict[tuple[str, str, str], tuple[float, tuple[float, float]]]:
    """Per (key, impl, mode): paired ratio x the case's one base time, as the tables show,
    and the 95% CI of the ratio; a `lora-bench model` variant's seconds per step by phase."""
    out = {}
    for mode in MODES_ORDER:
        items = run.times(mode)
        times = paired_times(items)
        out.update(
            {(e.key, e.impl, mode): (times[(e.case, e.impl)], e.rounds.ratio_ci) for e in items}
        )
    # `lora-bench model`: seconds per step (prefill, decode or a training step) of each variant
    out.update({(e.key, e.label, e.phase): (e.per_step_s, e.rounds.ratio_ci)
                for e in run.user_model()})  # fmt: skip
    return out


Ident = tuple[str, str, str]  # (case key, impl, mode)


def pair_runs(a: Run, b: Run) -> tuple[list[Pair], list[Ident], list[Ident]]:
    """(pairs, ids only in A, ids only in B); ResultError when nothing can be matched."""
    sa, sb = _seconds(a), _seconds(b)
    common = sa.keys() & sb.keys()
    if not common:
        raise ResultError(
            f"no case is in both runs (profiles {a.meta.profile!r} and {b.meta.profile!r}); "
            "compare runs of one profile with a dtype in common"
        )
    pairs = [Pair(*k, sa[k][0], sb[k][0], sa[k][1], sb[k][1]) for k in common]
    pairs.sort(key=lambda p: (p.mode, p.key, b.impl_rank(p.impl)))

    return pairs, sorted(sa.keys() - sb.keys()), sorted(sb.keys() - sa.keys())


def run_label(run: Run) -> str:
    """'cuda' or 'cpu, 2 threads': enough to tell the two sides of a comparison apart."""
    meta = run.meta
    return meta.device if meta.device == "cuda" else f"cpu, {meta.threads} threads"


def one_sided(ids: list[Ident]) -> str:
    """The (key, impl, mode) ids, or when there are many, how many cases each impl and mode
    has on one side only."""
    if len(ids) <= 10:
        return "; ".join(" ".join(i) for i in ids)
    groups: dict[str, int] = {}
    for _, impl, mode in ids:
        groups[f"{impl} {mode}"] = groups.get(f"{impl} {mode}", 0) + 1
    return "; ".join(f"{k} ({n} cases)" for k, n in sorted(groups.items()))


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def compare_tables(a: Run, b: Run) -> tuple[list[Table], list[Ident], list[Ident]]:
    """Per-case table, geometric-mean table per impl, and the one-sided ids."""
    pairs, only_a, only_b = pair_runs(a, b)
    da, db = run_label(a), run_label(b)
    rows = [
        [p.key, p.impl, p.mode, fmt_seconds(p.a_s), fmt_seconds(p.b_s), f"{p.speedup:.2f}x",
         fmt_ci(p.a_ci), fmt_ci(p.b_ci), overlap(p.a_ci, p.b_ci)]
        for p in pairs
    ]  # fmt: skip
    per_case = Table(
        f"{da} (A) against {db} (B)",
        [
            "case",
            "impl",
            "mode",
            f"A: {da}",
            f"B: {db}",
            "speed-up B over A",
            "A: ratio CI",
            "B: ratio CI",
            "CIs overlap",
        ],
        rows,
        "seconds per op (paired ratio x the case's base time in each run); speed-up = A / B; "
        "ratio CI: the 95% CI of each run's ratio to its own base; where they do not overlap, "
        "the impl stands differently against base in the two runs",
    )
    groups: dict[tuple[str, str], list[float]] = {}
    for p in pairs:
        groups.setdefault((p.impl, p.mode), []).append(p.speedup)
    summary = Table(
        "Geometric mean speed-up per implementation",
        ["impl", "mode", "cases", "speed-up B over A"],
        [
            [impl, mode, len(v), f"{geomean(v):.2f}x"]
            for (impl, mode), v in sorted(
                groups.items(), key=lambda kv: (kv[0][1], b.impl_rank(kv[0][0]))
            )
        ],
    )
    return [per_case, summary], only_a, only_b
