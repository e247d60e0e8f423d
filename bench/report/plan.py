"""The planner's tables: one model's plan per rank, and every preset's at one rank. The plans
are lora_kernels.planner's; this module only renders them."""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

from bench.report.base import fmt_bytes

MEMORY_ROWS = (
    ("frozen weights", "frozen"),
    ("trained weights", "trained"),
    ("gradients", "gradients"),
    ("optimizer state", "optimizer"),
    ("saved activations of the linear layers", "activations"),
    ("a dequantized weight (QLoRA)", "dequantized"),
)


def count(n: int) -> str:
    """A parameter count as 1.23M, 4.5B."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def plan_text(plans: list[Any]) -> str:
    """The summary table (a row per rank) and the memory breakdown (a column per rank)."""
    first = plans[0]
    head = (
        f"{first.model}: LoRA on {', '.join(first.targets)} of every block "
        f"({first.adapted_layers} layers); {first.dtype}"
        + (f" on a {first.base_dtype} base" if first.base_dtype != first.dtype else "")
        + f", {first.optimizer}, "
        f"{first.tokens} tokens per step\n\n"
    )
    summary = [
        [
            p.rank,
            f"{p.scale:.4g}",
            f"{p.trainable:,} ({count(p.trainable)})",
            f"{100 * p.fraction:.3g}%",
            fmt_bytes(p.adapter_bytes),
            fmt_bytes(p.lora.total),
            fmt_bytes(p.full.total),
            f"{p.extra_flops_per_token:,} (+{p.extra_flops_share:.2%})",
        ]
        for p in plans
    ]
    headers = ["rank", "scale", "trainable", "of total", "adapter file", "train memory",
               "full fine-tuning", "extra FLOPs/token unmerged"]  # fmt: skip
    breakdown = []
    for label, key in MEMORY_ROWS:
        if key == "dequantized" and not any(p.lora.dequantized for p in plans):
            continue  # a float base: no weight is dequantized
        full = fmt_bytes(getattr(first.full, key))
        breakdown.append([label, *(fmt_bytes(getattr(p.lora, key)) for p in plans), full])
    totals = [fmt_bytes(p.lora.total) for p in plans]
    breakdown.append(["total", *totals, fmt_bytes(first.full.total)])
    memory_headers = ["training memory", *(f"LoRA r={p.rank}" for p in plans), "full fine-tuning"]
    foot = (
        f"\nMerged, the adapter adds no FLOPs; the model's linear layers take "
        f"{first.base_flops_per_token:,} FLOPs a token (attention scores not counted). "
        "Activations: only what the linear layers save for backward (docs: Whole models).\n"
    )
    return (
        head
        + tabulate(summary, headers, tablefmt="github", disable_numparse=True)
        + "\n\n"
        + tabulate(breakdown, memory_headers, tablefmt="github", disable_numparse=True)
        + "\n"
        + foot
    )


def presets_markdown(plans: list[tuple[str, Any]], rank: int, tokens: int) -> str:
    """The planner's figures of each (targets as asked, Plan) pair, one row each."""
    rows = []
    for targets, p in plans:
        base = p.total - p.trainable
        sizes = [fmt_bytes(n) for n in (p.adapter_bytes, p.lora.total, p.full.total)]
        share = f"{100 * p.fraction:.2f}%"
        rows.append([p.model, targets, f"{base:,}", count(p.trainable), share, *sizes,
                     f"+{p.extra_flops_share:.2%}"])  # fmt: skip
    headers = ["model", "targets", "parameters", "trainable", "of total", "adapter file",
               "train memory", "full fine-tuning", "extra FLOPs unmerged"]  # fmt: skip
    return (
        f"### Planner (r={rank}, bf16, AdamW, {tokens} tokens a step)\n\n"
        + tabulate(rows, headers, tablefmt="github", disable_numparse=True)
        + "\n\nFrom `lora-bench plan`: arithmetic, not measured. Memory counts weights, "
        "gradients, optimizer state and what the linear layers save for backward (docs: "
        "Whole models).\n"
    )
