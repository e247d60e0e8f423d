"""The quantized-base bench's steps for one job: build, check against the oracle on the
dequantized base (or PEFT's model), time in pairs, count what training keeps, and record a
QuantEntry."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture
from torch import Tensor, nn

from bench.families import models
from bench.families.quant import DENSE, MERGE, MODEL, QUANT_PROFILES, QuantCase, QuantJob
from bench.harness.cases import DTYPES
from bench.harness.memory import peak_bytes, saved_bytes
from bench.harness.rounds import Budget
from bench.harness.runner import Harness
from bench.harness.timing import Work, call_or_step, run_paired
from bench.schema.entries import Paired, QuantEntry
from lora_kernels import IMPLS, from_peft, rel_error, tolerance
from lora_kernels.quant import format_unavailable
from lora_kernels.quant.layer import QLoRALinear
from lora_kernels.quant.merge import MergeError, merge_error, merge_requantize
from lora_kernels.reference import forward_error, gradient_errors


def budget(harness: Harness) -> Budget:
    """The profile's rounds, with --lora-seconds and --lora-target applied."""
    return harness.settings.budget(QUANT_PROFILES[harness.settings.profile.name].budget)


def skip_reason(job: QuantJob) -> str:
    case = job.case
    reason = format_unavailable(case.fmt, case.device)
    if reason or job.impl in (DENSE, MERGE):
        return reason or ""
    if job.impl == MODEL:
        return models.missing() or IMPLS["peft_qlora"].requires() or ""
    impl = IMPLS[job.impl]
    if case.fmt not in impl.formats:
        return f"impl {job.impl!r} takes {sorted(impl.formats)}, not {case.fmt!r}"
    if impl.origin == "peer" and case.fmt == "int8" and case.device == "cuda":
        return "bitsandbytes' int8 layer quantizes activations on CUDA: another function"
    return impl.unavailable_reason(case.device, DTYPES[case.dtype], job.mode)


def layer_job(harness: Harness, benchmark: BenchmarkFixture, job: QuantJob) -> QuantEntry:
    case, train = job.case, job.mode == "train"
    w, q = case.weights()
    x = case.input().requires_grad_(train)
    grad = torch.randn_like(x[:, :1].expand(-1, w.out_features).contiguous()) if train else None
    if train:
        q.requires_grad_()
    qbase = call_or_step(IMPLS["qbase"].build(q, job.mode), x, grad, [x])
    error, held, tensors = 0.0, q.base.nbytes(), [x]
    if job.impl == DENSE:
        work = call_or_step(IMPLS["base"].build(w, job.mode), x, grad, tensors)
        held = w.W.numel() * w.W.element_size()
    else:
        impl = IMPLS[job.impl]
        op = impl.build(q, job.mode)
        oracle = q if impl.lora_equivalent else dataclasses.replace(q, scale=0.0)  # bnb_base
        errors = {"y": forward_error(op, oracle, x.detach())}
        if train:
            grads = gradient_errors(op, oracle, x, grad)  # type: ignore[arg-type]
            errors.update(grads if impl.lora_equivalent else {"x": grads["x"]})
        error = max(errors.values())
        tol = tolerance(DTYPES[case.dtype], case.device)
        if not error <= tol:
            pytest.fail(f"{job}: rel errors {errors} exceed {tol:g}; not timed")
        tensors = [x, q.A, q.B]
        work = call_or_step(op, x, grad, tensors)
    work(), qbase()  # warm
    rounds = run_paired(benchmark, [(work, qbase)], case.device, budget(harness))
    weights = [*q.base.tensors().values(), q.A, q.B, w.W, *([] if w.b is None else [w.b])]
    saved, peak = (saved_bytes(work, weights), peak_bytes(work, case.device, tensors)
                   ) if train else (0, 0)  # fmt: skip
    return entry(harness, job, error, held, saved, peak, rounds)


def merge_job(harness: Harness, benchmark: BenchmarkFixture, job: QuantJob) -> QuantEntry:
    """The merged layer's forward against the unmerged one's, and the merge's errors."""
    case = job.case
    w, q = case.weights()
    x = case.input()
    e = merge_error(q, w.W, x)
    merged = dataclasses.replace(q, base=merge_requantize(q))
    work = call_or_step(IMPLS["qbase"].build(merged), x, None, [])
    unmerged = call_or_step(IMPLS["qlora_lean"].build(q), x, None, [])
    rounds = run_paired(benchmark, [(work, unmerged)], case.device,
                        budget(harness))  # fmt: skip
    return entry(harness, job, 0.0, merged.base.nbytes(), 0, 0, rounds, merge=e)


def qlora_models(case: QuantCase) -> tuple[nn.Module, nn.Module]:
    """PEFT's QLoRA on the case's model (all-linear, A and B random) and ours from it."""
    from peft import LoraConfig, get_peft_model

    from lora_kernels.quant.model import quantize_linears

    model_case = models.ModelCase(case.shape, "all-linear", case.tokens, case.rank, case.dtype,
                                  case.device)  # fmt: skip
    base = models.hf_model(model_case)
    quantize_linears(base, case.fmt)
    config = LoraConfig(r=case.rank, lora_alpha=2 * case.rank, target_modules="all-linear",
                        init_lora_weights=False)  # fmt: skip
    peft = get_peft_model(base, config).train()  # bitsandbytes' fp32 path (see bnb_layer)
    ours = copy.deepcopy(peft)
    from_peft(ours)
    return peft, ours


def model_job(harness: Harness, benchmark: BenchmarkFixture, job: QuantJob) -> QuantEntry:
    """Our QLoRA model's training step paired with PEFT's; their gradients compared."""
    case = job.case
    peft, ours = qlora_models(case)
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, models.MODELS[case.shape].vocab, (1, case.tokens), generator=gen)
    ids = ids.to(case.device)

    def trained(model: nn.Module) -> list[Tensor]:
        return [p for p in model.parameters() if p.requires_grad]

    def step_of(model: nn.Module) -> Work:
        params = trained(model)

        def step() -> None:
            for p in params:
                p.grad = None
            model(input_ids=ids, labels=ids).loss.backward()

        return step

    work, base = step_of(ours), step_of(peft)
    work(), base()

    def grads(model: nn.Module) -> list[Tensor]:
        return [p.grad for p in model.parameters() if p.grad is not None]

    error = max(rel_error(a, b) for a, b in zip(grads(ours), grads(peft), strict=True))
    tol = models.MODEL_TOLERANCE[case.dtype]
    if not error <= tol:
        pytest.fail(f"{job}: gradients differ from PEFT's by {error:.3g} > {tol:g}; not timed")
    rounds = run_paired(benchmark, [(work, base)], case.device, budget(harness))
    held = sum(m.quant.nbytes() for m in ours.modules() if isinstance(m, QLoRALinear))
    weights = [*ours.parameters(), *ours.buffers(), *peft.parameters(), *peft.buffers()]
    weights += [t for m in ours.modules() if isinstance(m, QLoRALinear)
                for t in m.quant.tensors().values()]  # fmt: skip
    peer_saved, peer_peak = saved_bytes(base, weights), peak_bytes(base, case.device, trained(peft))
    saved, peak = saved_bytes(work, weights), peak_bytes(work, case.device, trained(ours))
    return entry(harness, job, error, held, saved, peak, rounds, peer_saved=peer_saved,
                 peer_peak=peer_peak)  # fmt: skip


def entry(harness: Harness, job: QuantJob, error: float, held: int, saved: int, peak: int,
          rounds: Paired, merge: MergeError | None = None, peer_saved: int = 0,
          peer_peak: int = 0) -> QuantEntry:  # fmt: skip
    m = merge or MergeError(0.0, 0.0, 0.0, 0.0)
    return QuantEntry(
        fullname=harness.nodeid, **job.case.fields(), impl=job.impl, mode=job.mode,
        threads=harness.settings.threads, rel_error=error, base_bytes=held, saved_bytes=saved,
        peak_bytes=peak, rounds=rounds, peer_saved_bytes=peer_saved, peer_peak_bytes=peer_peak,
        vs_unmerged=m.vs_unmerged, vs_float=m.vs_float, quantized=m.quantized,
        weight_error=m.weight_error,
    )  # fmt: skip


def time_quant(harness: Harness, benchmark: BenchmarkFixture, job: QuantJob) -> None:
    reason = skip_reason(job)
    if reason:
        pytest.skip(reason)
    benchmark.group = f"quant {job.case}"
    run = {MERGE: merge_job, MODEL: model_job}.get(job.impl, layer_job)
    harness.record(benchmark, run(harness, benchmark, job))
