"""The lifecycle bench's steps for one (case, variant, op): build the variant's model holding
`loaded` adapters from PEFT's files, time the op over rounds that each start from the same
state, then check the model's function against PEFT's for the adapter the op left active."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture
from torch import Tensor, nn

from bench.families import lifecycle as life
from bench.families import models
from bench.families.lifecycle import Files, LifeCase, Side
from bench.harness.runner import Harness
from bench.harness.timing import synchronize
from bench.schema.entries import LifecycleEntry
from lora_kernels import rel_error


@dataclass
class Built:
    """One case's frozen model, files, prompt, PEFT's logits per adapter file, and sides."""

    case: LifeCase
    base: nn.Module
    files: Files
    ids: Tensor
    want: dict[str, Tensor]  # "default", "one", "two": PEFT's logits with that adapter active
    sides: dict[str, Side] = field(default_factory=dict)

    def side(self, variant: str) -> Side:
        if variant not in self.sides:
            self.sides[variant] = life.side(variant, self.base, self.case, self.files)
        return self.sides[variant]


_LAST: list[Built] = []


def built(case: LifeCase) -> Built:
    if _LAST and _LAST[0].case == case:
        return _LAST[0]
    for old in _LAST:
        shutil.rmtree(old.files.root, ignore_errors=True)
    _LAST.clear()
    base = models.hf_model(case.model_case)
    files = life.save_files(base, case)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, models.MODELS[case.model].vocab, (1, 16), generator=gen)
    ids = ids.to(case.device)
    peft = life.peft_model(base, case)
    want = {"default": life.logits(peft, ids)}
    for name, folder in (("one", files.one), ("two", files.two)):
        peft.load_adapter(str(folder), adapter_name=name, autocast_adapter_dtype=False)
        peft.set_adapter(name)
        want[name] = life.logits(peft, ids)
    b = Built(case, base, files, ids, want)
    _LAST.append(b)
    return b


def after(b: Built, s: Side, op: str) -> float:
    """The op's outcome against PEFT's function: the adapter it loaded or switched to, the
    default one merged or unmerged; the side is left with "default" active."""
    if op == "load":
        s.switch("new")
        error = rel_error(life.logits(s.model, b.ids), b.want["one"])
    elif op == "switch":
        s.switch(s.names[-1])
        error = rel_error(
            life.logits(s.model, b.ids), b.want["one" if len(s.names) > 1 else "default"]
        )
    elif op == "delete":
        if "new" in s.loaded():
            pytest.fail(f"{s.variant}: 'new' is still loaded after delete")
        error = rel_error(life.logits(s.model, b.ids), b.want["default"])
    else:  # merge, unmerge: the default adapter, merged or not
        return rel_error(life.logits(s.model, b.ids), b.want["default"])
    s.switch("default")
    return error


def timed_rounds(op: Callable[[], None], device: str, times: list[float]) -> Callable[[], None]:
    def run() -> None:
        synchronize(device)
        start = time.perf_counter()
        op()
        synchronize(device)
        times.append(time.perf_counter() - start)

    return run


def time_lifecycle(
    harness: Harness, benchmark: BenchmarkFixture, case: LifeCase, variant: str, op: str
) -> None:
    """Time one adapter operation of one variant over the profile's rounds, check what it
    left, and record a LifecycleEntry."""
    reason = models.missing()
    if reason:
        pytest.skip(reason)
    benchmark.group = f"lifecycle {op} {case}"
    b = built(case)
    spec = life.LIFE_PROFILES[harness.settings.profile.name]
    extra: dict[str, object] = {}
    times: list[float] = []
    if op == "hotswap":
        extra, error = hotswap(b, variant, spec.backend, spec.rounds, times, benchmark)
    else:
        s = b.side(variant)
        t = life.timed_op(s, op, b.files)
        t.setup()
        benchmark.pedantic(timed_rounds(t.op, case.device, times), setup=t.setup,
                           rounds=spec.rounds)  # fmt: skip
        error = after(b, s, op)
        if op == "merge":
            s.unmerge()
    tol = models.MODEL_TOLERANCE[case.dtype]
    if not error <= tol:
        pytest.fail(f"{op} {variant} on {case}: rel error {error:.3g} > {tol:g} after the op")
    entry = LifecycleEntry(
        fullname=harness.nodeid, **case.fields(), variant=variant, op=op, seconds=times,
        rel_error=error, threads=harness.settings.threads, **extra,  # type: ignore[arg-type]
    )  # fmt: skip
    harness.record(benchmark, entry)


def hotswap(
    b: Built, variant: str, backend: str, rounds: int, times: list[float],
    benchmark: BenchmarkFixture,
) -> tuple[dict[str, object], float]:  # fmt: skip
    """Compile a fresh model of the variant, call it, then swap files two and one in turn into its
    adapter (rounds swaps, timed), call it again: the compile, the calls, the recompiles the
    swaps caused, and the error of the last call against PEFT's function of the last file."""
    from torch._dynamo.backends.registry import lookup_backend

    case = b.case
    s = life.side(variant, b.base, case, b.files)
    if variant == "peft":
        from peft.utils.hotswap import prepare_model_for_compiled_hotswap

        prepare_model_for_compiled_hotswap(s.model, target_rank=case.rank)
    inner, graphs = lookup_backend(backend), [0]

    def counting(gm: torch.fx.GraphModule, example: list[Tensor]) -> Callable:
        graphs[0] += 1
        return inner(gm, example)

    torch._dynamo.reset()
    compiled: Any = torch.compile(s.model, backend=counting)
    start = time.perf_counter()
    life.logits(compiled, b.ids)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    life.logits(compiled, b.ids)
    call_s = time.perf_counter() - start
    before, order = graphs[0], iter([b.files.two, b.files.one] * rounds)
    benchmark.pedantic(timed_rounds(lambda: s.hotswap(next(order)), case.device, times),
                       rounds=rounds)  # fmt: skip
    start = time.perf_counter()
    out = life.logits(compiled, b.ids)
    first_call_s = time.perf_counter() - start
    last = "two" if rounds % 2 else "one"
    torch._dynamo.reset()
    extra = {"backend": backend, "compile_s": compile_s, "call_s": call_s,
             "first_call_s": first_call_s, "recompiles": graphs[0] - before}  # fmt: skip
    return extra, rel_error(out, b.want[last])
