"""`lora-bench compare`: run A against run B, case by case (e.g. CPU against CUDA)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.report.base import render
from bench.report.compare import compare_tables, one_sided
from bench.schema.io import check_output, write_atomic
from bench.schema.run import load_run


def cmd_compare(args: argparse.Namespace) -> int:
    if args.output:
        check_output(Path(args.output), [Path(args.a), Path(args.b)], "-o")
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


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="A against B, case by case (e.g. CPU against CUDA)")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--format", choices=["github", "plain", "csv"], default="github")
    p.add_argument("-o", "--output", help="also write the tables to this file")
    p.set_defaults(func=cmd_compare)
