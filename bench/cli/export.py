"""`lora-bench export`: a run's ratios in another tool's format."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.report.export import FORMATS, github_action_benchmark
from bench.schema.io import check_output, write_atomic
from bench.schema.run import load_run


def cmd_export(args: argparse.Namespace) -> int:
    if args.output:
        check_output(Path(args.output), [Path(args.result)], "-o")
    entries = github_action_benchmark(load_run(args.result))
    text = json.dumps(entries, indent=1, ensure_ascii=False) + "\n"
    if args.output:
        write_atomic(Path(args.output), text)
        print(f"wrote {len(entries)} entries to {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a run's ratios for another tool")
    p.add_argument("result")
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("-o", "--output", help="write to this file (default: stdout)")
    p.set_defaults(func=cmd_export)
