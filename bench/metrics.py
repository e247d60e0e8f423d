"""Figures derived from a measured time, stored beside it in benchmark.extra_info."""

from __future__ import annotations

from bench.cases import Case
from bench.timing import Paired, Peaks


def throughput(
    case: Case, mode: str, seconds: float, peaks: Peaks, adapter: bool = True
) -> dict[str, float]:
    """tokens/s, GFLOP/s (useful FLOPs), GB/s (minimum bytes), % of the calibrated peaks,
    and time over the roofline floor. adapter=False: the base layer's work alone."""
    flops, nbytes = case.flops(mode, adapter), case.min_bytes(mode, adapter)
    floor = peaks.floor_s(flops, nbytes)
    return {
        "median_s": seconds,
        "tokens_per_s": case.tokens / seconds,
        "gflops": flops / seconds / 1e9,
        "gbs": nbytes / seconds / 1e9,
        "pct_peak_gemm": 100 * flops / seconds / peaks.gemm_flops_per_s,
        "pct_peak_copy": 100 * nbytes / seconds / peaks.copy_bytes_per_s,
        "floor_s": floor,
        "time_over_floor": seconds / floor,
    }


def paired_info(paired: Paired) -> dict[str, float]:
    """Ratio to the base GEMM of the same case from interleaved rounds, with its spread."""
    return {
        "ratio_to_base": paired.ratio,
        "ratio_iqr": paired.ratio_iqr,
        "base_median_s": paired.base_median_s,
        "inner": paired.inner,
        "rounds": len(paired.impl_s),
    }
