"""The tensor-parallel bench's steps for one job. Each rank (a process of its own) builds its
shard, checks its outputs and gradients (a multi-adapter batch: its outputs) against the
whole layer's float64 oracle, counts the bytes each collective puts in, measures its peak,
then times the LoRA layer in pairs with the frozen layer of the same split: every call
starts on a barrier, so a rank's time includes waiting for the others at the collectives,
and rank 0 decides when the rounds stop."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict

import pytest
import torch
import torch.distributed as dist
from pytest_benchmark.fixture import BenchmarkFixture

from bench.families.tp import TP_PROFILES, TPCase, TPJob
from bench.harness.cases import DTYPES
from bench.harness.memory import peak_bytes
from bench.harness.rounds import STOPS, Budget, choose_inner, stop_reason
from bench.harness.runner import Harness
from bench.harness.timing import synchronize
from bench.schema.entries import Paired, TPEntry
from lora_kernels import LoRAWeights, reference_forward, reference_grads, rel_error, tolerance
from lora_kernels.multi import multi_reference_forward
from lora_kernels.tp import TPLoRALinear, TPMultiLoRALinear, Traffic, expected_traffic, run_ranks

TIMEOUT_S = 300.0  # a collective waiting longer than this means a rank is gone
PEAK_ATTEMPTS = 10
Steps = tuple[Callable[[], None], Callable[[], None], Callable[[], None]]  # lora, base, clear


def _steps(layer: TPLoRALinear, x: torch.Tensor, dy: torch.Tensor, train: bool) -> Steps:
    """The LoRA layer's call and the frozen layer's (forward, and in training backward with dx,
    x requiring its gradient, and the adapter's gradients), and what clears the gradients
    they leave: the timed rounds run it before each call, the peaks outside the measured call
    (else a call's peak would count the previous call's gradients it frees)."""

    def clear() -> None:
        x.grad = None
        layer.zero_grad(set_to_none=True)

    def call(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            if train:
                fn(x).backward(dy)
                return
            with torch.no_grad():
                fn(x)

        return run

    return call(layer), call(layer.base_forward), clear


def _errors(case: TPCase, w: LoRAWeights, whole: tuple[torch.Tensor, torch.Tensor],
            layer: TPLoRALinear, x: torch.Tensor, dy: torch.Tensor,
            train: bool) -> float:  # fmt: skip
    """This rank's worst relative error against its slices of the whole layer `w`'s oracle
    on the whole x and upstream gradient; x and dy are this rank's."""
    whole_x, whole_dy = whole
    c = case.split.slices(case.in_features, case.out_features, case.rank, dist.get_rank())
    column = case.split.kind == "column"
    y = layer(x)
    want = reference_forward(w, whole_x)
    errors = [rel_error(y, want[..., c.out] if column else want)]
    if train:
        y.backward(dy)
        g = reference_grads(w, whole_x, whole_dy)
        errors += [rel_error(x.grad, g.x if column else g.x[..., c.inp]),  # type: ignore[arg-type]
                   rel_error(layer.lora_A.grad, g.A[c.a_rows, c.a_cols]),  # type: ignore[arg-type]
                   rel_error(layer.lora_B.grad, g.B[c.b_rows])]  # type: ignore[arg-type]  # fmt: skip
    return max(errors)


def _peak(call: Callable[[], None], clear: Callable[[], None], device: str) -> int:
    """peak_bytes of the call, its gradients cleared first. On a CPU its memory timeline (the
    torch profiler's private analysis) now and then fails an internal check ("duplicate
    outputs") on these graphs; every rank then runs the call again, as its collectives need
    them all."""
    for _ in range(PEAK_ATTEMPTS):
        clear()
        try:
            value: int | None = peak_bytes(call, device)
        except AssertionError:
            value = None
        if _all_ranks(value is not None, device):
            assert value is not None
            return value
    raise RuntimeError(f"the torch profiler's memory timeline failed {PEAK_ATTEMPTS} times")


def _moved(traffic: Traffic, call: Callable[[], None]) -> dict[str, int]:
    traffic.clear()
    call()
    return dict(traffic.bytes)


def _time(call: Callable[[], None], inner: int, device: str) -> float:
    dist.barrier()
    start = time.perf_counter()
    for _ in range(inner):
        call()
    synchronize(device)
    return (time.perf_counter() - start) / inner


# Collectives of tensors only: torch's object collectives (all_gather_object,
# broadcast_object_list) go through numpy, which the core install does not have.


def _all_ranks(holds: bool, device: str) -> bool:
    """Whether `holds` is true on every rank."""
    t = torch.tensor([int(holds)], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def _from_rank0(number: int, device: str) -> int:
    """Rank 0's number, on every rank."""
    t = torch.tensor([number], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


def _stop_from_rank0(reason: str | None, device: str) -> str | None:
    """Rank 0's stop reason (bench.harness.rounds.STOPS, or None to go on), on every rank."""
    code = _from_rank0(-1 if reason is None else STOPS.index(reason), device)
    return None if code < 0 else STOPS[code]


def _lora(case: TPCase, traffic: Traffic, train: bool) -> tuple[float, Steps]:
    """This rank's TPLoRALinear of the case, its error against the oracle, and its steps."""
    w = case.weights()
    layer = TPLoRALinear(w, case.split, traffic=traffic)
    whole_x, whole_dy = case.inputs()
    column = case.split.kind == "column"
    x = (whole_x if column else whole_x[..., layer.inp]).clone().requires_grad_(train)
    dy = whole_dy[..., layer.out] if column else whole_dy
    error = _errors(case, w, (whole_x, whole_dy), layer, x, dy, train)
    return error, _steps(layer, x, dy, train)


def _multi(case: TPCase, traffic: Traffic) -> tuple[float, Steps]:
    """This rank's TPMultiLoRALinear of the case serving its batch (forward only), its error
    against its slice of the whole layer's float64 multi-adapter oracle, and its steps."""
    w, index = case.multi_weights(), case.index()
    layer = TPMultiLoRALinear(w, case.split, traffic=traffic)
    whole_x = case.inputs()[0]
    column = case.split.kind == "column"
    x = whole_x if column else whole_x[..., layer.inp].contiguous()
    want = multi_reference_forward(w, whole_x, index)
    with torch.no_grad():
        error = rel_error(layer(x, index), want[..., layer.out] if column else want)

    def lora() -> None:
        with torch.no_grad():
            layer(x, index)

    def base() -> None:
        with torch.no_grad():
            layer.base_forward(x)

    return error, (lora, base, lambda: None)


def rank_work(index: int, world: int, fields: dict, mode: str, budget: Budget) -> dict:
    """One rank's part of a job (run by run_ranks in a process of its own)."""
    case, train = TPCase(**fields), mode == "train"  # on CUDA, run_ranks set this rank's GPU
    traffic = Traffic()
    made = _multi(case, traffic) if case.adapters else _lora(case, traffic, train)
    error, (lora_run, base_run, clear) = made

    def lora() -> None:
        clear()
        lora_run()

    def base() -> None:
        clear()
        base_run()

    moved = {"lora": _moved(traffic, lora), "base": _moved(traffic, base)}
    traffic.clear()
    device = torch.device(case.device).type
    peaks = {"lora": _peak(lora_run, clear, device), "base": _peak(base_run, clear, device)}
    for call in (lora, base, lora, base):  # warm
        call()
    inner = _from_rank0(choose_inner(max(_time(lora, 1, device), _time(base, 1, device))), device)
    impl_s: list[float] = []
    base_s: list[float] = []
    start, stopped = time.perf_counter(), None
    while stopped is None:
        base_s.append(_time(base, inner, device))
        impl_s.append(_time(lora, inner, device))
        ratios = [i / b for i, b in zip(impl_s, base_s, strict=True)]
        stopped = _stop_from_rank0(stop_reason(ratios, time.perf_counter() - start, budget), device)
    return {"error": error, "moved": moved, "peaks": peaks, "inner": inner, "impl_s": impl_s,
            "base_s": base_s, "stopped": stopped, "threads": torch.get_num_threads()}  # fmt: skip


def time_tp(harness: Harness, benchmark: BenchmarkFixture, job: TPJob) -> None:
    case, train = job.case, job.mode == "train"
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this torch build")
    if case.device == "cuda" and torch.cuda.device_count() < case.world:
        pytest.skip(f"tensor parallelism over {case.world} ranks needs {case.world} GPUs; "
                    f"this machine has {torch.cuda.device_count()}")  # fmt: skip
    benchmark.group = f"tp {case}"
    budget = harness.settings.budget(TP_PROFILES[harness.settings.profile.name].budget)
    threads = max(1, harness.settings.threads // case.world)

    def run() -> list[dict]:
        return run_ranks(case.world, rank_work, asdict(case), job.mode, budget,
                         backend=case.backend, timeout_s=TIMEOUT_S, threads=threads)  # fmt: skip

    ranks = benchmark.pedantic(run, rounds=1, iterations=1)
    tol = tolerance(DTYPES[case.dtype], case.device)
    error = max(r["error"] for r in ranks)
    if not error <= tol:
        pytest.fail(f"{job}: rel error {error:.3g} > {tol:g} against the oracle")
    itemsize = DTYPES[case.dtype].itemsize
    args = (case.split, case.tokens, case.in_features, case.out_features, case.rank, itemsize)
    want = {"lora": expected_traffic(*args, train=train),
            "base": expected_traffic(*args, train=train, adapter=False)}  # fmt: skip
    for r in ranks:
        if r["moved"] != want:
            pytest.fail(f"{job}: the collectives moved {r['moved']}, the formulas say {want}")
    first = ranks[0]
    rounds = Paired(first["inner"], first["impl_s"], first["base_s"], first["stopped"],
                    budget.target)  # fmt: skip
    harness.record(benchmark, TPEntry(
        fullname=harness.nodeid, **case.fields(), parallel=case.split.kind, mode=job.mode,
        backend=case.backend, threads=first["threads"], rel_error=error,
        comm_bytes=sum(want["lora"].values()), base_comm_bytes=sum(want["base"].values()),
        peak_bytes=max(r["peaks"]["lora"] for r in ranks),
        base_peak_bytes=max(r["peaks"]["base"] for r in ranks), rounds=rounds,
    ))  # fmt: skip
