"""The "Tensor-parallel LoRA" table of a run: each split's step and forward against the
frozen tensor-parallel layer of the same split, with the bytes its collectives put in."""

from __future__ import annotations

from bench.report.base import Table, fmt_bytes, fmt_ci
from bench.schema.run import Run


def tp_tables(run: Run) -> list[Table]:
    entries = run.tp()
    if not entries:
        return []
    rows: list[list[object]] = [
        [f"{e.layer} T={e.tokens} r={e.rank}" + (f" n={e.adapters}" if e.adapters else ""),
         e.mode, f"{e.parallel}/{e.adapter}", e.world,
         f"{e.rounds.ratio:.3f} {fmt_ci(e.rounds.ratio_ci)}",
         f"{e.tokens / e.rounds.impl_median_s:,.0f}",
         fmt_bytes(e.comm_bytes - e.base_comm_bytes), fmt_bytes(e.base_comm_bytes),
         f"{fmt_bytes(e.peak_bytes)} / {fmt_bytes(e.base_peak_bytes)}", f"{e.rel_error:.1e}"]
        for e in entries
    ]  # fmt: skip
    headers = ["layer, tokens, rank (n: adapters of a batch)", "mode", "split", "tp",
               "LoRA / frozen TP layer [95% CI]", "tokens/s", "adapter's comm", "base's comm",
               "peak per rank (LoRA / frozen)", "err"]  # fmt: skip
    backends = sorted({f"{e.backend} on {e.device}, {e.threads} thread(s) a rank" for e in entries})
    note = (
        "Paired rounds on rank 0 against the frozen layer of the same split in the same "
        "processes, every call started on a barrier (a rank's time includes waiting for the "
        "others). comm: bytes the collectives put in on one rank per call (train: forward "
        "and backward; a ring all-reduce sends about 2·(tp-1)/tp of it), measured and equal "
        "to lora_kernels.tp.expected_traffic; the adapter's is what it adds to the base's "
        "own collective. n: a multi-adapter batch (each token's adapter drawn uniformly), "
        "its forward. peak: bytes allocated over one call on the worst rank. err: worst "
        "rank's slices against the whole layer's float64 oracle. "
        + "; ".join(backends)
        + (
            ". On one machine gloo moves the bytes through shared memory on the same cores "
            "that compute: read the ratios as this machine's, not a link's."
            if any(e.backend == "gloo" for e in entries)
            else ""
        )
    )
    return [Table("Tensor-parallel LoRA", headers, rows, note)]
