"""The `lora-bench` command: run the benchmarks, and read, compare and gate their results.
report, compare, agree, check, plot, baseline, export and merge read results JSONs and import
neither torch nor the registry; ab drives two side processes and sweep Ray tasks, and import
no torch themselves; run, impls, verify, profile, model and plan load torch.

Exit codes: 0 fine, 1 regressions found by `check` or `ab`, failures found by `verify` or
failed shards of `sweep`, 2 unusable input (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from bench.cli import (
    ab,
    agree,
    baseline,
    check,
    compare,
    docs,
    export,
    impls,
    merge,
    model,
    plan,
    plot,
    profile,
    report,
    run,
    sweep,
    verify,
)
from bench.schema.io import ResultError

COMMANDS = (
    report,
    compare,
    agree,
    check,
    plot,
    baseline,
    ab,
    plan,
    export,
    impls,
    verify,
    profile,
    model,
    run,
    merge,
    sweep,
    docs,
)
PASS_THROUGH = "--"  # what follows goes to pytest, for these commands only:
PYTEST_COMMANDS = ("run", "sweep")


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line on stderr and exit 2."""

    def error(self, message: str) -> NoReturn:
        if message.endswith("expected one argument"):  # argparse takes "-5%" for an option
            message += " (a value that starts with '-' goes after '=': --max-slowdown=-5%)"
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="lora-bench", description=(__doc__ or "").splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    rest: list[str] = []
    if PASS_THROUGH in argv:
        at = argv.index(PASS_THROUGH)
        argv, rest = argv[:at], argv[at + 1 :]
    p = parser()
    args = p.parse_args(argv)
    if rest and args.command not in PYTEST_COMMANDS:
        p.error(f"{args.command}: only `run` and `sweep` pass options after {PASS_THROUGH} on "
                "(to pytest)")  # fmt: skip
    args.pytest_args = rest
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
