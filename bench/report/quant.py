"""The quantized-base tables of a run: each impl's forward and training step against the
quantized base's own (and the dense base beside it), the bytes training keeps, the error of
merging into the quantized weight, and a QLoRA model's training step against PEFT's."""

from __future__ import annotations

from bench.report.base import Table, fmt_bytes, fmt_ci
from bench.schema.entries import QuantEntry
from bench.schema.run import Run

DENSE, MERGE, MODEL = "dense", "merge", "model"


def _ratio(e: QuantEntry) -> str:
    return f"{e.rounds.ratio:.3f} {fmt_ci(e.rounds.ratio_ci)}"


def layer_table(run: Run) -> Table:
    """One row per (case, mode, impl): its time over the quantized base's, and its bytes."""
    rows: list[list[object]] = []
    for e in (e for e in run.quant() if e.impl not in (MERGE, MODEL)):
        if e.impl == DENSE:  # dense / quantized: show quantized / dense, what dequantizing costs
            lo, hi = e.rounds.ratio_ci
            ratio = f"{1 / e.rounds.ratio:.3f} [{1 / hi:.3f}, {1 / lo:.3f}]"
            what = "quantized base / dense base"
        else:
            ratio, what = _ratio(e), "impl / quantized base"
        saved = fmt_bytes(e.saved_bytes) if e.mode == "train" else ""
        peak = fmt_bytes(e.peak_bytes) if e.mode == "train" else ""
        error = "" if e.impl == DENSE else f"{e.rel_error:.1e}"
        rows.append([e.case, e.mode, e.impl, what, ratio, fmt_bytes(e.base_bytes), saved, peak,
                     error])  # fmt: skip
    headers = ["case", "mode", "impl", "ratio of", "median [95% CI]", "W held",
               "saved for backward", "peak", "err"]  # fmt: skip
    note = (
        "Paired rounds against the quantized base's own forward or training step (forward, "
        "then dx): Ŵ dequantized, then the GEMM, which is what bitsandbytes' layer runs on the "
        "CPU. The dense row gives the quantized base's time over the dense base of the same "
        "shape: what dequantizing costs. W held: the codes and scales (dense: the float W). "
        "saved for backward: bytes autograd kept in one training step, each storage once, "
        "the layer's own weights left out (x included; a dequantized Ŵ counts; tensors a "
        "Function keeps outside save_for_backward are not seen). peak: bytes allocated over one "
        "step above what was held before (CUDA: the allocator's statistics; CPU: the torch "
        "profiler's memory timeline). err: against the float64 oracle on the dequantized "
        "base, worst of y, dx, dA and dB."
    )
    return Table("Quantized base", headers, rows, note)


def merge_table(run: Run) -> Table:
    rows: list[list[object]] = [
        [e.case, f"{e.vs_unmerged:.2e}", f"{e.vs_float:.2e}", f"{e.quantized:.2e}",
         f"{e.weight_error:.2e}", _ratio(e)]
        for e in run.quant() if e.impl == MERGE
    ]  # fmt: skip
    headers = ["case", "vs unmerged", "vs float", "unmerged vs float", "weight error",
               "merged / unmerged time"]  # fmt: skip
    note = (
        "Merging into a quantized base: Ŵ + s·B A quantized again in the base's format. "
        "Relative output errors on the case's input: the merged layer against the unmerged "
        "quantized one (what merging costs), and against the float layer the base came from; "
        "the unmerged layer's own distance to the float one for scale. weight error: "
        "‖Ŵ' − (Ŵ + s·B A)‖ / ‖Ŵ + s·B A‖. Time: the merged layer's forward over the unmerged "
        "one's (qlora_lean), paired."
    )
    return Table("Merging into a quantized base", headers, rows, note)


def model_table(run: Run) -> Table:
    rows: list[list[object]] = [
        [e.case, _ratio(e), fmt_bytes(e.peak_bytes), fmt_bytes(e.peer_peak_bytes),
         fmt_bytes(e.saved_bytes), fmt_bytes(e.peer_saved_bytes), fmt_bytes(e.base_bytes),
         f"{e.rel_error:.1e}"]
        for e in run.quant() if e.impl == MODEL
    ]  # fmt: skip
    headers = ["model", "ours / PEFT's QLoRA", "peak (ours)", "peak (PEFT)", "saved (ours)",
               "saved (PEFT)", "W held", "grads vs PEFT"]  # fmt: skip
    note = (
        "A whole model's training step (forward, loss, backward) with LoRA on every linear "
        "layer over a quantized base: ours (from_peft: QLoRALinear, qlora_lean, on the same "
        "codes, A and B) paired with PEFT's QLoRA. peak: bytes allocated over one step above "
        "what was held (as in the table above); saved: bytes autograd kept for backward."
    )
    return Table("QLoRA model training step", headers, rows, note)


def quant_tables(run: Run) -> list[Table]:
    return [layer_table(run), merge_table(run), model_table(run)]
