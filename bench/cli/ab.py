"""The `lora-bench ab` subcommand: its options, and the run from them to the exit code."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psutil

from bench.cli.options import add_gate_options, gate_thresholds
from bench.gates.ab import Options, run_ab
from bench.gates.check import find_project
from bench.harness.rounds import TARGET
from bench.plugin.options import fraction, positive_int, positive_number, text
from bench.report.ab import ab_markdown
from bench.schema.ab import dump_ab
from bench.schema.io import ResultError, check_output, write_atomic

PROFILES = ("tiny", "quick", "full")  # bench.cases.PROFILES, named here without torch
DTYPES = ("fp32", "bf16", "fp16")
DEFAULT_DTYPES = {"cpu": "fp32", "cuda": "bf16,fp32"}


def _list(values: list[str] | None) -> tuple[str, ...]:
    """Repeated and comma-separated values, in order, without blanks."""
    return tuple(v.strip() for item in values or [] for v in item.split(",") if v.strip())


def options(args: argparse.Namespace) -> Options:
    """Options from the command line; ResultError on a bad value."""
    dtypes = _list([args.dtype or DEFAULT_DTYPES[args.device]])
    bad = [d for d in dtypes if d not in DTYPES]
    if bad or not dtypes:
        raise ResultError(f"--dtype {args.dtype!r}: use a comma list of {', '.join(DTYPES)}")
    threads = args.threads
    if threads is None:
        threads = psutil.cpu_count(logical=False) or psutil.cpu_count() or 1
    if args.rechecks < 0:
        raise ResultError(f"--rechecks must be >= 0, got {args.rechecks}")
    threshold, alpha, memory_rel, memory_mib = gate_thresholds(args)
    return Options(
        base_ref=args.base_ref,
        project=find_project(Path(args.project or "."), "ab runs each side"),
        profile=args.profile,
        device=args.device,
        dtypes=dtypes,
        cache=args.cache,
        threads=threads,
        seconds=args.seconds,
        target=args.target,
        threshold=threshold,
        alpha=alpha,
        memory_rel=memory_rel,
        memory_mib=memory_mib,
        memory=not args.no_memory,
        rechecks=args.rechecks,
        cases=_list(args.cases),
        impls=_list(args.impls),
        impl_specs=tuple(args.impl or []),
        require_clean=args.require_clean,
    )


def cmd_ab(args: argparse.Namespace) -> int:
    outputs = [(Path(p), o) for p, o in ((args.json, "--json"), (args.markdown, "--markdown")) if p]
    for path, option in outputs:  # before the first measurement
        check_output(path, [], option)
    if len(outputs) == 2 and outputs[0][0].resolve() == outputs[1][0].resolve():
        raise ResultError("--json and --markdown name the same file; give two")
    run = run_ab(options(args))
    text = ab_markdown(run)
    sys.stdout.write(text)  # the tables first: a file that fails to write loses nothing
    if args.json:
        write_atomic(Path(args.json), dump_ab(run))
    if args.markdown:
        write_atomic(Path(args.markdown), text)
    return 1 if run.regressions() else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser(
        "ab",
        help="time a base commit's impls against the working tree's, in one interleaved run",
        description="Exit 0 clean, 1 on a regression (time, memory, or a current-side failure), "
        "2 on unusable input.",
    )
    a.add_argument("base_ref", type=text, help="the git ref to compare against, e.g. HEAD~1")
    a.add_argument("--profile", choices=PROFILES, default="quick", help="whose cases (quick)")
    a.add_argument(
        "--cases",
        action="append",
        type=text,
        metavar="PATTERNS",
        help="case ids to keep: comma list of globs, or prefixes such as 'gpt2'; repeatable",
    )
    a.add_argument(
        "--impls",
        action="append",
        type=text,
        metavar="NAMES",
        help="comma list (default: ours); repeatable",
    )
    a.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    a.add_argument("--dtype", type=text, help="comma list (default fp32 on cpu, bf16,fp32 on cuda)")
    a.add_argument("--threads", type=positive_int,
                   help="torch threads, >= 1 (default: the physical cores)")  # fmt: skip
    a.add_argument("--cache", choices=["cold", "warm"], default="cold")
    a.add_argument(
        "--seconds",
        type=positive_number,
        default=5.0,
        help="most time of paired rounds per comparison (default 5 s)",
    )
    a.add_argument(
        "--target",
        type=fraction,
        default=TARGET,
        help="stop a comparison's rounds once the 95%% CI of its ratio is within this much of "
        f"the ratio (default {100 * TARGET:g}%%)",
    )
    add_gate_options(a)
    a.add_argument(
        "--rechecks",
        type=int,
        default=2,
        help="times a flagged comparison is set up and timed again; a change counts only "
        "when every attempt shows it (default 2)",
    )
    a.add_argument("--no-memory", action="store_true", help="time only")
    a.add_argument("--impl", action="append", type=text, metavar="MODULE:ATTR",
                   help="load this plugin")  # fmt: skip
    a.add_argument("--require-clean", action="store_true", help="refuse uncommitted changes")
    a.add_argument("--json", help="write the A/B results JSON here")
    a.add_argument("--markdown", help="write the tables here too (e.g. a job summary)")
    a.add_argument("--project", metavar="DIR", help="the checkout (default: found upwards)")
    a.set_defaults(func=cmd_ab)
