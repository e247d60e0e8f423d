"""`lora-bench check`: ratio-to-base and peak-memory regressions of a run against a baseline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.cli.options import add_gate_options, gate_thresholds
from bench.gates import check as gate
from bench.report.ab import MEMORY_HEADERS, memory_row
from bench.report.base import Table, fmt_ci, overlap, render
from bench.schema.io import ResultError
from bench.schema.run import load_run
from bench.stats.verdicts import IMPROVEMENT, NOT_JUDGED, REGRESSION, SAME


def fmt_change(change: float, ci: tuple[float, float]) -> str:
    return f"{100 * change:+.1f}% [{100 * ci[0]:+.1f}%, {100 * ci[1]:+.1f}%]"


def cmd_check(args: argparse.Namespace) -> int:
    threshold, alpha, mem_rel, mem_mib = gate_thresholds(args)
    if args.project is not None and not args.recheck:
        raise ResultError("--project names the checkout --recheck runs pytest in; give "
                          "--recheck too, or leave --project out")  # fmt: skip
    project = gate.find_project(Path(args.project or ".")) if args.recheck else None
    baseline, current = load_run(args.baseline), load_run(args.current)
    gate.check_comparable(baseline, current)
    ignored = args.ignore or []
    verdicts = [v for v in gate.verdicts(baseline, current) if v.impl not in ignored]
    memory = [m for m in gate.memory_changes(baseline, current) if m.impl not in ignored]
    if not verdicts:
        raise ResultError("no timed case is in both runs: nothing to check")
    for warning in gate.copy_drift(baseline, current):
        print(warning, file=sys.stderr)
    off = gate.controls_off(baseline, current, threshold)

    def status(v: gate.Verdict) -> str:
        called = v.status(threshold, alpha)
        return NOT_JUDGED if called != SAME and (v.case, v.mode) in off else called

    flagged = [v for v in verdicts if status(v) == REGRESSION]
    if flagged and project is not None:
        again = [v for v in flagged if "::" not in v.fullname]  # not a pytest benchmark
        for v in again:
            print(f"  {v.case} {v.impl} {v.mode}: not rechecked (not a pytest benchmark: run "
                  "`lora-bench model` again to measure it again)", file=sys.stderr)  # fmt: skip
        flagged = [v for v in flagged if v not in again]
    if flagged and project is not None:
        print(f"rechecking {len(flagged)} flagged case(s) in {project}:", file=sys.stderr)
        rerun = gate.recheck(flagged, current, project)
        kept = {v: gate.better_of(v, rerun) for v in flagged}
        for v, k in kept.items():
            print(
                f"  {v.case} {v.impl} {v.mode}: {v.cur_ratio:.3f} first, kept {k.cur_ratio:.3f} "
                f"(baseline {v.base_ratio:.3f})",
                file=sys.stderr,
            )
        verdicts = [kept.get(v, v) for v in verdicts]
    tables, counts = [], {}
    headers = ["case", "impl", "mode", "baseline ratio [95% CI] ± IQR",
               "current ratio [95% CI] ± IQR", "CIs overlap", "change [95% CI]", "p"]  # fmt: skip
    for wanted in (REGRESSION, IMPROVEMENT):
        rows = [
            [v.case, v.impl, v.mode,
             f"{v.base_ratio:.3f} {fmt_ci(v.base_ci)} ±{v.base_iqr:.3f}",
             f"{v.cur_ratio:.3f} {fmt_ci(v.cur_ci)} ±{v.cur_iqr:.3f}",
             overlap(v.base_ci, v.cur_ci), fmt_change(v.change, v.change_ci),
             f"{v.p_value:.2g}"]
            for v in verdicts if status(v) == wanted
        ]  # fmt: skip
        mem = [memory_row(m, wanted) for m in memory
               if m.status(mem_rel, mem_mib) == wanted]  # fmt: skip
        counts[wanted] = len(rows) + len(mem)
        if rows:
            tables.append(Table(f"{wanted.capitalize()}s: ratio to base", headers, rows))
        if mem:
            tables.append(Table(f"{wanted.capitalize()}s: peak memory", MEMORY_HEADERS, mem))
    unjudged = [
        [v.case, v.impl, v.mode, f"{v.base_ratio:.3f}", f"{v.cur_ratio:.3f}",
         fmt_change(v.change, v.change_ci), off[(v.case, v.mode)]]
        for v in verdicts if status(v) == NOT_JUDGED
    ]  # fmt: skip
    if unjudged:
        tables.append(Table(
            "Not judged: the A/A control is off",
            ["case", "impl", "mode", "baseline ratio", "current ratio", "change [95% CI]",
             "why"], unjudged,
            f"at these cases a run's A/A control (base against base on an allocation of its "
            f"own) reads past {100 * threshold / 2:g}%: setups alone move their ratios that far, "
            "so a change of the threshold cannot be told from them; rerun on a quieter machine",
        ))  # fmt: skip
    for line in gate.control_notes(baseline, current):
        print(line, file=sys.stderr)
    if tables:
        sys.stdout.write(render(tables, "github"))
    print(
        f"{len(verdicts)} timed and {len(memory)} memory cases checked; time: beyond the IQRs, "
        f"p < {alpha:g}, past {100 * threshold / 2:g}% with a CI reaching "
        f"{100 * threshold:g}%; memory: past "
        f"{100 * mem_rel:g}% and {mem_mib:g} MiB: {counts[REGRESSION]} regression(s), "
        f"{counts[IMPROVEMENT]} improvement(s)"
        + (f", {len(unjudged)} change(s) not judged (A/A control off)" if unjudged else "")
    )
    return 1 if counts[REGRESSION] else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="fail on ratio-to-base regressions against a baseline")
    p.add_argument("baseline")
    p.add_argument("current")
    add_gate_options(p)
    p.add_argument("--recheck", action="store_true", help="measure flagged cases again first")
    p.add_argument(
        "--ignore",
        action="append",
        metavar="IMPL",
        help="leave this impl out of the gate; repeatable",
    )
    p.add_argument(
        "--project",
        metavar="DIR",
        help="the lora-bench checkout --recheck runs pytest in (default: found from the "
        "current directory upwards)",
    )
    p.set_defaults(func=cmd_check)
