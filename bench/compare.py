"""Compare two runs case by case, e.g. CPU against CUDA: times and the speed-up of B over A."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.results import ResultError
from bench.tables import Table, fmt_seconds, impl_order, time_index


@dataclass(frozen=True)
class Pair:
    key: str
    impl: str
    mode: str
    a_s: float
    b_s: float

    @property
    def speedup(self) -> float:
        """How many times faster B is than A."""
        return self.a_s / self.b_s


def pair_runs(a: dict, b: dict) -> tuple[list[Pair], list[str], list[str]]:
    """(pairs, ids only in A, ids only in B); ResultError when nothing can be matched."""
    ia, ib = time_index(a), time_index(b)
    common = ia.keys() & ib.keys()
    if not common:
        pa, pb = a["lora_bench"]["profile"], b["lora_bench"]["profile"]
        raise ResultError(
            f"no case is in both runs (profiles {pa!r} and {pb!r}); compare runs of one "
            "profile with a dtype in common"
        )
    pairs = [Pair(*k, ia[k]["stats"]["median"], ib[k]["stats"]["median"]) for k in common]
    pairs.sort(key=lambda p: (p.mode, p.key, impl_order(p.impl)))

    def label(ids: set) -> list[str]:
        return sorted(f"{key} {impl} {mode}" for key, impl, mode in ids)

    return pairs, label(ia.keys() - ib.keys()), label(ib.keys() - ia.keys())


def run_label(run: dict) -> str:
    """'cuda' or 'cpu, 2 threads': enough to tell the two sides of a comparison apart."""
    meta = run["lora_bench"]
    return meta["device"] if meta["device"] == "cuda" else f"cpu, {meta.get('threads')} threads"


def one_sided(ids: list[str]) -> str:
    """The ids, or when there are many, how many cases each (impl, mode) is missing."""
    if len(ids) <= 10:
        return "; ".join(ids)
    groups: dict[str, int] = {}
    for ident in ids:
        impl_mode = " ".join(ident.split()[-2:])
        groups[impl_mode] = groups.get(impl_mode, 0) + 1
    return "; ".join(f"{k} ({n} cases)" for k, n in sorted(groups.items()))


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def compare_tables(a: dict, b: dict) -> tuple[list[Table], list[str], list[str]]:
    """Per-case table, geometric-mean table per impl, and the one-sided ids."""
    pairs, only_a, only_b = pair_runs(a, b)
    da, db = run_label(a), run_label(b)
    rows = [
        [p.key, p.impl, p.mode, fmt_seconds(p.a_s), fmt_seconds(p.b_s), f"{p.speedup:.2f}x"]
        for p in pairs
    ]
    per_case = Table(
        f"{da} (A) against {db} (B)",
        ["case", "impl", "mode", f"A: {da}", f"B: {db}", "speed-up B over A"],
        rows,
        "median seconds per op; speed-up = A / B",
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
                groups.items(), key=lambda kv: (kv[0][1], impl_order(kv[0][0]))
            )
        ],
    )
    return [per_case, summary], only_a, only_b
