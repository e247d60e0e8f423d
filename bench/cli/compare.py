"""`lora-bench compare`: run A against run B, case by case (e.g. CPU against CUDA)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.report.base import Table, render
from bench.report.compare import compare_tables, one_sided, run_label
from bench.report.document import run_header
from bench.report.html import compare_figures, page
from bench.schema.io import check_output, write_atomic
from bench.schema.run import load_run


def cmd_compare(args: argparse.Namespace) -> int:
    if args.output:
        check_output(Path(args.output), [Path(args.a), Path(args.b)], "-o")
    a, b = load_run(args.a), load_run(args.b)
    tables, only_a, only_b = compare_tables(a, b)
    if args.format == "html":
        labels = (f"A: {run_label(a)}", f"B: {run_label(b)}")
        sides = [Table(f"Only in {side}", ["case", "impl", "mode"], [list(i) for i in ids])
                 for side, ids in (("A", only_a), ("B", only_b))]  # fmt: skip
        header = "\n".join(f"- {label}: {line[2:]}" for label, run in zip("AB", (a, b), strict=True)
                           for line in run_header(run).splitlines()
                           if line.startswith(("- device:", "- date:", "- torch")))  # fmt: skip
        text = page(f"lora-bench: {labels[0]} against {labels[1]}", header,
                    [*tables, *sides], compare_figures(a, b, labels))  # fmt: skip
    else:
        text = render(tables, args.format)
        for side, ids in (("A", only_a), ("B", only_b)):
            if ids:
                text += f"\nOnly in {side} ({len(ids)}): {one_sided(ids)}\n"
    if args.output:
        write_atomic(Path(args.output), text)
    sys.stdout.write(text)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="A against B, case by case (e.g. CPU against CUDA)")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--format", choices=["github", "plain", "csv", "html"], default="github",
                   help="markdown (default), plain text, CSV, or one self-contained HTML page "
                   "with both runs' ratios drawn")  # fmt: skip
    p.add_argument("-o", "--output", help="also write the tables to this file")
    p.set_defaults(func=cmd_compare)
