"""`lora-bench plot`: PNG charts of one or two runs (the plot extra, matplotlib)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.schema.run import load_run


def cmd_plot(args: argparse.Namespace) -> int:
    from bench.report.plot import plot_runs

    paths = plot_runs([load_run(p) for p in args.results], Path(args.output))
    for p in paths:
        print(f"wrote {p}")
    if not paths:
        print("nothing to plot: no timed cases in these runs", file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="PNG charts of one or two runs")
    p.add_argument("results", nargs="+")
    p.add_argument("-o", "--output", required=True, help="folder for the PNGs")
    p.set_defaults(func=cmd_plot)
