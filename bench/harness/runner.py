"""The steps every benchmark takes: skip what cannot run, build (timed apart), check against
the oracle, time in pairs with base, and record one typed entry of the results."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture
from torch import Tensor

from bench.harness.cases import Case
from bench.harness.kernels import trainable, variant_of
from bench.harness.memory import CPU_METHOD, CUDA_METHOD, CpuProbe, measure_cuda
from bench.harness.placement import CopyPool, Rotation, held_setups, share_of
from bench.harness.profiling import case_folder, profile_entry, trace_calls
from bench.harness.rounds import Budget
from bench.harness.session import Settings
from bench.harness.timing import (
    Setup,
    Work,
    cuda_events_s,
    do_bench_s,
    run_paired,
    synchronize,
    torch_timer_s,
)
from bench.schema.entries import (
    CONTROL,
    Entry,
    MemoryEntry,
    Paired,
    TimeEntry,
    TimerCheckEntry,
)
from bench.schema.run import entry_dict
from lora_kernels import IMPLS, Impl, LoRAWeights, Op, get_impl, tolerance
from lora_kernels.reference import forward_error, gradient_errors

if TYPE_CHECKING:  # the ab gate's base side runs this on older kernels: import no new ones
    from lora_kernels.conv import ConvDoRAWeights, ConvLoRAWeights
    from lora_kernels.dora import DoRAWeights

Weights: TypeAlias = "LoRAWeights | DoRAWeights"
TIMER_PAIRS = 61  # the timer check compares clocks on one setup (a whole rotation): enough


@dataclass
class Checked:
    """An impl's work and base's work on one case, checked against the oracle first: their
    calls on each setup (an independent allocation of the weights, input and cold copies)."""

    setups: list[Rotation]
    rel_error: float
    build_s: float
    copied_output: bool  # the op's output is not contiguous: `work` includes the copy
    reads: list[tuple[CopyPool, CopyPool]]  # per setup, what the impl's and base's calls read

    @property
    def work(self) -> Work:
        """The impl's work on the first setup (sharing its rotation with `base_work`)."""
        return self.setups[0].sides()[0]

    @property
    def base_work(self) -> Work:
        return self.setups[0].sides()[1]

    def fit(self, inner: int) -> None:
        """Size every setup's rotation for rounds of `inner` calls."""
        for r in self.setups:
            r.fit(inner)


def runnable(impl_name: str, case: Case, mode: str) -> Impl:
    """The impl, or a pytest.skip that says why it cannot run this case."""
    impl = get_impl(impl_name)
    reason = case.skip_reason() or impl.unavailable_reason(case.device, case.torch_dtype, mode)
    if reason:
        pytest.skip(reason)
    return impl


def build_timed(
    impl: Impl,
    w: Weights | ConvLoRAWeights | ConvDoRAWeights,
    first_call: Callable[[Op], object],
    device: str,
):
    """Build the op and make its first call (compile, autotune, caches), synchronized.
    Returns (op, build_s): build_s is kept out of the timed rounds and recorded apart."""
    synchronize(device)
    start = time.perf_counter()
    op = impl.build(w, "train" if w.A.requires_grad else "infer")
    first_call(op)
    synchronize(device)
    return op, time.perf_counter() - start


def contiguous(op: Op, memory_format: torch.memory_format = torch.contiguous_format) -> Op:
    """op followed by the copy of its output to dense memory in `memory_format`."""
    return lambda x: op(x).contiguous(memory_format=memory_format)


def charge_copy(
    op: Op, x: Tensor, memory_format: torch.memory_format = torch.contiguous_format
) -> tuple[Op, bool]:
    """op, or when its output is not dense in `memory_format` (the default layout; a
    channels-last model's torch.channels_last), op followed by the copy to it that the next
    op needing it would pay; and whether the copy was added."""
    if op(x).is_contiguous(memory_format=memory_format):
        return op, False
    return contiguous(op, memory_format), True


def assert_equivalent(impl: Impl, case: Case, errors: dict[str, float]) -> float:
    """Fail unless every error is within the dtype's tolerance; returns the largest.
    `base` drops the adapter on purpose: its error is recorded, not asserted."""
    worst = max(errors.values())
    tol = tolerance(case.torch_dtype, case.device)
    if impl.lora_equivalent and not worst <= tol:
        pytest.fail(f"{impl.name} on {case}: rel error {errors} exceeds {tol:g}; not timed")
    return worst


def base_of(w: Weights) -> LoRAWeights:
    """The LoRA tensors of w, on which `base` (the denominator of every ratio) is built."""
    return w.lora if variant_of(w) == "dora" else w  # type: ignore[union-attr,return-value]


def _contiguous_if(op: Op, copied: bool) -> Op:
    return contiguous(op) if copied else op


def _step(op: Op, w: Weights, x: Tensor, grad_out: Tensor) -> Work:
    """A training step: x's and the trainable tensors' grads cleared, forward, backward."""
    tensors = [x, *trainable(w)]

    def step() -> None:
        for t in tensors:
            t.grad = None
        op(x).backward(grad_out)

    return step


def _setups(case: Case, variant: str, mode: str, count: int) -> list[CopyPool]:
    """The held setups of the case: each its own seeded allocation of weights and input."""

    def make() -> CopyPool:
        w, x = case.weights(variant=variant), case.input()
        if mode == "train":
            w, x = w.requires_grad_(), x.requires_grad_()
        return CopyPool(w, x)

    return held_setups((case, mode, variant), count, make)


def _rotations(
    impl: Impl,
    case: Case,
    mode: str,
    copies: int,
    setups: int,
    copied: bool,
    control: bool,
    grad_out: Tensor | None = None,
) -> tuple[list[Rotation], list[tuple[CopyPool, CopyPool]]]:
    """The impl's and base's calls on each held setup of the case, rotating over `copies`
    copies (1: always the same, a warm cache), and what each side reads per setup. Both read
    the setup's copies; with `control` the impl's calls read an allocation of their own, with
    the same values."""
    rotations, reads = [], []
    share = share_of(copies, setups)
    for pool in _setups(case, variant_of(impl), mode, setups):
        mine = pool.copy() if control else pool

        def make(i: int, pool: CopyPool = pool, mine: CopyPool = mine) -> Setup:
            w, x = pool.get(i)
            mine_w, mine_x = mine.get(i)
            op = _contiguous_if(impl.build(mine_w, mode), copied)
            base = IMPLS["base"].build(base_of(w), mode)
            if grad_out is None:
                return (lambda: op(mine_x)), (lambda: base(x))
            return _step(op, mine_w, mine_x, grad_out), _step(base, w, x, grad_out)

        rotations.append(Rotation(make, copies, share))
        reads.append((mine, pool))
    return rotations, reads


def forward_work(
    case: Case, impl_name: str, copies: int = 1, setups: int = 1, control: bool = False
) -> Checked:
    """Checked forward of the impl and of base on the case: checked on weights of its own,
    then built on each of `setups` held setups rotating over `copies` copies."""
    impl = runnable(impl_name, case, "infer")
    w, x = case.weights(variant=variant_of(impl)), case.input()
    op, build_s = build_timed(impl, w, lambda op: op(x), case.device)
    err = assert_equivalent(impl, case, {"y": forward_error(op, w, x)})
    _, copied = charge_copy(op, x)
    rotations, reads = _rotations(impl, case, "infer", copies, setups, copied, control)
    return Checked(rotations, err, build_s, copied, reads)


def train_work(
    case: Case, impl_name: str, copies: int = 1, setups: int = 1, control: bool = False
) -> Checked:
    """Checked training step (forward, then dx and the trainable tensors' gradients) of the
    impl, and the frozen base step (forward, then dx), on each of `setups` held setups
    rotating over `copies` copies."""
    impl = runnable(impl_name, case, "train")
    w = case.weights(variant=variant_of(impl)).requires_grad_()
    x = case.input().requires_grad_()
    grad_out = torch.randn(case.tokens, case.out_features, generator=torch.Generator())
    grad_out = grad_out.to(x)
    op, build_s = build_timed(impl, w, lambda op: _step(op, w, x, grad_out)(), case.device)
    errors = {"y": forward_error(op, w, x), **gradient_errors(op, w, x, grad_out)}
    err = assert_equivalent(impl, case, errors)
    _, copied = charge_copy(op, x)
    rotations, reads = _rotations(impl, case, "train", copies, setups, copied, control, grad_out)
    return Checked(rotations, err, build_s, copied, reads)


def checked_work(
    case: Case,
    impl_name: str,
    mode: str,
    copies: int = 1,
    setups: int = 1,
    control: bool = False,
) -> Checked:
    """forward_work or train_work, as `mode` says."""
    work = forward_work if mode == "infer" else train_work
    return work(case, impl_name, copies, setups, control)


@dataclass
class Harness:
    """What a benchmark test needs: the run's settings and the test's node id. Each test
    records one entry, into the run and into pytest-benchmark's extra_info."""

    settings: Settings
    nodeid: str

    def record(self, benchmark: BenchmarkFixture, entry: Entry) -> None:
        self.settings.entries.append(entry)
        benchmark.extra_info.update(entry_dict(entry))

    def trace_folder(self, case: Case) -> Path | None:
        """Where --lora-trace puts the case's traces, or None without it."""
        trace_dir = self.settings.trace_dir
        return None if trace_dir is None else trace_dir / case_folder(case)

    def _paired(
        self, benchmark: BenchmarkFixture, case: Case, impl_name: str, mode: str, budget: Budget
    ) -> tuple[Checked, int, Paired] | None:
        """Check the impl on the case, then time it in pairs with base on the budget's
        setups: (checked, copies rotated, paired), or None when pytest-benchmark is disabled
        (the work then runs once). `base` is the A/A control: its impl side reads an
        allocation of its own. With --lora-trace, a trace of the checked work follows the
        timed rounds."""
        copies = self.settings.copies(case, mode)
        control = impl_name == CONTROL
        checked = checked_work(case, impl_name, mode, copies, budget.setups, control)
        if benchmark.disabled:
            checked.work()
            return None
        works = [r.sides() for r in checked.setups]
        paired = run_paired(benchmark, works, case.device, budget, fit=checked.fit)
        folder = self.trace_folder(case)
        if folder is not None:
            trace_calls(checked.work, case.device, folder, impl_name, mode)
        return checked, sum(r.copies for r in checked.setups), paired

    def breakdown(self, benchmark: BenchmarkFixture, case: Case, impl_name: str, mode: str) -> None:
        """Where the impl's call goes, from the profiler, outside any timed round; its paired
        timing is the timed benchmark's of the same case (the report joins them). The time
        pytest-benchmark shows for it is the cost of profiling."""
        benchmark.group = "where the time goes"
        checked = checked_work(case, impl_name, mode, self.settings.copies(case, mode))
        works = (checked.work, checked.base_work)
        folder = self.trace_folder(case)
        entry = benchmark.pedantic(
            profile_entry, args=(case, impl_name, mode, works, self.nodeid, folder),
            kwargs={"paired": None}, rounds=1,
        )  # fmt: skip
        self.record(benchmark, entry)

    def time(self, benchmark: BenchmarkFixture, case: Case, impl_name: str, mode: str) -> None:
        """Check, then time the impl in pairs with base; a forward or a training step."""
        benchmark.group = f"{'forward' if mode == 'infer' else 'train'} {case}"
        budget = self.settings.budget(self.settings.profile.budget)
        measured = self._paired(benchmark, case, impl_name, mode, budget)
        if measured is None:
            return
        checked, copies, paired = measured
        peaks = self.settings.peaks(case.device, case.dtype)
        adapter = get_impl(impl_name).lora_equivalent
        entry = TimeEntry(
            fullname=self.nodeid,
            **case.fields(),
            impl=impl_name,
            mode=mode,
            in_features=case.in_features,
            out_features=case.out_features,
            bias=case.bias,
            flops=case.flops(mode, adapter),
            min_bytes=case.min_bytes(mode, adapter),
            floor_s=peaks.floor_s(case.flops(mode), case.min_bytes(mode)),
            rel_error=checked.rel_error,
            build_s=checked.build_s,
            threads=self.settings.threads,
            tf32=self.settings.tf32(),
            copied_output=checked.copied_output,
            copies=copies,
            rounds=paired,
            control=impl_name == CONTROL,
        )
        self.record(benchmark, entry)

    def timer_check(self, benchmark: BenchmarkFixture, case: Case, impl_name: str) -> None:
        """Our paired per-op time of the impl's forward against independent timers of the same
        work: torch.utils.benchmark everywhere, CUDA events and triton's do_bench on CUDA."""
        benchmark.group = "timer check"
        budget = self.settings.budget(self.settings.profile.budget)
        budget = replace(budget, setups=1, max_pairs=min(budget.max_pairs, TIMER_PAIRS))
        measured = self._paired(benchmark, case, impl_name, "infer", budget)
        if measured is None:
            return
        checked, copies, paired = measured
        work = checked.work
        seconds = self.settings.budget(self.settings.profile.budget).seconds
        refs = {"torch.utils.benchmark": torch_timer_s(work, self.settings.threads, seconds)}
        if torch.device(case.device).type == "cuda":
            refs["CUDA events"] = cuda_events_s(work, paired.inner, len(paired.impl_s))
            if importlib.util.find_spec("triton") is not None:
                refs["triton do_bench"] = do_bench_s(work)
        entry = TimerCheckEntry(
            fullname=self.nodeid,
            **case.fields(),
            impl=impl_name,
            copies=copies,
            ours_s=paired.impl_median_s,
            references=refs,
        )
        self.record(benchmark, entry)

    def memory(
        self, benchmark: BenchmarkFixture, probe: CpuProbe, case: Case, impl_name: str, mode: str
    ) -> None:
        """Peak memory of building and running the impl once: CUDA in-process, CPU in the
        probe. The time pytest-benchmark shows for it is the cost of the measurement."""
        runnable(impl_name, case, mode)
        benchmark.group = "memory"
        cuda = torch.device(case.device).type == "cuda"
        peak = benchmark.pedantic(
            measure_cuda if cuda else probe.measure, args=(impl_name, case, mode), rounds=1
        )
        entry = MemoryEntry(
            fullname=self.nodeid,
            **case.fields(),
            impl=impl_name,
            mode=mode,
            method=CUDA_METHOD if cuda else CPU_METHOD,
            peak_bytes=peak,
        )
        self.record(benchmark, entry)
