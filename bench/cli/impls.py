"""`lora-bench impls`: the registry of implementations as a markdown table (loads torch)."""

from __future__ import annotations

import argparse


def cmd_impls(args: argparse.Namespace) -> int:
    from lora_kernels import IMPLS, load_plugins
    from lora_kernels.registry import impls_table

    if not args.no_plugins:
        load_plugins(args.impl or [])
    print(impls_table([i for i in IMPLS.values() if not args.no_plugins or i.origin != "plugin"]))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("impls", help="the registry of implementations, as a markdown table")
    p.add_argument("--impl", action="append", metavar="MODULE:ATTR", help="load this plugin too")
    p.add_argument(
        "--no-plugins", action="store_true", help="ours and the peers only (the docs' table)"
    )
    p.set_defaults(func=cmd_impls)
