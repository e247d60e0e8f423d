"""The document of one run: its header and every non-empty table, family by family."""

from __future__ import annotations

import secrets
from dataclasses import replace
from pathlib import Path

from bench.report.base import MODES_ORDER, Table, fmt_bytes, fmt_ci, render
from bench.report.conv import conv_model_tables, conv_tables
from bench.report.dora import dora_tables
from bench.report.fused import fused_tables
from bench.report.generation import generation_tables
from bench.report.layer import (
    cold_check_table,
    memory_table,
    params_table,
    ratio_table,
    roofline_table,
    throughput_table,
    timer_table,
)
from bench.report.lifecycle import lifecycle_tables
from bench.report.models import model_tables
from bench.report.multi import multi_tables
from bench.report.profile import profile_tables
from bench.report.quant import quant_tables
from bench.report.tp import tp_tables
from bench.report.unet import unet_tables
from bench.report.user_model import user_model_tables
from bench.schema.io import write_together
from bench.schema.run import Run, dump_run


def run_tables(run: Run, group_by: str | None = None) -> list[Table]:
    """Every non-empty table of a run, in reading order; rows grouped by impl, shape or rank
    where the table has them."""

    tables = []
    for mode in MODES_ORDER:
        tables += [
            throughput_table(run, mode, group_by),
            ratio_table(run, mode, group_by),
            roofline_table(run, mode, group_by),
        ]
    tables += [
        cold_check_table(run),
        timer_table(run),
        memory_table(run, group_by),
        params_table(run, group_by),
        *dora_tables(run),
        *model_tables(run),
        *multi_tables(run),
        *generation_tables(run),
        *lifecycle_tables(run),
        *quant_tables(run),
        *fused_tables(run),
        *conv_tables(run),
        *conv_model_tables(run),
        *unet_tables(run),
        *tp_tables(run),
        *user_model_tables(run),
        *profile_tables(run),
    ]
    return [t for t in tables if t.rows]


def run_header(run: Run) -> str:
    """What a reader needs before the tables: device, profile, threads, peaks, versions,
    and which impls are peers or plugins."""
    meta = run.meta
    lines = [
        f"# lora-bench results: {meta.device}, profile {meta.profile}",
        "",
        f"- date: {meta.created}",
        *(
            [
                f"- run: {meta.run_id} (the id its JSON holds: a .md beside a JSON of another id "
                "is not its run's)"
            ]
            if meta.run_id
            else []
        ),
        f"- device: {meta.device_name}",
        f"- commit: {commit_line(run.commit_info)}",
        f"- torch {meta.torch}, threads {meta.threads}, TF32 {'on' if meta.tf32 else 'off'}",
        f"- cache: {meta.cache} (last-level cache {fmt_bytes(meta.cache_bytes)}"
        + (
            "; each call takes the next of enough copies of the weights and input to fill it "
            "twice over)"
            if meta.cache == "cold"
            else "; every call reuses one copy)"
        ),
    ]
    if meta.missing_shards:
        lines.append(f"- partial: merged without shard(s) {', '.join(meta.missing_shards)}; "
                     "their benchmarks are not in this run")  # fmt: skip
    if meta.not_run:
        lines.append(f"- cut short: {len(meta.not_run)} benchmark(s) not started, past "
                     f"--lora-deadline {meta.deadline:g} s")  # fmt: skip
    if meta.allocator:
        lines.append(f"- malloc: {meta.allocator}")
    if meta.pages:
        lines.append(f"- pages: {meta.pages}")
    if run.times():
        lines.append(control_line(run))
    if meta.only:
        lines.append(f"- only these cases (--lora-only): {', '.join(meta.only)}")
    for key, start in meta.peaks_start.items():
        end = meta.peaks_end.get(key)
        after = f" -> {end['gemm_gflops']:.0f} / {end['copy_gbs']:.1f}" if end else ""
        lines.append(
            f"- peaks {key}: GEMM GFLOP/s / copy GB/s at start "
            f"{start['gemm_gflops']:.0f} / {start['copy_gbs']:.1f}{after} at end"
        )
    measured = {e.impl for e in run.entries if hasattr(e, "impl")}
    for origin in ("peer", "plugin"):
        named = [f"{i.name} ({i.source})" for i in meta.impls
                 if i.origin == origin and i.name in measured]  # fmt: skip
        if named:
            lines.append(f"- {origin}s: {', '.join(named)}")
    return "\n".join(lines) + "\n"


def commit_line(info: dict[str, object]) -> str:
    """The commit a run was made at, as its results file recorded it."""
    made = str(info.get("id") or "")[:10]
    if not made:
        return "not recorded"
    return made + (" with uncommitted changes" if info.get("dirty") else "")


def control_line(run: Run) -> str:
    """The run's measured setup bias: its A/A control (base against base on an allocation of
    its own) at each timed case, or that it has none."""
    controls = run.controls()
    if not controls:
        return "- A/A control: none (a run from before lora-bench measured one)"
    parts = [f"{case} {mode} {e.ratio_to_base:.3f} {fmt_ci(e.rounds.ratio_ci)}"
             for (case, mode), e in controls.items()]  # fmt: skip
    worst = max(abs(e.ratio_to_base - 1) for e in controls.values())
    return (f"- A/A control (base against base on an allocation of its own: the setup bias of "
            f"this run), farthest from 1 by {100 * worst:.1f}%: {'; '.join(parts)}")  # fmt: skip


def run_markdown(run: Run) -> str:
    return run_header(run) + "\n" + render(run_tables(run), "github")


def write_results(path: Path, run: Run, appendix: str = "") -> Run:
    """Write `run` as JSON at `path` and its tables (then `appendix`) beside it as .md,
    together (write_together), both naming a fresh run id; the run as written."""
    run = replace(run, meta=replace(run.meta, run_id=secrets.token_hex(6)))
    write_together({path: dump_run(run), path.with_suffix(".md"): run_markdown(run) + appendix})
    return run
