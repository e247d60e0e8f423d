"""Tables of one run, built from its typed entries: throughput, ratio to base, roofline,
memory, parameters. The order of impls and shapes is the one the run recorded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.report.base import MODES_ORDER, Table, fmt_bytes, fmt_ci, fmt_seconds
from bench.report.figures import lora_only, paired_times
from bench.schema.entries import MemoryEntry, ParamsEntry, TimeEntry
from bench.schema.run import Run


def _case_key(run: Run, group_by: str | None) -> Callable[[TimeEntry | MemoryEntry], tuple]:
    """Sort key of an entry's case: by shape or rank when asked (stable otherwise)."""
    if group_by == "shape":
        return lambda e: (run.shape_rank(e.shape),)
    if group_by == "rank":
        return lambda e: (e.rank,)
    return lambda e: ()


def _cases(run: Run, items: list, group_by: str | None) -> list[str]:
    """Case ids in the order of the run, or grouped by shape or rank."""
    first: dict[str, Any] = {}
    for e in items:
        first.setdefault(e.case, e)
    key = _case_key(run, group_by)
    return sorted(first, key=lambda c: key(first[c]))


def _impls(run: Run, items: list) -> list[str]:
    return sorted({e.impl for e in items}, key=run.impl_rank)


def throughput_table(run: Run, mode: str, group_by: str | None = None) -> Table:
    items = lora_only(run, run.times(mode))
    cases = _cases(run, items, group_by)
    times = paired_times(items)
    peaks = run.meta.peaks_start

    def order(e: TimeEntry) -> tuple:
        if group_by == "impl":
            return (run.impl_rank(e.impl), cases.index(e.case))
        return (cases.index(e.case), run.impl_rank(e.impl))

    rows = []
    for e in sorted(items, key=order):
        t = times[(e.case, e.impl)]
        gemm = peaks.get(f"{e.device}/{e.dtype}", {}).get("gemm_gflops")
        rows.append(
            [
                e.case,
                e.impl,
                fmt_seconds(t),
                f"{e.tokens / t:,.0f}",
                f"{e.flops / t / 1e9:.1f}",
                f"{e.min_bytes / t / 1e9:.1f}",
                "" if gemm is None else f"{100 * e.flops / t / 1e9 / gemm:.1f}",
                f"{t / e.floor_s:.2f}",
            ]
        )
    headers = ["case", "impl", "time", "tokens/s", "GFLOP/s", "GB/s", "% peak GEMM", "x floor"]
    return Table(
        f"Throughput ({mode})",
        headers,
        rows,
        "time = paired ratio to base x the case's one base time (median of the base rounds of "
        "all its benchmarks); every figure in a row derives from it. x floor = time / roofline "
        "floor from the calibrated peaks",
    )


def ratio_table(run: Run, mode: str, group_by: str | None = None) -> Table:
    items = lora_only(run, run.times(mode))
    cells = {(e.case, e.impl): e for e in items}
    impls = _impls(run, items)
    rows = []
    for case in _cases(run, items, group_by):
        row: list[object] = [case]
        for impl in impls:
            e = cells.get((case, impl))
            if e is None:
                row.append("")
            else:
                row.append(f"{e.ratio_to_base:.3f} {fmt_ci(e.rounds.ratio_ci)} ±{e.ratio_iqr:.3f}")
        rows.append(row)
    base = "base forward" if mode == "infer" else "base step (forward, then dx)"
    copied = sorted({e.impl for e in items if e.copied_output}, key=run.impl_rank)
    setups = max((e.rounds.setup_count for e in items), default=1)
    over = (f", each side on the same copies of {setups} setups (allocations of their own): the "
            "geometric mean of the setups' medians [95% CI over the setups]"
            if setups > 1 else ": the median of the pairs [its 95% CI]")  # fmt: skip
    note = f"paired rounds impl / {base}{over} ± IQR of the pairs; below 1 is faster than the base"
    if any(e.control for e in items):
        note += (". base: the A/A control, base against itself on an allocation of its own: "
                 "what where the tensors sit alone does to a ratio in this run")  # fmt: skip
    if copied:
        note += (
            f". {', '.join(copied)}: output not contiguous, so the copy to contiguous memory "
            "that the next op would need is timed with it"
        )
    return Table(f"Ratio to base ({mode})", ["case", *impls], rows, note)


def roofline_table(run: Run, mode: str, group_by: str | None = None) -> Table:
    """Per case: the floor from the calibrated peaks, and each impl's time over that floor."""
    items = lora_only(run, run.times(mode))
    times = paired_times(items)
    floors = {e.case: e.floor_s for e in items}
    impls = _impls(run, items)
    rows = []
    for case in _cases(run, items, group_by):
        row: list[object] = [case, fmt_seconds(floors[case])]
        for impl in impls:
            t = times.get((case, impl))
            row.append("" if t is None else f"{t / floors[case]:.2f}")
        rows.append(row)
    return Table(
        f"Roofline ({mode})",
        ["case", "floor", *impls],
        rows,
        "floor = max(useful FLOPs / peak GEMM, fewest bytes / peak copy) of the LoRA layer; "
        "cells = paired time / floor (below 1: the machine ran faster than at calibration)",
    )


def memory_table(run: Run, group_by: str | None = None) -> Table:
    items = lora_only(run, run.memory())
    impls = _impls(run, items)
    cells = {(e.case, e.mode, e.impl): e.peak_bytes for e in items}
    keys = [(c, m) for c in _cases(run, items, group_by) for m in MODES_ORDER
            if any((c, m, i) in cells for i in impls)]  # fmt: skip
    rows = [
        [case, mode]
        + ["" if (case, mode, i) not in cells else fmt_bytes(cells[(case, mode, i)]) for i in impls]
        for case, mode in keys
    ]
    method = items[0].method if items else ""
    note = (
        f"{method}: the build (merged's weight copy, compile) and run of one op, forward "
        "(infer) or forward and backward (train), above the inputs and weights"
    )
    return Table("Peak memory", ["case", "mode", *impls], rows, note)


def params_table(run: Run, group_by: str | None = None) -> Table:
    def order(e: ParamsEntry) -> tuple:
        if group_by == "rank":
            return (e.rank, run.shape_rank(e.shape))
        return (run.shape_rank(e.shape), e.rank)

    rows = [
        [e.shape, e.in_features, e.out_features, e.rank, f"{e.trainable:,}", f"{e.total:,}",
         f"{100 * e.fraction:.3f}%"]
        for e in sorted(run.params(), key=order)
    ]  # fmt: skip
    headers = ["shape", "in", "out", "r", "trainable", "total", "trainable %"]
    return Table("Trainable parameters", headers, rows, "trainable = r·(in + out)")


def timer_table(run: Run) -> Table:
    """Our per-op time against independent timers of the same work."""
    items = run.timer_checks()
    methods = list(dict.fromkeys(m for e in items for m in e.references))
    rows = []
    for e in items:
        row: list[object] = [e.case, e.impl, fmt_seconds(e.ours_s)]
        for m in methods:
            t = e.references.get(m)
            row.append("" if t is None else f"{fmt_seconds(t)} ({100 * (e.ours_s / t - 1):+.1f}%)")
        rows.append(row)
    return Table(
        "Timer check",
        ["case", "impl", "ours", *methods],
        rows,
        "ours = median seconds per op of the paired rounds; each other column times the same "
        "work (same cache mode) with another clock, (+x%) = ours over it. On a shared CPU the "
        "clocks run seconds apart and the machine drifts between them",
    )


def cold_check_table(run: Run) -> Table:
    """Decode with a cold cache must read its bytes from memory: no op may beat bytes / the
    calibrated copy bandwidth by much, or the cache was not cold."""
    lora = lora_only(run, run.times("infer"))
    items = [e for e in lora if e.tokens <= 16] if run.meta.cache == "cold" else []
    times = paired_times(lora)
    rows = []
    for case in _cases(run, items, None):
        mine = [e for e in items if e.case == case]
        e0 = mine[0]
        copy = run.meta.peaks_start.get(f"{e0.device}/{e0.dtype}", {}).get("copy_gbs")
        if not copy:
            continue
        floor = {e.impl: e.min_bytes / (copy * 1e9) for e in mine}
        fastest = min(mine, key=lambda e: times[(case, e.impl)] / floor[e.impl])
        t = times[(case, fastest.impl)]
        below = [e.impl for e in mine if times[(case, e.impl)] < floor[e.impl]]
        rows.append([case, fastest.impl, fmt_seconds(t), fmt_seconds(floor[fastest.impl]),
                     f"{t / floor[fastest.impl]:.2f}", ", ".join(below) or "none"])  # fmt: skip
    headers = ["case", "closest to its floor", "time", "bytes / copy BW", "x floor",
               "impls below their floor"]  # fmt: skip
    return Table(
        "Cold-cache check (decode)",
        headers,
        rows,
        "bytes = the op's fewest bytes (x, weights, y) over the calibrated copy bandwidth; a cold "
        "decode op below it read from cache. A pure read stream may run a little above the copy "
        "rate, which counts reads and writes",
    )
