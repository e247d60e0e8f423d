"""The `lora-bench plan` subcommand: parameters, adapter file, training memory and extra
FLOPs of LoRA on a model preset, one row per rank."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from tabulate import tabulate

from bench.results import ResultError

MEMORY_ROWS = (
    ("frozen weights", "frozen"),
    ("trained weights", "trained"),
    ("gradients", "gradients"),
    ("optimizer state", "optimizer"),
    ("saved activations of the linear layers", "activations"),
)


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


def size(nbytes: float) -> str:
    """Bytes in the largest unit that keeps the number >= 1 (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(nbytes) < 1024:
            return f"{nbytes:.3g} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return f"{nbytes:,.1f} TiB"


def count(n: int) -> str:
    """A parameter count as 1.23M, 4.5B."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def plan_text(plans: list) -> str:
    """The summary table (a row per rank) and the memory breakdown (a column per rank)."""
    first = plans[0]
    head = (
        f"{first.model}: LoRA on {', '.join(first.targets)} of every block "
        f"({first.adapted_layers} layers); {first.dtype}, {first.optimizer}, "
        f"{first.tokens} tokens per step\n\n"
    )
    summary = [
        [
            p.rank,
            f"{p.scale:.4g}",
            f"{p.trainable:,} ({count(p.trainable)})",
            f"{100 * p.fraction:.3g}%",
            size(p.adapter_bytes),
            size(p.lora.total),
            size(p.full.total),
            f"{p.extra_flops_per_token:,} (+{p.extra_flops_share:.2%})",
        ]
        for p in plans
    ]
    headers = ["rank", "scale", "trainable", "of total", "adapter file", "train memory",
               "full fine-tuning", "extra FLOPs/token unmerged"]  # fmt: skip
    breakdown = [
        [label, *(size(getattr(p.lora, key)) for p in plans), size(getattr(first.full, key))]
        for label, key in MEMORY_ROWS
    ]
    breakdown.append(["total", *(size(p.lora.total) for p in plans), size(first.full.total)])
    memory_headers = ["training memory", *(f"LoRA r={p.rank}" for p in plans), "full fine-tuning"]
    foot = (
        f"\nMerged, the adapter adds no FLOPs; the model's linear layers take "
        f"{first.base_flops_per_token:,} FLOPs a token (attention scores not counted). "
        "Activations: only what the linear layers save for backward; see the README.\n"
    )
    return (
        head
        + tabulate(summary, headers, tablefmt="github", disable_numparse=True)
        + "\n\n"
        + tabulate(breakdown, memory_headers, tablefmt="github", disable_numparse=True)
        + "\n"
        + foot
    )


PRESET_TARGETS = ("attn", "all-linear")


def presets_markdown(rank: int = 16, tokens: int = 2048) -> str:
    """The planner's figures for every preset, with LoRA on attn and on all-linear."""
    from lora_kernels.planner import plan
    from lora_kernels.presets import PRESETS

    rows = []
    for preset in PRESETS.values():
        for targets in PRESET_TARGETS:
            p = plan(preset, targets, rank, tokens=tokens)
            rows.append([preset.name, targets, f"{preset.total_params:,}", count(p.trainable),
                         f"{100 * p.fraction:.2f}%", size(p.adapter_bytes), size(p.lora.total),
                         size(p.full.total), f"+{p.extra_flops_share:.2%}"])  # fmt: skip
    headers = ["model", "targets", "parameters", "trainable", "of total", "adapter file",
               "train memory", "full fine-tuning", "extra FLOPs unmerged"]  # fmt: skip
    return (
        f"### Planner (r={rank}, bf16, AdamW, {tokens} tokens a step)\n\n"
        + tabulate(rows, headers, tablefmt="github", disable_numparse=True)
        + "\n\nFrom `lora-bench plan`: arithmetic, not measured. Memory counts weights, "
        "gradients, optimizer state and what the linear layers save for backward (see the "
        "README).\n"
    )


def cmd_plan(args: argparse.Namespace) -> int:
    from lora_kernels.planner import plan
    from lora_kernels.presets import get_preset

    try:
        preset = get_preset(args.model)
        plans = [
            plan(preset, args.targets, rank, alpha=args.alpha, use_rslora=args.rslora,
                 dtype=args.dtype, optimizer=args.optimizer, tokens=args.tokens)
            for rank in _ranks(args.rank or ["16"])
        ]  # fmt: skip
    except ValueError as err:
        raise ResultError(str(err)) from None
    if args.json:
        sys.stdout.write(json.dumps([dataclasses.asdict(p) for p in plans], indent=1) + "\n")
    else:
        sys.stdout.write(plan_text(plans))
    return 0


def add_plan_parser(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    p.add_argument("--tokens", type=int, default=2048, help="tokens per training step")
    p.add_argument("--json", action="store_true", help="print the plans as JSON")
    p.set_defaults(func=cmd_plan, rank=None)
