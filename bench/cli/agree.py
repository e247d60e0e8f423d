"""`lora-bench agree`: how well two runs of the same setup agree, entry by entry, and what
each run's own controls say (bench.report.agreement)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.report.agreement import agreement_header, agreement_tables
from bench.report.base import render
from bench.schema.io import ResultError, check_output, write_atomic
from bench.schema.run import load_run


def cmd_agree(args: argparse.Namespace) -> int:
    if args.output:
        check_output(Path(args.output), [Path(args.first), Path(args.second)], "-o")
    first, second = load_run(args.first), load_run(args.second)
    a, b = first.meta, second.meta
    if (a.device, a.cache) != (b.device, b.cache):
        raise ResultError(
            f"the runs measured different things ({a.device}, {a.cache} cache against "
            f"{b.device}, {b.cache} cache): agree compares two runs of one setup; use compare"
        )
    text = render(agreement_tables(first, second), args.format)
    if args.format != "csv":
        text = agreement_header(first, second) + "\n" + text
    if args.output:
        write_atomic(Path(args.output), text)
    sys.stdout.write(text)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "agree",
        help="how well two runs of one setup agree, and their A/A controls",
        description="Two runs of one commit on one machine, entry by entry: how many ratios "
        "agree within 5%, whether their 95%% CIs overlap, whether any verdict flips; and in "
        "each run the A/A control and computations that should read alike.",
    )
    p.add_argument("first")
    p.add_argument("second")
    p.add_argument("--format", choices=["github", "plain", "csv"], default="github")
    p.add_argument("-o", "--output", help="also write the tables to this file")
    p.set_defaults(func=cmd_agree)
