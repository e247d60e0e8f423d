"""The "Fused modules" table of a run: each module-level impl's step and forward against the
frozen module's, ours beside our per-layer impl and PEFT's, with what a step keeps."""

from __future__ import annotations

from bench.report.base import Table, fmt_bytes, fmt_ci
from bench.schema.run import Run


def fused_tables(run: Run) -> list[Table]:
    rows: list[list[object]] = [
        [e.case, e.mode, e.impl, e.origin,
         f"{e.rounds.ratio:.3f} {fmt_ci(e.rounds.ratio_ci)}",
         f"{e.tokens / e.rounds.impl_median_s:,.0f}",
         fmt_bytes(e.saved_bytes) if e.mode == "train" else "",
         fmt_bytes(e.frozen_saved_bytes) if e.mode == "train" else "",
         fmt_bytes(e.peak_bytes) if e.mode == "train" else "", f"{e.rel_error:.1e}"]
        for e in run.fused()
    ]  # fmt: skip
    headers = ["case", "mode", "impl", "origin", "impl / frozen module [95% CI]", "tokens/s",
               "saved for backward", "frozen module's", "peak", "err"]  # fmt: skip
    note = (
        "Paired rounds against the frozen module (q, k and v, or gate, up and down with "
        "SwiGLU, no adapters): train is forward then backward with the gradients of x (and of "
        "every A and B for the impl). saved: bytes autograd kept for one step, each storage "
        "once, the module's weights left out (x included); peak: bytes allocated over one "
        "step above what was held (CUDA: the allocator; CPU: the torch profiler's memory "
        "timeline). err: against the module's float64 "
        "oracle, worst of the outputs and every gradient."
    )
    return [Table("Fused modules", headers, rows, note)]
