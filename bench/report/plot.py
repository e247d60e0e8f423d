"""PNG charts of one or more runs (needs matplotlib: pip install 'lora-bench[plot]')."""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from bench.report.compare import pair_runs
from bench.report.figures import lora_only, paired_times
from bench.schema.entries import TimeEntry
from bench.schema.io import ResultError, check_writable, write_atomic
from bench.schema.run import Run

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ResultError("plot needs matplotlib: pip install 'lora-bench[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Figure, path: Path) -> Path:
    """Render to bytes first, then write atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    write_atomic(path, buf.getvalue())
    return path


def throughput_vs_rank(run: Run, out: Path) -> Path | None:
    """tokens/s against rank, one line per impl, one panel per (shape, T, dtype) with ranks;
    tokens/s from the paired ratio and the case's one base time, as in the tables."""
    items = lora_only(run, run.times("infer"))  # DoRA has its own tables
    times = paired_times(items)
    groups: dict[tuple, list[TimeEntry]] = defaultdict(list)
    for e in items:
        groups[(e.shape, e.tokens, e.dtype)].append(e)
    groups = {k: v for k, v in groups.items() if len({e.rank for e in v}) > 1}
    if not groups:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.2), squeeze=False)
    for ax, ((shape, tokens, dtype), items) in zip(axes[0], sorted(groups.items()), strict=True):
        by_impl: dict[str, list[TimeEntry]] = defaultdict(list)
        for e in items:
            by_impl[e.impl].append(e)
        for impl in sorted(by_impl, key=run.impl_rank):
            pts = sorted(by_impl[impl], key=lambda e: e.rank)
            ys = [e.tokens / times[(e.case, e.impl)] for e in pts]
            ax.plot([e.rank for e in pts], ys, "o-", label=impl)
        ax.set(xscale="log", xlabel="rank r", title=f"{shape} T={tokens} {dtype}")
        ax.set_ylabel("tokens/s (paired ratio x the case's median base time)")
        ranks = sorted({e.rank for e in items})
        ax.set_xticks(ranks, labels=ranks)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Forward throughput against rank ({run.meta.device})")
    path = _save(fig, out / f"throughput-vs-rank-{run.meta.device}.png")
    plt.close(fig)
    return path


def ratio_vs_tokens(run: Run, out: Path) -> Path | None:
    """Ratio to base against tokens per impl (forward); labels name the shape and rank."""
    items = [e for e in lora_only(run, run.times("infer")) if e.impl != "base"]
    if not items:
        return None
    plt = _pyplot()
    impls = sorted({e.impl for e in items}, key=run.impl_rank)
    cases = sorted({(e.tokens, e.shape, e.rank, e.dtype) for e in items})
    fig, ax = plt.subplots(figsize=(max(8, 1.7 * len(cases)), 5.2))
    colors = plt.get_cmap("tab20").colors
    width = 0.8 / len(impls)
    for n, impl in enumerate(impls):
        pts = {(e.tokens, e.shape, e.rank, e.dtype): e for e in items if e.impl == impl}
        xs = [i - 0.4 + (n + 0.5) * width for i, c in enumerate(cases) if c in pts]
        ys = [pts[c].ratio_to_base for c in cases if c in pts]
        err = [pts[c].ratio_iqr / 2 for c in cases if c in pts]
        ax.errorbar(
            xs, ys, yerr=err, fmt="os^vD<>ph*"[n % 10], ms=5, capsize=2, color=colors[n % 20],
            label=impl,
        )  # fmt: skip
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(cases)), [f"T={t}\n{s}\nr={r}" for t, s, r, _ in cases], fontsize=8)
    for i in range(1, len(cases)):
        ax.axvline(i - 0.5, color="0.85", lw=0.6)
    ax.set(yscale="log", ylabel="time / base GEMM (median of pairs, ±IQR/2)")
    ax.set_title(f"Ratio to base against tokens ({run.meta.device}, forward)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    path = _save(fig, out / f"ratio-vs-tokens-{run.meta.device}.png")
    plt.close(fig)
    return path


def ratio_vs_adapters(run: Run, out: Path) -> Path | None:
    """Ratio to base against the number of adapters, one panel per index distribution, one
    line per multi-adapter variant, at the run's largest token count with one rank; the best
    single-adapter impl at those tokens as a dashed line."""
    entries = [e for e in run.multi() if e.ranks != "mixed"]
    if not entries:
        return None
    tokens = max(e.tokens for e in entries)
    entries = [e for e in entries if e.tokens == tokens]
    singles = [e.ratio_to_base for e in entries if e.origin == "single"]
    multi = [e for e in entries if e.origin != "single"]
    dists = list(dict.fromkeys(e.distribution for e in multi if e.adapters > 1))
    if not dists:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(dists), figsize=(5 * len(dists), 4.2), squeeze=False)
    for ax, dist in zip(axes[0], dists, strict=True):
        by_variant: dict[str, list] = defaultdict(list)
        for e in multi:
            # n = 1 is the same batch whatever the distribution: it starts every line
            if e.distribution == dist or e.adapters == 1:
                by_variant[e.variant].append(e)
        for variant, pts in by_variant.items():
            pts.sort(key=lambda e: e.adapters)
            ax.plot([e.adapters for e in pts], [e.ratio_to_base for e in pts], "o-", label=variant)
        if singles:
            ax.axhline(min(singles), color="k", ls="--", lw=0.8, label="best single adapter")
        counts = sorted({e.adapters for v in by_variant.values() for e in v})
        ax.set(xscale="log", xlabel="adapters in the batch", title=dist)
        ax.set_xticks(counts, labels=counts)
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("time / base GEMM (median of pairs)")
    shape = entries[0].shape
    fig.suptitle(f"Multi-adapter batches: {shape}, T={tokens} ({run.meta.device})")
    path = _save(fig, out / f"ratio-vs-adapters-{run.meta.device}.png")
    plt.close(fig)
    return path


def device_bars(a: Run, b: Run, out: Path) -> Path:
    """Speed-up of run B over run A per case and impl (forward), as grouped bars."""
    pairs = [p for p in pair_runs(a, b)[0] if p.mode == "infer"]
    plt = _pyplot()
    keys = list(dict.fromkeys(p.key for p in pairs))
    impls = sorted({p.impl for p in pairs}, key=b.impl_rank)
    width = 0.8 / len(impls)
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(keys)), 4.8))
    for n, impl in enumerate(impls):
        vals = {p.key: p.speedup for p in pairs if p.impl == impl}
        xs = [i + n * width for i, k in enumerate(keys) if k in vals]
        ax.bar(xs, [vals[k] for k in keys if k in vals], width, label=impl)
    da, db = a.meta.device, b.meta.device
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))], keys, rotation=20, ha="right")
    ax.set(yscale="log", ylabel=f"speed-up of {db} over {da} (x)")
    ax.set_title(f"{db} against {da}, forward, same cases")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.legend(fontsize=8, ncol=2)
    path = _save(fig, out / f"{da}-vs-{db}.png")
    plt.close(fig)
    return path


def plot_runs(runs: list[Run], out: Path) -> list[Path]:
    """Every chart the runs support; the device comparison needs two runs of two devices.
    Refused before anything is made: without matplotlib, or a folder that cannot be written."""
    _pyplot()
    check_writable(out)
    paths = []
    for run in runs:
        charts = (throughput_vs_rank, ratio_vs_tokens, ratio_vs_adapters)
        paths += [p for p in (chart(run, out) for chart in charts) if p]
    devices = {r.meta.device for r in runs}
    if len(runs) == 2 and len(devices) == 2:
        paths.append(device_bars(runs[0], runs[1], out))
    return paths
