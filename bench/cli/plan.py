"""The `lora-bench plan` subcommand: parameters, adapter file, training memory and extra
FLOPs of LoRA on a model preset, one row per rank."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from bench.report.plan import plan_text
from bench.schema.io import ResultError


def _ranks(values: list[str]) -> list[int]:
    ranks = []
    for item in values:
        for part in item.split(","):
            try:
                ranks.append(int(part))
            except ValueError:
                raise ResultError(f"--rank {part!r}: ranks are integers >= 1") from None
    bad = [r for r in ranks if r < 1]
    if bad or not ranks:
        raise ResultError(f"--rank {bad or values}: ranks are integers >= 1")
    return sorted(set(ranks))


def cmd_plan(args: argparse.Namespace) -> int:
    from lora_kernels.planner import plan
    from lora_kernels.presets import get_preset

    try:
        preset = get_preset(args.model)
        plans = [
            plan(preset, args.targets, rank, alpha=args.alpha, use_rslora=args.rslora,
                 dtype=args.dtype, optimizer=args.optimizer, tokens=args.tokens,
                 base_dtype=args.base_dtype)
            for rank in _ranks(args.rank or ["16"])
        ]  # fmt: skip
    except ValueError as err:
        raise ResultError(str(err)) from None
    if args.json:
        sys.stdout.write(json.dumps([dataclasses.asdict(p) for p in plans], indent=1) + "\n")
    else:
        sys.stdout.write(plan_text(plans))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="parameters, adapter size, memory and FLOPs of LoRA on a model")
    p.add_argument("model", help="a preset: gpt2, gpt2-medium, bert-base, llama3-8b, ...")
    p.add_argument(
        "--targets",
        required=True,
        help="comma list of module names, roles (q,k,v,o) or attn, mlp, all-linear",
    )
    p.add_argument(
        "--rank", action="append", default=None, help="rank, or a comma list (default 16)"
    )
    p.add_argument("--alpha", type=float, default=None, help="default: the rank (scale 1)")
    p.add_argument("--rslora", action="store_true", help="scale alpha / sqrt(r)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument(
        "--base-dtype",
        choices=["nf4", "int8", "fp8"],
        default=None,
        help="hold the frozen linear weights quantized (QLoRA); default: --dtype",
    )
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    p.add_argument("--tokens", type=int, default=2048, help="tokens per training step")
    p.add_argument("--json", action="store_true", help="print the plans as JSON")
    p.set_defaults(func=cmd_plan, rank=None)
