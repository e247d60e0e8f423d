"""The UNet bench's steps for one job: build the frozen UNet and PEFT's (once per case), ours
on copies of its tensors, check ours against PEFT's (the noise prediction, and in training
every A and B gradient), time in pairs with the frozen UNet, and record a UNetEntry; or, for
"fuse", time our merge and unmerge against diffusers' fuse_lora and unfuse_lora and measure
what cycles of them leave in the weights (a UNetFuseEntry)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture
from torch import Tensor, nn

from bench.families.models import lora_grads
from bench.families.unet import (
    PEFT,
    UNET_PROFILES,
    UNET_TOLERANCE,
    UNetCase,
    UNetJob,
    base_weights,
    denoise,
    diffusers_missing,
    frozen_unet,
    ours_unet,
    peft_unet,
    train_step,
)
from bench.harness.cases import DTYPES
from bench.harness.memory import peak_bytes
from bench.harness.runner import Harness
from bench.harness.timing import run_paired
from bench.schema.entries import UNetEntry, UNetFuseEntry
from lora_kernels import get_impl, merge, rel_error, unmerge

CYCLES = 10  # fuse/unfuse cycles whose drift is recorded


@dataclass
class Built:
    case: UNetCase
    frozen: nn.Module
    peft: nn.Module
    inputs: tuple[Tensor, Tensor, Tensor, Tensor]
    want: Tensor  # PEFT's noise prediction


_LAST: list[Built] = []  # a case's variants run one after another: build its UNets once


def built(case: UNetCase) -> Built:
    if _LAST and _LAST[0].case == case:
        return _LAST[0]
    _LAST.clear()
    frozen = frozen_unet(case)
    peft = peft_unet(frozen, case)
    inputs = case.inputs()
    b = Built(case, frozen, peft, inputs, denoise(peft, inputs)())
    frozen_out = denoise(frozen, inputs)()
    if not rel_error(b.want, frozen_out) > UNET_TOLERANCE[case.dtype]:
        pytest.fail(f"{case}: PEFT's adapters do not change the UNet's output; nothing to time")
    _LAST.append(b)
    return b


def skip_reason(job: UNetJob) -> str:
    missing = diffusers_missing()
    if missing or job.variant == PEFT:
        return missing
    dtype = DTYPES[job.case.dtype]
    mode = "train" if job.mode == "train" else "infer"
    reasons = [get_impl(n).unavailable_reason(job.case.device, dtype, mode)
               for n in job.impls if n is not None]  # fmt: skip
    return next((r for r in reasons if r), "")


def time_unet(harness: Harness, benchmark: BenchmarkFixture, job: UNetJob) -> None:
    reason = skip_reason(job)
    if reason:
        pytest.skip(reason)
    case = job.case
    benchmark.group = f"unet {job.mode} {case}"
    b = built(case)
    if job.mode == "fuse":
        return time_fuse(harness, benchmark, job, b)
    unet = b.peft if job.variant == PEFT else ours_unet(b.peft, job)
    error = 0.0 if job.variant == PEFT else check(job, b, unet)
    work = denoise if job.mode == "infer" else train_step
    mine, base = work(unet, b.inputs), work(b.frozen, b.inputs)
    mine(), base()  # warm: the optimizer's state is made
    budget = harness.settings.budget(UNET_PROFILES[harness.settings.profile.name].budget)
    rounds = run_paired(benchmark, [(mine, base)], case.device, budget)
    harness.record(benchmark, UNetEntry(
        fullname=harness.nodeid, **case.fields(), variant=job.variant, mode=job.mode,
        origin="peer" if job.variant == PEFT else "ours", threads=harness.settings.threads,
        rel_error=error,
        lora_layers=len({n.partition(".lora_A")[0] for n, _ in unet.named_parameters()
                         if ".lora_A" in n}),
        lora_params=sum(p.numel() for p in unet.parameters() if p.requires_grad),
        rounds=rounds,
    ))  # fmt: skip
    return None


def check(job: UNetJob, b: Built, unet: nn.Module) -> float:
    """Our UNet's noise prediction (and in training every A and B gradient) against PEFT's,
    worst relative error; pytest.fail, untimed, past the tolerance."""
    errors = {"prediction": rel_error(denoise(unet, b.inputs)(), b.want)}
    if job.mode == "train":
        grads = {}
        for name, model in (("peft", b.peft), ("ours", unet)):
            train_step(model, b.inputs)()  # lr=0: A and B stay as they were
            grads[name] = lora_grads(model)
        want, got = grads["peft"], grads["ours"]
        if set(want) != set(got):
            pytest.fail(f"{job}: the tensors that train differ from PEFT's; not timed")
        errors |= {k: rel_error(got[k], g) for k, g in want.items()}
    worst = max(errors, key=lambda k: errors[k])
    tol = UNET_TOLERANCE[job.case.dtype]
    if not errors[worst] <= tol:
        pytest.fail(f"{job}: rel error {errors[worst]:.3g} ({worst}) against PEFT's UNet "
                    f"exceeds {tol:g}; not timed")  # fmt: skip
    return errors[worst]


def drift(unet: nn.Module, before: dict[str, Tensor]) -> float:
    """The worst relative change of any base weight since `before`."""
    after = base_weights(unet)
    return max(rel_error(after[k], w) for k, w in before.items())


def time_fuse(harness: Harness, benchmark: BenchmarkFixture, job: UNetJob, b: Built) -> None:
    """Our merge and unmerge of every LoRA layer against diffusers' fuse_lora and
    unfuse_lora on PEFT's UNet: each fused prediction checked against the unfused one, the
    drift of the base weights after CYCLES cycles, then one cycle of each in paired rounds."""
    case = job.case
    ours = ours_unet(b.peft, job)
    theirs: Any = copy.deepcopy(b.peft)  # diffusers' methods: untyped
    tol = UNET_TOLERANCE[case.dtype]
    for name, model, fuse in (("ours", ours, lambda: merge(ours)),
                              ("diffusers", theirs, lambda: theirs.fuse_lora())):  # fmt: skip
        fuse()
        error = rel_error(denoise(model, b.inputs)(), b.want)
        if not error <= tol:
            pytest.fail(f"{job}: {name} fused predicts {error:.3g} off the unfused UNet")
    unmerge(ours)
    theirs.unfuse_lora()
    before = base_weights(b.frozen)

    def our_cycle() -> None:
        merge(ours)
        unmerge(ours)

    def their_cycle() -> None:
        theirs.fuse_lora()
        theirs.unfuse_lora()

    for _ in range(CYCLES - 1):
        our_cycle()
        their_cycle()
    ours_drift, their_drift = drift(ours, before), drift(theirs, before)
    peak, their_peak = peak_bytes(our_cycle, case.device), peak_bytes(their_cycle, case.device)
    budget = harness.settings.budget(UNET_PROFILES[harness.settings.profile.name].budget)
    rounds = run_paired(benchmark, [(our_cycle, their_cycle)], case.device, budget)
    harness.record(benchmark, UNetFuseEntry(
        fullname=harness.nodeid, **case.fields(), variant=job.variant,
        threads=harness.settings.threads, cycles=CYCLES, drift=ours_drift,
        diffusers_drift=their_drift, peak_bytes=peak, diffusers_peak_bytes=their_peak,
        rounds=rounds,
    ))  # fmt: skip
