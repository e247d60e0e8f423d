"""`lora-bench report`: the tables of one run, as markdown, plain text, CSV, or one
self-contained HTML page with the ratios drawn."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.report.base import render
from bench.report.document import run_header, run_tables
from bench.report.html import page, run_figures
from bench.schema.io import check_output, write_atomic
from bench.schema.run import load_run, markdown_mismatch

GROUP_BY = ("impl", "shape", "rank")


def cmd_report(args: argparse.Namespace) -> int:
    if args.output:
        check_output(Path(args.output), [Path(args.result)], "-o")
    run = load_run(args.result)
    stale = markdown_mismatch(args.result, run)
    if stale:
        print(f"note: {stale}", file=sys.stderr)
    tables = run_tables(run, args.group_by)
    if args.format == "html":
        title = f"lora-bench results: {run.meta.device}, profile {run.meta.profile}"
        text = page(title, run_header(run), tables, run_figures(run))
    else:
        head = run_header(run) + "\n" if args.format != "csv" else ""
        text = head + render(tables, args.format)
    if args.output:
        write_atomic(Path(args.output), text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="print the tables of one run")
    p.add_argument("result")
    p.add_argument("--format", choices=["github", "plain", "csv", "html"], default="github",
                   help="markdown (default), plain text, CSV, or one self-contained HTML page "
                   "with the ratios and their CIs drawn")  # fmt: skip
    p.add_argument("--group-by", choices=GROUP_BY)
    p.add_argument("-o", "--output", help="write to this file instead of printing")
    p.set_defaults(func=cmd_report)
