"""The "Where the time goes" tables: each profiled impl's call split into parts, base's row of
the same case first, so that an impl's row less base's reads as where its extra time goes;
and the profiled total beside the unprofiled paired timing of the same work."""

from __future__ import annotations

from bench.report.base import MODE_TITLES, MODES_ORDER, Table, fmt_bytes
from bench.schema.entries import OUTSIDE, PARTS, ProfileEntry
from bench.schema.run import Run

NOTE = (
    "ms per call, from torch.profiler over warmed-up calls taken outside the timed rounds. "
    "Parts: each op goes to one part by its name and shapes: a GEMM by its (M, K, N) (base "
    "x Wᵀ, shrink x Aᵀ, expand into y, W + s·B A the weight-sized product, and in training "
    "their gradients; where in = out and T = r two roles share dimensions, the first of base, "
    "shrink, expand takes them); elementwise ops on y, and on a weight-sized tensor (W + s·B "
    "A formed every call); norms and per-row vectors (DoRA); an "
    "op no rule names goes with its caller, else to other ops. On the CPU a part is its ops' "
    "self time; on CUDA their kernels' time, and CPU side is the host's time per call. "
    "outside ops: wall time no op covers (Python, dispatch). profiled: the wall time of a "
    "call under the profiler (the mean of its calls); overhead: profiled less the same calls "
    "timed right before without the profiler, the profiler's own cost, shown rather than "
    "folded into a part. paired: the median of the same work's paired rounds (the timed "
    "benchmark's, at another moment, where the profile did not time it), and paired - base "
    "its median less base's: the extra time to explain. ops: ATen ops dispatched."
)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}" if seconds else ""


def paired_of(run: Run, e: ProfileEntry) -> tuple[float, float]:
    """(impl, base) seconds per call of the same work timed in pairs: the profile's own, or
    the timed benchmark's of the same case, impl and mode; (0, 0) when neither has it."""
    if e.paired_s:
        return e.paired_s, e.base_paired_s
    for t in run.times(e.mode):
        if (t.case, t.impl) == (e.case, e.impl):
            return t.median_s, t.base_median_s
    return 0.0, 0.0


def profile_rows(run: Run, entries: list[ProfileEntry], cuda: bool) -> list[list[object]]:
    order = sorted(entries, key=lambda e: (e.case, e.impl != "base", run.impl_rank(e.impl)))
    rows: list[list[object]] = []
    for e in order:
        parts = e.device_s if cuda else e.cpu_s
        impl_s, base_s = paired_of(run, e)
        row: list[object] = [e.case, e.impl, *(_ms(parts.get(p, 0.0)) for p in PARTS)]
        row.append(_ms(e.outside_s))
        if cuda:
            row += [_ms(sum(e.cpu_s.values()) + e.outside_s), f"{e.kernel_count:.0f}"]
        row += [
            _ms(e.wall_s),
            _ms(impl_s) or "-",
            f"{(impl_s - base_s) * 1e3:+.3f}" if impl_s else "-",
            f"{(e.wall_s - e.unprofiled_s) * 1e3:+.3f} ({e.overhead:+.0%})",
            f"{e.op_count:.0f}",
            fmt_bytes(e.allocated_bytes),
        ]
        rows.append(row)
    return rows


def profile_tables(run: Run) -> list[Table]:
    """A table per mode (and device, where a run holds both)."""
    tables = []
    for mode in MODES_ORDER:
        for device in sorted({e.device for e in run.profiles()}):
            entries = [e for e in run.profiles() if e.mode == mode and e.device == device]
            if not entries:
                continue
            cuda = device == "cuda"
            headers = ["case", "impl", *PARTS, OUTSIDE]
            headers += ["CPU side", "kernels"] if cuda else []
            headers += ["profiled", "paired", "paired - base", "overhead", "ops", "allocated"]
            title = f"Where the time goes ({MODE_TITLES[mode]}, {device})"
            tables.append(Table(title, headers, profile_rows(run, entries, cuda), NOTE))
    return tables
