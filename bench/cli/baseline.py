"""`lora-bench baseline`: copy a run to baseline-<device>.json, never over one silently."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.schema.io import ResultError, check_output, write_atomic
from bench.schema.run import load_run


def cmd_baseline(args: argparse.Namespace) -> int:
    run = load_run(args.result)
    folder = Path(args.dir) if args.dir else Path(args.result).parent
    target = folder / f"baseline-{run.meta.device}.json"
    if target.resolve() == Path(args.result).resolve():
        raise ResultError(f"{target} is the run itself; give another --dir")
    if target.exists() and not args.force:
        raise ResultError(f"{target} exists; pass --force to replace it")
    check_output(target, [Path(args.result)], "--dir")
    write_atomic(target, Path(args.result).read_bytes())
    print(f"wrote {target}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("baseline", help="copy a run to baseline-<device>.json")
    p.add_argument("result")
    p.add_argument("--dir", help="folder of the baseline (default: the run's folder)")
    p.add_argument("--force", action="store_true", help="replace an existing baseline")
    p.set_defaults(func=cmd_baseline)
