"""The "models" tables of a run: each whole-model variant's paired ratio to the frozen model,
its tokens/s, the adapted layers' share of the call, and its memory."""

from __future__ import annotations

from bench.report.base import MODE_TITLES, Table, fmt_bytes, fmt_ci
from bench.report.verdicts import Comparison, versus
from bench.schema.entries import ModelEntry
from bench.schema.run import Run

PEER = "peft"


def _versus_peft(e: ModelEntry, entries: list[ModelEntry]) -> Comparison | None:
    """The variant's time over PEFT's unmerged model's, on the same case and mode."""
    peer = next((p for p in entries if p.variant == PEER and (p.case, p.mode) == (e.case, e.mode)),
                None)  # fmt: skip
    if peer is None or e.variant == PEER:
        return None
    return versus(f"model {e.case} {e.mode}: {e.variant} vs {PEER}", e.rounds, peer.rounds)


def model_comparisons(run: Run) -> list[Comparison]:
    entries = run.models()
    return [c for e in entries if (c := _versus_peft(e, entries)) is not None]


def model_rows(entries: list[ModelEntry]) -> list[list[object]]:
    rows: list[list[object]] = []
    for e in entries:
        peft = _versus_peft(e, entries)
        rows.append(
            [
                f"{e.model} {e.targets} T={e.tokens} r={e.rank}",
                e.variant,
                f"{e.ratio_to_base:.3f}",
                fmt_ci(e.rounds.ratio_ci),
                f"{e.rounds.ratio_iqr:.3f}",
                "-" if peft is None else peft.cell(),
                f"{e.tokens_per_s:,.0f}",
                f"{100 * e.adapted_share:.0f}% / {100 * e.base_share:.0f}%",
                fmt_bytes(e.peak_bytes),
                f"{e.rel_error:.1e}",
            ]
        )
    return rows


def model_tables(run: Run) -> list[Table]:
    """A table per mode, rows in the order the run measured them."""
    tables = []
    headers = ["model, targets, tokens, rank", "variant", "x frozen", "95% CI", "IQR",
               "/ PEFT's [95% CI]", "tokens/s", "in adapted layers (variant / frozen)", "memory",
               "err vs PEFT"]  # fmt: skip
    methods = sorted({e.memory_method for e in run.models()})
    for mode, title in MODE_TITLES.items():
        entries = [e for e in run.models() if e.mode == mode]
        if not entries:
            continue
        note = (
            "x frozen = median of per-pair ratios to the frozen model (no adapter), timed "
            "interleaved. / PEFT's = x frozen over PEFT's unmerged model's x frozen, with the "
            "95% CI of that quotient: below 1 the variant is faster than PEFT's, and where the "
            "CI holds 1 the run cannot tell them apart (unresolved). In training the frozen "
            "model's step is its forward and backward to the input embeddings, the variant's "
            "adds the LoRA gradients and an AdamW step. The "
            "share is of one call instrumented with hooks on the targeted layers (their frozen "
            "GEMM included), apart from the timed rounds. Memory: " + "; ".join(methods)
        )
        if any(e.variant == "fused" for e in entries):  # bench.families.models.FUSED
            note += (". fused: our `autograd` with attention's q, k and v and the SwiGLU MLPs "
                     "run as fused modules (fuse_modules)")  # fmt: skip
        tables.append(Table(f"Models ({title})", headers, model_rows(entries), note))
    return tables
