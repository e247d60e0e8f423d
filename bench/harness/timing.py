"""Synchronized timing: warm-up, inner-loop sizing, paired impl/base rounds through
pytest-benchmark, and calibration of the device's peak GEMM and copy rates."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from pytest_benchmark.fixture import BenchmarkFixture
from torch import Tensor

from bench.harness.rounds import BUDGET, Budget, choose_inner, stop_reason
from bench.schema.entries import Paired

Work = Callable[[], object]


def call_or_step(
    op: Callable[[Tensor], object],
    x: Tensor,
    grads: Tensor | tuple[Tensor, ...] | None,
    tensors: list[Tensor],
) -> Work:
    """op(x), or with `grads` (one per output) a training step: `tensors`' grads cleared,
    then forward and backward."""
    if grads is None:
        return lambda: op(x)

    def step() -> None:
        for t in tensors:
            t.grad = None
        torch.autograd.backward(op(x), grads)  # type: ignore[arg-type]

    return step


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


Setup = tuple[Work, Work]  # (the impl's work, base's work) on one allocation of what they read


def warm_up_all(setups: Sequence[Setup], device: str) -> float:
    """Warm the first setup's works up and run every other work once; the longer of the
    first setup's calls, in seconds, as warm-up saw it."""
    (work, base_work), *others = setups
    per_call = max(warm_up(work, device), warm_up(base_work, device))
    for w, b in others:
        make_round(w, 1, device)()
        make_round(b, 1, device)()
    return per_call


def base_first(pair: int, setups: int) -> bool:
    """Whether pair number `pair` (from 0, round robin over `setups`) runs its base round
    first. Each setup takes both orders by turns, and neighbouring setups start apart, so a
    round's position in its pair, and what the round before it left behind, fall on both
    sides alike: ..., base impl, impl base, base impl, ..."""
    return (pair % setups + pair // setups) % 2 == 0


class PairedTimer:
    """Interleaved, synchronized rounds of an impl's work and base's, `inner` ops each, on one
    or several setups (independent allocations of what both read): pair k runs on setup
    k mod S, its two rounds in the order `base_first` gives. Call `before_impl` then
    `impl_round` as many times as wanted (pytest-benchmark's pedantic does), or `run` until
    the budget's rule stops them, and read `paired()`. The only pairing loop of the bench."""

    def __init__(
        self,
        setups: Sequence[Setup],
        device: str,
        per_call_s: float | None = None,
        fit: Callable[[int], object] | None = None,
    ) -> None:
        if not setups:
            raise ValueError("paired rounds need at least one setup")
        # per_call_s: the caller ran every work warm already and knows the longest call's
        # seconds (a whole generation: warming it up again would cost seconds a side)
        per_call = per_call_s or warm_up_all(setups, device)
        self.inner = choose_inner(per_call)
        if fit is not None:  # what the works read can now be sized for rounds of `inner`
            fit(self.inner)
        self.round_s = per_call * self.inner  # expected seconds of one round
        self._rounds = [
            (make_round(w, self.inner, device), make_round(b, self.inner, device))
            for w, b in setups
        ]
        self.impl_s: list[float] = []
        self.base_s: list[float] = []
        self.setups: list[int] = []
        self._half: float | None = None  # the first round of the pair under way, if any
        self.started: float | None = None  # perf_counter at the first timed round
        self.stopped, self.target = "", 0.0  # why `run` stopped, and its target

    def _time(self, impl: bool) -> float:
        impl_round, base_round = self._rounds[len(self.impl_s) % len(self._rounds)]
        return time_call(impl_round if impl else base_round) / self.inner

    def _done(self, impl: float, base: float) -> None:
        self.setups.append(len(self.impl_s) % len(self._rounds))
        self.impl_s.append(impl)
        self.base_s.append(base)
        self._half = None

    def _finish(self) -> None:
        """The base round an impl-first pair still owes."""
        if self._half is not None:
            self._done(self._half, self._time(impl=False))

    def before_impl(self) -> None:
        """What runs before the next impl round: the base round the pair before still owes,
        then this pair's base round if it runs base first."""
        if self.started is None:
            self.started = time.perf_counter()
        self._finish()
        if base_first(len(self.impl_s), len(self._rounds)):
            self._half = self._time(impl=False)

    def impl_round(self) -> None:
        """The pair's impl round, after `before_impl`."""
        impl = self._time(impl=True)
        if base_first(len(self.impl_s), len(self._rounds)):
            assert self._half is not None, "before_impl runs the base round first"
            self._done(impl, self._half)
        else:
            self._half = impl

    def pair(self) -> None:
        """One whole pair."""
        self.before_impl()
        self.impl_round()
        self._finish()

    def elapsed_s(self) -> float:
        return 0.0 if self.started is None else time.perf_counter() - self.started

    def ratios(self) -> list[float]:
        return [i / b for i, b in zip(self.impl_s, self.base_s, strict=True)]

    def run(self, budget: Budget) -> Paired:
        """Paired rounds, on top of any already taken, until `budget`'s rule stops them."""
        self._finish()
        while (stop := self._stop(budget)) is None:
            self.pair()
        self.stopped, self.target = stop, budget.target
        return self.paired()

    def _stop(self, budget: Budget) -> str | None:
        return stop_reason(self.ratios(), self.elapsed_s(), budget, self.setups)

    def paired(self) -> Paired:
        """The whole pairs so far; before `run` has stopped them, as a fixed budget's."""
        stopped = self.stopped or BUDGET
        setups = list(self.setups) if len(self._rounds) > 1 else []
        return Paired(self.inner, list(self.impl_s), list(self.base_s), stopped, self.target,
                      setups)  # fmt: skip


def run_paired(
    benchmark: BenchmarkFixture,
    setups: Sequence[Setup],
    device: str,
    budget: Budget,
    per_call_s: float | None = None,
    fit: Callable[[int], object] | None = None,
) -> Paired:
    """Time each setup's work in pairs with its base_work until the ratio is sure or the
    budget ends.

    The first `budget.min_pairs` pairs run through pytest-benchmark's public `pedantic`: its
    `setup` runs (and we time) what precedes each impl round, its target the impl round.
    pedantic takes a fixed count, so the pairs after those, as many as the stopping rule
    wants, run in the same loop of ours: pytest-benchmark's table shows the first pairs' impl
    rounds, the results file every pair. pytest-benchmark's statistics are per round of
    `inner` ops (it forbids iterations > 1 with a setup); the per-op figures come from our own
    clock around the same calls. `per_call_s`: every work is warm and a call takes about this
    long (no warm-up). `fit(inner)`: called once the ops a round runs are known.
    """
    timer = PairedTimer(setups, device, per_call_s, fit)
    benchmark.pedantic(timer.impl_round, setup=timer.before_impl, rounds=budget.min_pairs)
    return timer.run(budget)


def torch_timer_s(work: Work, threads: int, seconds: float) -> float:
    """Median seconds per call of `work` by torch.utils.benchmark.Timer (blocked_autorange;
    it synchronizes CUDA around each block)."""
    from torch.utils.benchmark import Timer

    timer = Timer(stmt="work()", globals={"work": work}, num_threads=threads)
    return timer.blocked_autorange(min_run_time=seconds).median


def cuda_events_s(work: Work, inner: int, rounds: int) -> float:
    """Median seconds per call from CUDA events recorded around `inner` calls."""
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            work()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / inner)
    return statistics.median(times)


def do_bench_s(work: Work) -> float:
    """Median seconds per call by triton.testing.do_bench (CUDA events, L2 flushed before
    every call)."""
    from triton.testing import do_bench

    return do_bench(work, warmup=25, rep=200, return_mode="median") / 1e3


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
