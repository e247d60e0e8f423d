"""Synchronized timing: warm-up, inner-loop sizing, paired impl/base rounds through
pytest-benchmark, and calibration of the device's peak GEMM and copy rates."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from pytest_benchmark.fixture import BenchmarkFixture

from bench.cases import Profile

Work = Callable[[], object]
MIN_ROUND_S = 1e-3  # a round runs the op `inner` times and lasts at least this long


def synchronize(device: str) -> None:
    """Wait for queued device work; a no-op on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def make_round(work: Work, inner: int, device: str) -> Callable[[], None]:
    """A callable that runs `work` `inner` times, then synchronizes before returning."""

    def run() -> None:
        for _ in range(inner):
            work()
        synchronize(device)

    return run


def time_call(fn: Callable[[], object]) -> float:
    """Seconds for one call of `fn`, which must synchronize before it returns."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def warm_up(work: Work, device: str, min_s: float = 0.05, max_calls: int = 20) -> float:
    """Run `work` until it has run 2 times and `min_s` has passed (at most `max_calls`);
    returns the median seconds of one call seen during warm-up."""
    times: list[float] = []
    one = make_round(work, 1, device)
    while len(times) < 2 or (sum(times) < min_s and len(times) < max_calls):
        times.append(time_call(one))
    return statistics.median(times[1:])


def choose_inner(seconds_per_call: float, min_round_s: float = MIN_ROUND_S) -> int:
    """Calls per round so that a round lasts at least `min_round_s`."""
    return max(1, math.ceil(round(min_round_s / max(seconds_per_call, 1e-9), 6)))


def choose_rounds(round_s: float, budget_s: float, min_rounds: int, max_rounds: int) -> int:
    """Paired rounds that fit `budget_s` (each pair costs about 2 rounds), clamped."""
    return max(min_rounds, min(max_rounds, int(budget_s / max(2 * round_s, 1e-9))))


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3) with the inclusive method; a single value gives three equal ones."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, med, q3


@dataclass(frozen=True)
class Paired:
    """Per-op seconds of interleaved rounds: base_s[i] ran right before impl_s[i]."""

    inner: int
    impl_s: list[float]
    base_s: list[float]

    @property
    def ratios(self) -> list[float]:
        return [i / b for i, b in zip(self.impl_s, self.base_s, strict=True)]

    @property
    def ratio(self) -> float:
        """Median of the per-pair ratios impl / base."""
        return quartiles(self.ratios)[1]

    @property
    def ratio_iqr(self) -> float:
        q1, _, q3 = quartiles(self.ratios)
        return q3 - q1

    @property
    def impl_median_s(self) -> float:
        return statistics.median(self.impl_s)

    @property
    def base_median_s(self) -> float:
        return statistics.median(self.base_s)


def run_paired(
    benchmark: BenchmarkFixture, work: Work, base_work: Work, device: str, profile: Profile
) -> Paired:
    """Time `work` with pytest-benchmark, running one round of `base_work` (untimed by
    pytest-benchmark, timed here) before each of its rounds.

    Both are warmed up first. pytest-benchmark's stats are rescaled to seconds per op, as its
    own `iterations` would: its setup hook, which runs the base rounds, forbids iterations > 1.
    """
    per_call = max(warm_up(work, device), warm_up(base_work, device))
    inner = choose_inner(per_call)
    rounds = choose_rounds(
        per_call * inner, profile.seconds_per_benchmark, profile.min_rounds, profile.max_rounds
    )
    base_round = make_round(base_work, inner, device)
    base_s: list[float] = []

    def setup() -> None:
        base_s.append(time_call(base_round) / inner)

    benchmark.pedantic(make_round(work, inner, device), setup=setup, rounds=rounds)
    meta = benchmark.stats
    meta.iterations = inner
    meta.stats.data = [t / inner for t in meta.stats.data]
    return Paired(inner, list(meta.stats.data), base_s)


@dataclass(frozen=True)
class Peaks:
    """Measured ceilings of one device and dtype: a large GEMM and a large copy."""

    gemm_flops_per_s: float
    copy_bytes_per_s: float
    gemm_n: int
    copy_bytes: int

    def as_dict(self) -> dict[str, float]:
        return {
            "gemm_gflops": self.gemm_flops_per_s / 1e9,
            "copy_gbs": self.copy_bytes_per_s / 1e9,
            "gemm_n": self.gemm_n,
            "copy_mib": self.copy_bytes / 2**20,
        }

    def floor_s(self, flops: int, nbytes: int) -> float:
        """Roofline floor: the larger of compute time and memory time."""
        return max(flops / self.gemm_flops_per_s, nbytes / self.copy_bytes_per_s)


def _best_time(fn: Callable[[], object], device: str, reps: int) -> float:
    """Fastest of `reps` synchronized calls after one warm-up: a peak is the best rate seen."""
    run = make_round(fn, 1, device)
    run()
    return min(time_call(run) for _ in range(reps))


def _gemm_flops_per_s(device: str, dtype: torch.dtype, n: int) -> float:
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(device=device, dtype=dtype) for _ in range(2))
    return 2 * n**3 / _best_time(lambda: torch.mm(a, b), device, reps=10)


def _copy_bytes_per_s(device: str, nbytes: int) -> float:
    src = torch.rand(nbytes // 4, generator=torch.Generator().manual_seed(0)).to(device)
    dst = torch.empty_like(src)
    return 2 * src.nbytes / _best_time(lambda: dst.copy_(src), device, reps=5)


def calibrate(device: str, dtype: torch.dtype) -> Peaks:
    """Measure the peak GEMM rate (n x n @ n x n) and copy bandwidth (read + write bytes),
    the best of 10 and of 5 runs.

    Sizes: CUDA 8192 and 1 GiB; CPU fp32 2048 and 256 MiB; CPU half precision 256, since
    CPUs without native half matmul are about 100x slower there.
    """
    cuda = torch.device(device).type == "cuda"
    n = 8192 if cuda else (2048 if dtype == torch.float32 else 256)
    nbytes = 2**30 if cuda else 2**28
    return Peaks(_gemm_flops_per_s(device, dtype, n), _copy_bytes_per_s(device, nbytes), n, nbytes)
