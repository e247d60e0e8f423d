"""The end-to-end bench's steps for one (model case, variant, mode): build on shared weights,
check against PEFT's model, measure memory and the adapted layers' share, then time in pairs
with the frozen model."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture
from torch import nn

from bench.families import models
from bench.families.models import Inputs, ModelCase
from bench.harness.runner import Harness
from bench.harness.timing import Work, run_paired, synchronize
from bench.schema.entries import ModelEntry
from lora_kernels import rel_error

CPU_MEMORY = "tensors: parameters, their gradients, and what autograd saved for backward"
CUDA_MEMORY = "torch.cuda.max_memory_allocated over one call"


@dataclass
class Built:
    """The frozen model, PEFT's model on it, the inputs, and PEFT's reference outputs."""

    case: ModelCase
    base: nn.Module
    peft: nn.Module
    inputs: Inputs
    logits: torch.Tensor
    grads: dict[str, torch.Tensor] = field(default_factory=dict)


_LAST: list[Built] = []  # the latest case's models: variants of one case run one after another


def built(case: ModelCase) -> Built:
    """The case's base and PEFT models, built once while its variants run."""
    if _LAST and _LAST[0].case == case:
        return _LAST[0]
    _LAST.clear()
    base = models.hf_model(case)
    peft = models.peft_model(base, case)
    inputs = Inputs.of(base, case)
    b = Built(case, base, peft, inputs, models.forward(peft, inputs))
    _LAST.append(b)
    return b


def tensor_bytes(model: nn.Module, work: Work) -> int:
    """Bytes of the model's parameters, their gradients after one call of `work`, and what
    autograd saved for backward during it, each storage once. The optimizer's state (AdamW:
    twice the trainable parameters) and transient buffers are not counted."""
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        work()
    params = list(model.parameters())
    grads = [p.grad for p in params if p.grad is not None]
    return models.unique_bytes(params + grads + saved)


def cuda_peak(work: Work) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    work()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def check(variant: str, model: nn.Module, b: Built, mode: str) -> float:
    """Relative error of the variant's logits (and, training, its LoRA gradients) against
    PEFT's; fails the test past the dtype's model tolerance."""
    errors = {"logits": rel_error(models.forward(model, b.inputs), b.logits)}
    if mode == "train":
        if not b.grads:
            b.peft.zero_grad(set_to_none=True)
            models.backward(b.peft, b.inputs)
            b.grads = models.lora_grads(b.peft)
            b.peft.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)  # the variants share A and B, and so their .grad
        models.backward(model, b.inputs)
        mine = models.lora_grads(model)
        model.zero_grad(set_to_none=True)
        if mine.keys() != b.grads.keys():
            pytest.fail(f"{variant}: LoRA parameters differ from PEFT's")
        errors.update({k: rel_error(mine[k], g) for k, g in b.grads.items()})
    worst = max(errors.values())
    tol = models.MODEL_TOLERANCE[b.case.dtype]
    if not worst <= tol:
        name = max(errors, key=lambda k: errors[k])
        pytest.fail(f"{variant} on {b.case}: rel error {worst:.3g} ({name}) > {tol:g}; not timed")
    return worst


def time_model(
    harness: Harness, benchmark: BenchmarkFixture, case: ModelCase, variant: str, mode: str
) -> None:
    """Check the variant against PEFT, measure its memory and the adapted layers' share, then
    time it in pairs with the frozen model and record a ModelEntry."""
    reason = models.missing()
    if reason:
        pytest.skip(reason)
    benchmark.group = f"model {'forward' if mode == 'infer' else 'train'} {case}"
    b = built(case)
    synchronize(case.device)
    start = time.perf_counter()
    model = models.build(variant, b.peft)
    synchronize(case.device)
    build_s = time.perf_counter() - start
    error = check(variant, model, b, mode)
    work: Work
    base_work: Work
    if mode == "infer":
        work, base_work = (
            (lambda: models.forward(model, b.inputs)),
            (lambda: models.forward(b.base, b.inputs)),
        )
    else:
        work, base_work = models.train_work(model, b.inputs), models.train_work(b.base, b.inputs)
    if benchmark.disabled:
        work()
        return
    cuda = torch.device(case.device).type == "cuda"
    work()  # warm: optimizer state, compiled code
    peak = cuda_peak(work) if cuda else tensor_bytes(model, work)
    names = models.target_names(b.base, case)
    shares = [
        models.share_in(model, models.adapted_names(model, names), work, case.device),
        models.share_in(b.base, names, base_work, case.device),
    ]
    spec = models.MODEL_PROFILES[harness.settings.profile.name]
    budget = harness.settings.budget(spec.budget)
    paired = run_paired(benchmark, [(work, base_work)], case.device, budget)
    entry = ModelEntry(
        fullname=harness.nodeid,
        **case.fields(),
        variant=variant,
        mode=mode,
        adapted_layers=len(names),
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        rel_error=error,
        build_s=build_s,
        threads=harness.settings.threads,
        adapted_share=shares[0],
        base_share=shares[1],
        peak_bytes=peak,
        memory_method=CUDA_MEMORY if cuda else CPU_MEMORY,
        rounds=paired,
    )
    harness.record(benchmark, entry)
