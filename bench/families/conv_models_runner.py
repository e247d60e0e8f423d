"""The conv-model bench's steps for one job: build the LoRA model, the full fine-tune model
and the float64 oracle, check the LoRA model's logits and every A and B gradient against the
oracle, time its training step in pairs with the full fine-tune step, count the parameters
that train and the bytes a step keeps, and record a ConvModelEntry."""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.families.conv_models import (
    CONV_MODEL_PROFILES,
    CONV_MODEL_TOLERANCE,
    FLOOR_FACTOR,
    PEFT,
    ConvModelJob,
    allowed_errors,
    errors_against,
    models,
    peft_missing,
    train_step,
)
from bench.harness.cases import DTYPES
from bench.harness.memory import saved_bytes
from bench.harness.runner import Harness
from bench.harness.timing import run_paired
from bench.schema.entries import ConvModelEntry
from lora_kernels import get_impl


def time_conv_model(harness: Harness, benchmark: BenchmarkFixture, job: ConvModelJob) -> None:
    case = job.case
    impl = None if job.variant == PEFT else get_impl(job.variant)
    reason = peft_missing() if impl is None else impl.unavailable_reason(
        case.device, DTYPES[case.dtype], "train")  # fmt: skip
    if reason:
        pytest.skip(reason)
    benchmark.group = f"conv model {case}"
    lora, full, oracle = models(case, job.variant)
    x, labels = case.images()
    errors = errors_against(lora, oracle, x, labels)
    allowed, floor = allowed_errors(oracle, case, x, labels)
    worst = max(errors, key=lambda k: errors[k] / allowed.get(k, CONV_MODEL_TOLERANCE[case.dtype]))
    if not errors[worst] <= allowed.get(worst, 0.0):
        pytest.fail(f"{job}: rel error {errors[worst]:.3g} of {worst} against the float64 oracle "
                    f"exceeds {allowed.get(worst, 0.0):.3g} ({FLOOR_FACTOR:g}x the function as "
                    "written, or the tolerance); not timed")  # fmt: skip
    mine, base = train_step(lora, x, labels), train_step(full, x, labels)
    mine(), base()  # warm: the optimizers' state is made
    budget = harness.settings.budget(CONV_MODEL_PROFILES[harness.settings.profile.name].budget)
    rounds = run_paired(benchmark, [(mine, base)], case.device, budget)
    weights = [*lora.parameters(), *lora.buffers()]
    full_weights = [*full.parameters(), *full.buffers()]
    harness.record(benchmark, ConvModelEntry(
        fullname=harness.nodeid, **case.fields(), variant=job.variant,
        origin="peer" if impl is None else impl.origin, threads=harness.settings.threads,
        rel_error=max(errors.values()), floor_error=max(floor.values()),
        trainable_params=sum(p.numel() for p in lora.parameters() if p.requires_grad),
        full_params=sum(p.numel() for p in full.parameters()),
        saved_bytes=saved_bytes(mine, weights), full_saved_bytes=saved_bytes(base, full_weights),
        rounds=rounds,
    ))  # fmt: skip
