"""The "multi-adapter" table of a run: each variant's paired ratio to the base GEMM, against
the best single-adapter impl on the same shape and tokens (what mixing adapters costs) and
against PEFT's mixed batch, with tokens/s and memory over one call."""

from __future__ import annotations

from bench.report.base import Table, fmt_bytes, fmt_ci
from bench.report.verdicts import Comparison, versus
from bench.schema.entries import MultiEntry
from bench.schema.run import Run

PEER = "peft_mixed"


def _versus_peer(e: MultiEntry, peer: dict[str, MultiEntry]) -> Comparison | None:
    """The variant's time over PEFT's mixed batch's, on the same case."""
    p = peer.get(e.case)
    if p is None or e.variant == PEER:
        return None
    return versus(f"multi {e.case}: {e.variant} vs {PEER}", e.rounds, p.rounds)


def multi_comparisons(run: Run) -> list[Comparison]:
    entries = run.multi()
    peer = {e.case: e for e in entries if e.variant == PEER}
    return [c for e in entries if (c := _versus_peer(e, peer)) is not None]


def single_best(entries: list[MultiEntry]) -> dict[tuple, float]:
    """The lowest ratio to base among the single-adapter references, per (shape, tokens,
    rank, dtype, device)."""
    best: dict[tuple, float] = {}
    for e in entries:
        if e.origin == "single":
            k = (e.shape, e.tokens, e.r_max, e.dtype, e.device)
            best[k] = min(best.get(k, float("inf")), e.ratio_to_base)
    return best


def multi_rows(entries: list[MultiEntry]) -> list[list[object]]:
    best = single_best(entries)
    peer = {e.case: e for e in entries if e.variant == PEER}
    rows = []
    for e in entries:
        single = best.get((e.shape, e.tokens, e.r_max, e.dtype, e.device))
        against = _versus_peer(e, peer)
        rows.append(
            [
                f"T={e.tokens} n={e.adapters} {e.distribution} r={e.ranks}",
                e.variant,
                f"{e.ratio_to_base:.3f}",
                fmt_ci(e.rounds.ratio_ci),
                f"{e.rounds.ratio_iqr:.3f}",
                "" if single is None else f"{e.ratio_to_base / single:.3f}",
                "" if against is None else against.speed_cell(),
                f"{e.tokens_per_s:,.0f}",
                e.in_use,
                fmt_bytes(e.peak_bytes),
                f"{e.rel_error:.1e}",
            ]
        )
    return rows


def multi_tables(run: Run) -> list[Table]:
    entries = run.multi()
    if not entries:
        return []
    shapes = ", ".join(sorted({e.shape for e in entries}))
    headers = ["tokens, adapters, index, ranks", "variant", "x base", "95% CI", "IQR",
               "x single best", "PEFT mixed / this", "tokens/s", "in use", "memory",
               "err"]  # fmt: skip
    methods = "; ".join(sorted({e.memory_method for e in entries}))
    note = (
        f"Shape {shapes}. x base = median of per-pair ratios to the base GEMM x Wᵀ + b, timed "
        "interleaved, the same tensors every call. x single best = x base over the lowest x "
        "base of the single-adapter impls (single:*: one adapter of rank r_max, every token) "
        "at the same tokens: what serving several adapters costs. PEFT mixed / this = how many "
        "times faster than PEFT's mixed-batch forward (adapter_names=, one name per token, or "
        "per sequence for per_sequence) on the same weights, with its 95% CI; unresolved where "
        "the CI holds 1. In use = distinct adapters in the "
        "batch's index. Mixed ranks: 4, 8, 16 in turn. err: against the float64 oracle. "
        f"Memory: {methods}."
    )
    return [Table("Multi-adapter batches", headers, multi_rows(entries), note)]
