"""`lora-bench report`: the tables of one run, as markdown, plain text or CSV."""

from __future__ import annotations

import argparse
import sys

from bench.report.base import render
from bench.report.document import run_header, run_tables
from bench.schema.run import load_run, markdown_mismatch

GROUP_BY = ("impl", "shape", "rank")


def cmd_report(args: argparse.Namespace) -> int:
    run = load_run(args.result)
    stale = markdown_mismatch(args.result, run)
    if stale:
        print(f"note: {stale}", file=sys.stderr)
    tables = run_tables(run, args.group_by)
    head = run_header(run) + "\n" if args.format != "csv" else ""
    sys.stdout.write(head + render(tables, args.format))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="print the tables of one run")
    p.add_argument("result")
    p.add_argument("--format", choices=["github", "plain", "csv"], default="github")
    p.add_argument("--group-by", choices=GROUP_BY)
    p.set_defaults(func=cmd_report)
