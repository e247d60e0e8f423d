"""The Conv2d LoRA (and DoRA) bench's steps for one job: build, check against the float64
oracle (the output, and in training the gradients of x, A and B, and DoRA's m), time in
pairs with the frozen convolution, count what a step keeps, and record a ConvEntry."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture
from torch import Tensor

from bench.families.conv import CONV_PROFILES, MEMORY_FORMATS, ConvJob
from bench.harness.cases import DTYPES
from bench.harness.memory import peak_bytes, saved_bytes
from bench.harness.runner import Harness, build_timed, charge_copy
from bench.harness.timing import Work, call_or_step, run_paired
from bench.schema.entries import ConvEntry
from lora_kernels import get_impl, tolerance
from lora_kernels.reference import forward_error, gradient_errors

if TYPE_CHECKING:
    from lora_kernels.conv import ConvDoRAWeights, ConvLoRAWeights


def frozen(
    w: ConvLoRAWeights | ConvDoRAWeights, x: Tensor, grads: Tensor | None
) -> tuple[Work, Tensor]:
    """The frozen convolution's call or step (the gradient of x alone) and the kernel it runs,
    in the default layout (NCHW) whatever the case's: an nhwc case's ratio is channels-last
    LoRA against the model as it runs now. Copies of x, W and the upstream gradient where the
    case's are channels-last."""
    fx, W = x.detach().contiguous().requires_grad_(x.requires_grad), w.W.contiguous()
    fg = None if grads is None else grads.contiguous()
    work = call_or_step(lambda t: w.convolve(t, W, w.b), fx, fg, [fx] if fg is not None else [])
    return work, W


def time_conv(harness: Harness, benchmark: BenchmarkFixture, job: ConvJob) -> None:
    case, train = job.case, job.mode == "train"
    impl = get_impl(job.impl)
    reason = impl.unavailable_reason(case.device, DTYPES[case.dtype], job.mode)
    if reason:
        pytest.skip(reason)
    benchmark.group = f"conv {case}"
    w = case.weights(impl.variant).requires_grad_(train)
    x = case.input(train)
    grads = None
    if train:
        out_shape = w.output_shape(x)
        grads = case.laid_out(torch.randn(out_shape, generator=torch.Generator().manual_seed(1))
                              .to(x))  # fmt: skip
    op, build_s = build_timed(impl, w, lambda op: op(x), case.device)
    errors = {"y": forward_error(op, w, x)}
    if grads is not None:
        errors.update(gradient_errors(op, w, x, grads))
    tol = tolerance(DTYPES[case.dtype], case.device)
    if not max(errors.values()) <= tol:
        pytest.fail(f"{job}: rel error {errors} exceeds {tol:g} against the oracle; not timed")
    op, copied = charge_copy(op, x, MEMORY_FORMATS[case.layout])  # what the next layer pays
    tensors = [x, *w.trainable().values()] if train else []
    mine = call_or_step(op, x, grads, tensors)
    base, kernel = frozen(w, x, grads)
    mine(), base()  # warm
    budget = harness.settings.budget(CONV_PROFILES[harness.settings.profile.name].budget)
    rounds = run_paired(benchmark, [(mine, base)], case.device, budget)
    weights = [t for t in w._named().values() if t is not None]
    saved, peak = (saved_bytes(mine, weights), peak_bytes(mine, case.device, tensors)
                   ) if train else (0, 0)  # fmt: skip
    harness.record(benchmark, ConvEntry(
        fullname=harness.nodeid, **case.fields(), impl=job.impl, mode=job.mode,
        origin=impl.origin, threads=harness.settings.threads, rel_error=max(errors.values()),
        build_s=build_s, copied_output=copied, flops=case.flops(),
        base_flops=case.flops(adapter=False), saved_bytes=saved,
        frozen_saved_bytes=saved_bytes(base, [*weights, kernel]) if train else 0,
        peak_bytes=peak,
        rounds=rounds,
    ))  # fmt: skip
