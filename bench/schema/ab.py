"""The results of `lora-bench ab`: the typed entries, the writer and the reader. Like
bench.results it imports neither torch nor the registry.

An A/B file is JSON: {"lora_bench_ab": AbMeta, "entries": [AbTime | AbMemory | AbProblem]}.
The verdicts are not stored: they follow from the rounds and the meta's thresholds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import ClassVar

from bench.schema.decode import from_dict, parse_entries, positive_seconds
from bench.schema.entries import CONTROL
from bench.schema.io import ResultError, read_json
from bench.stats.ranks import ci_reach, ratio_summary
from bench.stats.verdicts import (
    NOT_JUDGED,
    REGRESSION,
    SAME,
    control_off,
    memory_status,
    time_status,
)

AB_SCHEMA = 1


@dataclass(frozen=True)
class AbMeta:
    """What was compared, where, and the thresholds of the verdicts."""

    base_ref: str  # as given, e.g. HEAD~1
    base_commit: str
    current_commit: str  # HEAD of the working tree
    current_dirty: bool  # the working tree had uncommitted changes (they were timed)
    device: str
    profile: str
    threads: int
    cache: str
    torch: str
    created: str  # ISO 8601, UTC
    seconds: float  # budget of paired rounds per comparison
    threshold: float  # a significant time change whose CI reaches this is a verdict
    alpha: float
    memory_rel: float
    memory_mib: float
    cases: list[str]  # --cases patterns ([] = all)
    impls: list[str]  # --impls ([] = ours)
    only_base: list[str]  # "impl" or "impl mode" found on one side only
    only_current: list[str]
    wall_s: float
    target: float = 0.0  # rounds stopped once the ratio's CI was within this; 0: a fixed budget
    side_env: dict[str, str] = field(default_factory=dict)  # set in both sides' environment
    control: bool = False  # base ran the same code on both sides: its comparisons are A/A
    schema: int = AB_SCHEMA


@dataclass(frozen=True)
class AbTime:
    """Rounds of one (case, impl, mode) on both sides, each after the side's untimed settling
    ops. Order "abba": quads of base, current, current, base, so rounds 2k and 2k + 1 of each
    side form quad k, whose ratio is their sums' ratio. Order "ab" (files before the order was
    recorded): pairs of base, then current."""

    kind: ClassVar[str] = "ab_time"
    case: str
    key: str
    impl: str
    mode: str
    inner: int  # ops per round, the same on both sides
    copies: int
    base_s: list[float]  # seconds per op
    current_s: list[float]
    base_rel_error: float
    current_rel_error: float
    attempt: int = 0  # 0 first; a flagged comparison is set up and timed again
    stopped: str = "budget"  # sure, budget or pairs (bench.harness.rounds)
    order: str = "ab"

    def __post_init__(self) -> None:
        if len(self.base_s) != len(self.current_s) or not self.base_s:
            raise ValueError("an A/B entry needs as many base as current rounds, at least one")
        if self.inner < 1:
            raise ValueError(f"inner must be >= 1 op a round, got {self.inner}")
        if self.order == "abba" and len(self.base_s) % 2:
            raise ValueError("an A/B entry in ABBA order needs an even number of rounds a side")
        positive_seconds("base_s", self.base_s)
        positive_seconds("current_s", self.current_s)

    def blocks(self) -> tuple[list[float], list[float]]:
        """(current, base) seconds of each block the ratios compare: a quad's two rounds
        added up in ABBA order, a pair's one round otherwise."""
        if self.order != "abba":
            return self.current_s, self.base_s
        cur, base = self.current_s, self.base_s
        return [a + b for a, b in zip(cur[::2], cur[1::2], strict=True)], [
            a + b for a, b in zip(base[::2], base[1::2], strict=True)
        ]

    @cached_property
    def summary(self) -> tuple[float, float, float, float]:
        """(current / base median ratio of the blocks, 95% CI low, high, Wilcoxon p)."""
        return ratio_summary(*self.blocks())

    @property
    def ratio(self) -> float:
        return self.summary[0]

    def resolves(self, threshold: float) -> bool:
        """Whether the 95% CI is narrow enough to tell a change of `threshold` from none:
        it reaches no further than `threshold` either side of the ratio."""
        return ci_reach(*self.summary[:3]) <= threshold

    def status(self, threshold: float, alpha: float) -> str:
        ratio, lo, hi, p = self.summary
        return time_status(ratio - 1, (lo - 1, hi - 1), p, threshold, alpha)


@dataclass(frozen=True)
class AbMemory:
    """Peak memory of one (case, impl, mode) on each side."""

    kind: ClassVar[str] = "ab_memory"
    case: str
    key: str
    impl: str
    mode: str
    method: str
    base_bytes: int
    current_bytes: int

    def status(self, rel: float, mib: float) -> str:
        return memory_status(self.base_bytes, self.current_bytes, rel, mib)


@dataclass(frozen=True)
class AbProblem:
    """A (case, impl, mode) a side could not time: skipped, not equivalent to the oracle,
    or an error. Not equivalent or an error on the current side fails the gate."""

    kind: ClassVar[str] = "ab_problem"
    case: str
    impl: str
    mode: str
    side: str  # "base" or "current"
    outcome: str  # "skipped", "not equivalent" or "error"
    message: str

    @property
    def fails(self) -> bool:
        return self.side == "current" and self.outcome != "skipped"


AbEntry = AbTime | AbMemory | AbProblem
AB_KINDS: dict[str, type] = {c.kind: c for c in (AbTime, AbMemory, AbProblem)}


@dataclass(frozen=True)
class AbRun:
    meta: AbMeta
    entries: list[AbEntry] = field(default_factory=list)

    def of(self, kind: type) -> list:
        return [e for e in self.entries if isinstance(e, kind)]

    def times(self) -> list[AbTime]:
        """One entry per (case, impl, mode): of its attempts, the one whose ratio is nearest 1."""
        kept: dict[tuple[str, str, str], AbTime] = {}
        for e in self.of(AbTime):
            k = (e.case, e.impl, e.mode)
            if k not in kept or abs(math.log(e.ratio)) < abs(math.log(kept[k].ratio)):
                kept[k] = e
        return list(kept.values())

    def attempts(self, e: AbTime) -> list[AbTime]:
        """Every attempt at e's (case, impl, mode), first first."""
        return [a for a in self.of(AbTime) if (a.case, a.impl, a.mode) == (e.case, e.impl, e.mode)]

    def controls(self) -> dict[tuple[str, str], AbTime]:
        """The A/A control of each (case, mode): base, the same code on both sides, compared
        across the two processes. Empty when base's code differs between the commits."""
        if not self.meta.control:
            return {}
        return {(e.case, e.mode): e for e in self.times() if e.impl == CONTROL}

    def controls_off(self) -> dict[tuple[str, str], AbTime]:
        """The controls that read past half the threshold: changes at their case and mode
        cannot be told from what the two processes' setups alone do."""
        return {k: c for k, c in self.controls().items()
                if control_off(c.ratio, self.meta.threshold)}  # fmt: skip

    def verdict(self, e: AbTime) -> str:
        """A change counts only when every attempt at e's comparison shows it, the same way:
        one side of a run can fall into a slower state for a stretch, a real change cannot
        come and go; and not at a case whose A/A control is off (NOT_JUDGED)."""
        m = self.meta
        seen = {a.status(m.threshold, m.alpha) for a in self.attempts(e)}
        called = seen.pop() if len(seen) == 1 else SAME
        off = e.impl != CONTROL and (e.case, e.mode) in self.controls_off()
        return NOT_JUDGED if called != SAME and off else called

    def unresolved(self) -> list[AbTime]:
        """Comparisons whose shown attempt's CI is too wide to tell a change of the threshold
        from none: the gate passes them, but they say nothing."""
        return [e for e in self.times() if not e.resolves(self.meta.threshold)]

    def regressions(self) -> list[AbEntry]:
        """What fails the gate: time and memory regressions, and current-side failures."""
        m = self.meta
        out: list[AbEntry] = [e for e in self.times() if self.verdict(e) == REGRESSION]
        out += [e for e in self.of(AbMemory) if e.status(m.memory_rel, m.memory_mib) == REGRESSION]
        return out + [e for e in self.of(AbProblem) if e.fails]


def dump_ab(run: AbRun) -> str:
    """The A/B run as JSON text; time entries also carry their ratio, CI and p-value."""
    entries = []
    for e in run.entries:
        data: dict[str, object] = {"kind": e.kind, **dataclasses.asdict(e)}
        if isinstance(e, AbTime):
            ratio, lo, hi, p = e.summary
            data.update(ratio=ratio, ci_low=lo, ci_high=hi, p_value=p,
                        base_median_s=statistics.median(e.base_s),
                        current_median_s=statistics.median(e.current_s))  # fmt: skip
        entries.append(data)
    body = {"lora_bench_ab": dataclasses.asdict(run.meta), "entries": entries}
    return json.dumps(body, indent=1) + "\n"


def load_ab(path: str | Path) -> AbRun:
    """Read an A/B JSON written by `lora-bench ab`; ResultError says what is wrong."""
    data = read_json(path, "A/B results file")
    if not isinstance(data, dict):
        raise ResultError(f"{path}: not an A/B file of lora-bench (not a JSON object)")
    meta = data.get("lora_bench_ab")
    if not isinstance(meta, dict):
        raise ResultError(f"{path}: not an A/B file of lora-bench (no 'lora_bench_ab' section)")
    if meta.get("schema") != AB_SCHEMA:
        raise ResultError(
            f"{path}: A/B schema {meta.get('schema')!r}; this version reads {AB_SCHEMA}"
        )
    try:
        entries = parse_entries(data.get("entries"), AB_KINDS)
        return AbRun(from_dict(AbMeta, meta, "lora_bench_ab"), entries)
    except ValueError as err:
        raise ResultError(f"{path}: {err}") from None
