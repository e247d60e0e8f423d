"""The `lora-bench` command: report, compare, check, plot, baseline and export read results
JSONs and import neither torch nor the registry; ab drives two side processes and imports no
torch itself; impls and verify load the registry.

Exit codes: 0 fine, 1 regressions found by `check` or `ab` or failures found by `verify`,
2 unusable input (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import check as gate
from bench.ab_cli import add_ab_parser
from bench.ab_report import MEMORY_HEADERS, memory_row
from bench.compare import compare_tables, one_sided
from bench.export import FORMATS, github_action_benchmark
from bench.plan_cli import add_plan_parser
from bench.results import ResultError, load_run, write_atomic
from bench.tables import Table, render, run_header, run_tables
from bench.verdicts import IMPROVEMENT, REGRESSION, add_gate_options, gate_thresholds

GROUP_BY = ("impl", "shape", "rank")


def cmd_report(args: argparse.Namespace) -> int:
    run = load_run(args.result)
    tables = run_tables(run, args.group_by)
    head = run_header(run) + "\n" if args.format != "csv" else ""
    sys.stdout.write(head + render(tables, args.format))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    a, b = load_run(args.a), load_run(args.b)
    tables, only_a, only_b = compare_tables(a, b)
    text = render(tables, args.format)
    for side, ids in (("A", only_a), ("B", only_b)):
        if ids:
            text += f"\nOnly in {side} ({len(ids)}): {one_sided(ids)}\n"
    if args.output:
        write_atomic(Path(args.output), text)
    sys.stdout.write(text)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    threshold, alpha, mem_rel, mem_mib = gate_thresholds(args)
    baseline, current = load_run(args.baseline), load_run(args.current)
    gate.check_comparable(baseline, current)
    ignored = args.ignore or []
    verdicts = [v for v in gate.verdicts(baseline, current) if v.impl not in ignored]
    memory = [m for m in gate.memory_changes(baseline, current) if m.impl not in ignored]
    if not verdicts:
        raise ResultError("no timed case is in both runs: nothing to check")
    for warning in gate.copy_drift(baseline, current):
        print(warning, file=sys.stderr)
    flagged = [v for v in verdicts if v.status(threshold, alpha) == REGRESSION]
    if flagged and args.recheck:
        project = gate.find_project(Path(args.project or "."))
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
    headers = ["case", "impl", "mode", "baseline ratio", "current ratio", "change", "p"]
    for status in (REGRESSION, IMPROVEMENT):
        rows = [
            [v.case, v.impl, v.mode, f"{v.base_ratio:.3f} ±{v.base_iqr:.3f}",
             f"{v.cur_ratio:.3f} ±{v.cur_iqr:.3f}", f"{100 * v.change:+.1f}%", f"{v.p_value:.2g}"]
            for v in verdicts if v.status(threshold, alpha) == status
        ]  # fmt: skip
        mem = [memory_row(m, status) for m in memory
               if m.status(mem_rel, mem_mib) == status]  # fmt: skip
        counts[status] = len(rows) + len(mem)
        if rows:
            tables.append(Table(f"{status.capitalize()}s: ratio to base", headers, rows))
        if mem:
            tables.append(Table(f"{status.capitalize()}s: peak memory", MEMORY_HEADERS, mem))
    if tables:
        sys.stdout.write(render(tables, "github"))
    print(
        f"{len(verdicts)} timed and {len(memory)} memory cases checked; time: past "
        f"{100 * threshold:g}%, beyond the IQRs and p < {alpha:g}; memory: past "
        f"{100 * mem_rel:g}% and {mem_mib:g} MiB: {counts[REGRESSION]} regression(s), "
        f"{counts[IMPROVEMENT]} improvement(s)"
    )
    return 1 if counts[REGRESSION] else 0


def cmd_plot(args: argparse.Namespace) -> int:
    from bench.plot import plot_runs

    paths = plot_runs([load_run(p) for p in args.results], Path(args.output))
    for p in paths:
        print(f"wrote {p}")
    if not paths:
        print("nothing to plot: no timed cases in these runs", file=sys.stderr)
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    run = load_run(args.result)
    folder = Path(args.dir) if args.dir else Path(args.result).parent
    target = folder / f"baseline-{run.meta.device}.json"
    if target.exists() and not args.force:
        raise ResultError(f"{target} exists; pass --force to replace it")
    write_atomic(target, Path(args.result).read_bytes())
    print(f"wrote {target}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    entries = github_action_benchmark(load_run(args.result))
    text = json.dumps(entries, indent=1, ensure_ascii=False) + "\n"
    if args.output:
        write_atomic(Path(args.output), text)
        print(f"wrote {len(entries)} entries to {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_impls(args: argparse.Namespace) -> int:
    from lora_kernels import IMPLS, load_plugins
    from lora_kernels.registry import impls_table

    if not args.no_plugins:
        load_plugins(args.impl or [])
    print(impls_table([i for i in IMPLS.values() if not args.no_plugins or i.origin != "plugin"]))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from lora_kernels import get_impl, load_plugins
    from lora_kernels.conformance import verify

    load_plugins(args.impl or [])
    impl = get_impl(args.name)
    report = verify(impl, devices=args.device)
    sys.stdout.write(report.render())
    return 0 if report.passed else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lora-bench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("report", help="print the tables of one run")
    r.add_argument("result")
    r.add_argument("--format", choices=["github", "plain", "csv"], default="github")
    r.add_argument("--group-by", choices=GROUP_BY)
    r.set_defaults(func=cmd_report)
    c = sub.add_parser("compare", help="A against B, case by case (e.g. CPU against CUDA)")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--format", choices=["github", "plain", "csv"], default="github")
    c.add_argument("-o", "--output", help="also write the tables to this file")
    c.set_defaults(func=cmd_compare)
    k = sub.add_parser("check", help="fail on ratio-to-base regressions against a baseline")
    k.add_argument("baseline")
    k.add_argument("current")
    add_gate_options(k)
    k.add_argument("--recheck", action="store_true", help="measure flagged cases again first")
    k.add_argument(
        "--ignore",
        action="append",
        metavar="IMPL",
        help="leave this impl out of the gate; repeatable",
    )
    k.add_argument(
        "--project",
        metavar="DIR",
        help="the lora-bench checkout --recheck runs pytest in (default: found from the "
        "current directory upwards)",
    )
    k.set_defaults(func=cmd_check)
    g = sub.add_parser("plot", help="PNG charts of one or two runs")
    g.add_argument("results", nargs="+")
    g.add_argument("-o", "--output", required=True, help="folder for the PNGs")
    g.set_defaults(func=cmd_plot)
    b = sub.add_parser("baseline", help="copy a run to baseline-<device>.json")
    b.add_argument("result")
    b.add_argument("--dir", help="folder of the baseline (default: the run's folder)")
    b.add_argument("--force", action="store_true", help="replace an existing baseline")
    b.set_defaults(func=cmd_baseline)
    add_ab_parser(sub)
    add_plan_parser(sub)
    x = sub.add_parser("export", help="write a run's ratios for another tool")
    x.add_argument("result")
    x.add_argument("--format", choices=FORMATS, required=True)
    x.add_argument("-o", "--output", help="write to this file (default: stdout)")
    x.set_defaults(func=cmd_export)
    i = sub.add_parser("impls", help="the registry of implementations, as a markdown table")
    i.add_argument("--impl", action="append", metavar="MODULE:ATTR", help="load this plugin too")
    i.add_argument(
        "--no-plugins", action="store_true", help="ours and the peers only (the README's table)"
    )
    i.set_defaults(func=cmd_impls)
    v = sub.add_parser("verify", help="run the equivalence suite on one impl: exit 0 pass, 1 fail")
    v.add_argument("name", help="the impl's registry name")
    v.add_argument(
        "--device",
        choices=["cpu", "cuda", "all"],
        default="all",
        help="devices to check (default: every device the impl claims that is here)",
    )
    v.add_argument(
        "--impl",
        action="append",
        metavar="MODULE:ATTR",
        help="load this plugin first (module:attr or path/to/file.py:attr)",
    )
    v.set_defaults(func=cmd_verify)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (ResultError, OSError) as err:
        print(f"lora-bench {args.command}: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # an unknown impl name or a plugin that failed to load
        if args.command not in ("impls", "verify"):
            raise
        print(f"lora-bench {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
