"""The tables of an A/B run: what fails the gate, what improved, every comparison with its
ratio, confidence interval and p-value, memory, and what was not compared."""

from __future__ import annotations

import statistics

from bench.report.base import Table, fmt_bytes, fmt_seconds, render
from bench.schema.ab import AbMemory, AbProblem, AbRun, AbTime
from bench.stats.verdicts import IMPROVEMENT, NOT_JUDGED, REGRESSION, SAME

TIME_HEADERS = ["case", "impl", "mode", "base", "current", "current / base [95% CI]", "p",
                "blocks, stopped", "verdict"]  # fmt: skip
MEMORY_HEADERS = ["case", "impl", "mode", "base peak", "current peak", "change", "verdict"]


def _p(p: float) -> str:
    return "<1e-4" if p < 1e-4 else f"{p:.4f}"


def time_row(e: AbTime, status: str, attempts: list[AbTime], threshold: float) -> list[object]:
    ratio, lo, hi, p = e.summary
    # current's time is base's times the paired ratio, never its own median: rounds whose level
    # moved (both sides alike, quad by quad) gave medians 16x apart beside a ratio of 0.97
    base = statistics.median(e.base_s)
    cur = base * ratio
    if status == SAME and not e.resolves(threshold):
        status += " (unresolved)"
    if status == NOT_JUDGED:
        status += " (A/A control off)"
    if len(attempts) > 1:
        tried = ", ".join(f"{a.ratio:.3f}" for a in attempts)
        status += f" (attempts: {tried})"
    blocks = f"{len(e.blocks()[0])}, {e.stopped}"
    return [e.case, e.impl, e.mode, fmt_seconds(base), fmt_seconds(cur),
            f"{ratio:.3f} [{lo:.3f}, {hi:.3f}]", _p(p), blocks, status]  # fmt: skip


def memory_row(e: AbMemory, status: str) -> list[object]:
    diff = e.current_bytes - e.base_bytes
    rel = f" ({100 * diff / e.base_bytes:+.1f}%)" if e.base_bytes else ""
    sign = "+" if diff >= 0 else "-"
    return [e.case, e.impl, e.mode, fmt_bytes(e.base_bytes), fmt_bytes(e.current_bytes),
            f"{sign}{fmt_bytes(abs(diff))}{rel}", status]  # fmt: skip


def ab_tables(run: AbRun) -> list[Table]:
    m = run.meta
    times = [(e, run.verdict(e), run.attempts(e)) for e in run.times()]
    mems = [(e, e.status(m.memory_rel, m.memory_mib)) for e in run.of(AbMemory)]
    tables = []
    for status, title in ((REGRESSION, "Regressions"), (IMPROVEMENT, "Improvements")):
        rows = [time_row(e, s, a, m.threshold) for e, s, a in times if s == status]
        if rows:
            tables.append(Table(f"{title}: time", TIME_HEADERS, rows))
        rows = [memory_row(e, s) for e, s in mems if s == status]
        if rows:
            tables.append(Table(f"{title}: peak memory", MEMORY_HEADERS, rows))
    failed = [[p.case, p.impl, p.mode, p.side, p.outcome, p.message] for p in run.of(AbProblem)
              if p.fails]  # fmt: skip
    if failed:
        headers = ["case", "impl", "mode", "side", "outcome", "message"]
        tables.append(Table("Failures on the current side", headers, failed))
    tables.append(
        Table(
            "Every comparison: time",
            TIME_HEADERS,
            [time_row(e, s, a, m.threshold) for e, s, a in times],
            "seconds per op: base's, the median of its rounds; current's, that times the "
            "ratio (each side's own median would set rounds of different moments against "
            "each other). A block is a quad of rounds "
            "(base, current, current, base; a pair in files before quads) and its ratio "
            "current's rounds over base's; the ratio shown is the blocks' median with its "
            "distribution-free 95% CI; p: Wilcoxon signed-rank on the log ratios; stopped: sure "
            "(the CI reached the target), budget or pairs. A flagged comparison is timed again "
            "in fresh processes: it counts only when every attempt shows it, the same way; the "
            "attempt nearest 1 is shown",
        )
    )
    if mems:
        tables.append(Table("Every comparison: peak memory", MEMORY_HEADERS,
                            [memory_row(e, s) for e, s in mems]))  # fmt: skip
    rest = [[p.case, p.impl, p.mode, p.side, p.outcome, p.message] for p in run.of(AbProblem)
            if not p.fails]  # fmt: skip
    if rest:
        headers = ["case", "impl", "mode", "side", "outcome", "reason"]
        tables.append(Table("Not compared", headers, rest))
    return tables


def ab_header(run: AbRun) -> str:
    m = run.meta
    dirty = ", with uncommitted changes" if m.current_dirty else ""
    lines = [
        f"## lora-bench ab: the working tree ({m.current_commit[:10]}{dirty}) against "
        f"{m.base_ref} ({m.base_commit[:10]})",
        "",
        f"{m.device}, {m.threads} threads, profile {m.profile}, {m.cache} cache, torch "
        f"{m.torch}, {m.created}. A time regression is a change with p < {m.alpha:g}, past "
        f"{100 * m.threshold / 2:g}%, whose 95% CI reaches {100 * m.threshold:g}%; a memory "
        f"one, a growth past {100 * m.memory_rel:g}% and {m.memory_mib:g} MiB.",
    ]
    for side, names in (("base", m.only_base), ("current", m.only_current)):
        if names:
            lines.append(f"Only on the {side} side (not compared): {', '.join(names)}.")
    lines.append(control_line(run))
    return "\n".join(lines) + "\n"


def control_line(run: AbRun) -> str:
    """What the run's A/A control says: base, the same code on both sides, compared across
    the two processes; a case where it reads past half the threshold is not judged."""
    controls = run.controls()
    if not run.meta.control:
        return ("No A/A control: base's code differs between the two commits (or a side could "
                "not say), so its comparisons are a change like any other.")  # fmt: skip
    if not controls:
        return "No A/A control: base was not compared."
    (case, mode), worst = max(controls.items(), key=lambda kv: abs(kv[1].ratio - 1))
    off = [f"{c} {m}" for c, m in run.controls_off()]
    text = (f"A/A control (base, the same code on both sides): {len(controls)} cases, the "
            f"farthest from 1 {worst.ratio:.3f} at {case} {mode}.")  # fmt: skip
    if off:
        text += (f" Past {100 * run.meta.threshold / 2:g}% at {', '.join(off)}: changes there "
                 "are not judged.")  # fmt: skip
    return text


def ab_summary(run: AbRun) -> str:
    m = run.meta
    counts = {REGRESSION: 0, IMPROVEMENT: 0}
    for e in run.times():
        counts[run.verdict(e)] = counts.get(run.verdict(e), 0) + 1
    for e in run.of(AbMemory):
        s = e.status(m.memory_rel, m.memory_mib)
        counts[s] = counts.get(s, 0) + 1
    failures = sum(p.fails for p in run.of(AbProblem))
    unresolved = len(run.unresolved())
    unjudged = counts.get(NOT_JUDGED, 0)
    return (
        f"{len(run.times())} time and {len(run.of(AbMemory))} memory comparisons in "
        f"{m.wall_s / 60:.1f} min: {counts[REGRESSION]} regression(s), "
        f"{counts[IMPROVEMENT]} improvement(s), {failures} failure(s) on the current side"
        + (f", {unjudged} change(s) not judged (A/A control off)" if unjudged else "")
        + (
            f"; {unresolved} time comparison(s) unresolved: their 95% CI reaches past "
            f"±{100 * m.threshold:g}%, too wide to tell such a change from none (a loaded "
            "machine; more --seconds)"
            if unresolved
            else ""
        )
    )


def ab_markdown(run: AbRun) -> str:
    return ab_header(run) + "\n" + render(ab_tables(run), "github") + "\n" + ab_summary(run) + "\n"
