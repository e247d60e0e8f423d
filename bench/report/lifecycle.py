"""The "adapter lifecycle" tables of a run: what loading, switching and deleting an adapter
cost with n adapters loaded, merging a whole model, and a compiled model's hot swap; PEFT's
against ours."""

from __future__ import annotations

from bench.report.base import Table, fmt_seconds
from bench.schema.entries import LifecycleEntry
from bench.schema.run import Run


def _cell(e: LifecycleEntry | None) -> str:
    return f"{fmt_seconds(e.median_s)} ±{fmt_seconds(e.iqr_s / 2)}" if e else "-"


def ops_table(run: Run) -> Table:
    """One row per (model, op, variant), one column per count of adapters loaded."""
    entries = [e for e in run.lifecycle() if e.op != "hotswap"]
    counts = sorted({e.loaded for e in entries})
    at = {(e.model, e.op, e.variant, e.loaded): e for e in entries}
    rows: list[list[object]] = []
    for model, op, variant in dict.fromkeys((e.model, e.op, e.variant) for e in entries):
        cells = [_cell(at.get((model, op, variant, n))) for n in counts]
        worst = max(
            e.rel_error for e in entries if (e.model, e.op, e.variant) == (model, op, variant)
        )
        rows.append([model, op, variant, *cells, f"{worst:.1e}"])
    headers = ["model", "op", "variant", *(f"{n} loaded" for n in counts), "err vs PEFT"]
    note = (
        "Median seconds of one op over its rounds (± half the IQR), each round from the same "
        "state; n loaded: adapters the model held before the op. load: read PEFT's files "
        "(adapter_config.json, adapter_model.safetensors) into one more adapter; switch: make "
        "another loaded adapter the active one; delete: drop one; merge/unmerge: every layer "
        "of the model. err: the model's logits after the op against PEFT's function of the "
        "adapter left active."
    )
    return Table("Adapter lifecycle", headers, rows, note)


def hotswap_table(run: Run) -> Table:
    rows: list[list[object]] = [
        [e.model, e.variant, e.backend, fmt_seconds(e.compile_s), fmt_seconds(e.call_s),
         _cell(e), e.recompiles, fmt_seconds(e.first_call_s), f"{e.rel_error:.1e}"]
        for e in run.lifecycle() if e.op == "hotswap"
    ]  # fmt: skip
    headers = ["model", "variant", "backend", "compile (first call)", "call", "swap",
               "recompiles", "first call after", "err vs PEFT"]  # fmt: skip
    note = (
        "torch.compile of the whole model, then the adapter's weights swapped from PEFT's files "
        "in turn (PEFT: peft.utils.hotswap after prepare_model_for_compiled_hotswap; ours: "
        "lora_kernels.hotswap_adapter, in place). recompiles: graphs compiled after the swaps; "
        "err: the first call after them against PEFT's eager function of the last file."
    )
    return Table("Adapter hot swap under torch.compile", headers, rows, note)


def lifecycle_tables(run: Run) -> list[Table]:
    return [ops_table(run), hotswap_table(run)]
