"""`lora-bench run`: the installed benchmark modules under pytest (`pytest --pyargs bench
--benchmark-only`), writing <device>-<profile>.json and .md to ./results of the current
folder. Its options are the bench's --lora-* options without the prefix; pytest's own come
after `--`."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from bench.harness.processes import die_with_parent
from bench.plugin.options import OPTIONS
from bench.schema.io import check_writable

PYTEST_USAGE_ERROR = 4


def pytest_argv(args: argparse.Namespace, extra: list[str]) -> list[str]:
    """The pytest command line of this run: the bench's options, then the user's."""
    argv = ["--pyargs", "bench", "--benchmark-only", "-p", "no:cacheprovider"]
    for option in OPTIONS:
        value = getattr(args, option.dest)
        if value is None:
            continue
        if option.name == "results":
            value = str(Path(value).resolve())  # pytest's rootdir need not be this folder
        for item in value if isinstance(value, list) else [value]:
            argv += [f"--lora-{option.name}", option.text(item)]
    return argv + extra


def cmd_run(args: argparse.Namespace) -> int:
    check_writable(Path(args.lora_results))  # before anything is measured
    # pytest in a fresh interpreter: none of this command's imports leak into the run
    cmd = [sys.executable, "-m", "pytest", *pytest_argv(args, args.pytest_args)]
    code = subprocess.run(cmd, check=False, preexec_fn=die_with_parent).returncode
    return 2 if code == PYTEST_USAGE_ERROR else code


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run the benchmarks (the main job) into ./results",
        description="Run the installed benchmark modules under pytest; pytest's own options "
        "go after `--`, e.g. `lora-bench run --profile tiny -- -k forward`. Exit codes are "
        "pytest's, except 2 for unusable options.",
    )
    add_bench_options(p)
    p.set_defaults(func=cmd_run)


def add_bench_options(p: argparse.ArgumentParser, leave_out: tuple[str, ...] = ()) -> None:
    """The bench's --lora-* options, without the prefix, less those named in `leave_out`."""
    for option in OPTIONS:
        if option.name not in leave_out:
            p.add_argument(f"--{option.name}", dest=option.dest, help=option.help,
                           **option.kwargs)  # fmt: skip
