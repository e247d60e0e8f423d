"""`lora-bench verify`: the conformance kit on one implementation (loads torch)."""

from __future__ import annotations

import argparse
import sys


def cmd_verify(args: argparse.Namespace) -> int:
    from lora_kernels import get_impl, load_plugins
    from lora_kernels.conformance import verify

    load_plugins(args.impl or [])
    impl = get_impl(args.name)
    report = verify(impl, devices=args.device)
    sys.stdout.write(report.render())
    return 0 if report.passed else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="run the equivalence suite on one impl: exit 0 pass, 1 fail")
    p.add_argument("name", help="the impl's registry name")
    p.add_argument(
        "--device",
        choices=["cpu", "cuda", "all"],
        default="all",
        help="devices to check (default: every device the impl claims that is here)",
    )
    p.add_argument(
        "--impl",
        action="append",
        metavar="MODULE:ATTR",
        help="load this plugin first (module:attr or path/to/file.py:attr)",
    )
    p.set_defaults(func=cmd_verify)
