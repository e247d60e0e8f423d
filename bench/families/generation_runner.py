"""The generation bench's steps for one (case, variant, phase): build the variant on the shared
weights, check its greedy tokens and logits against its PEFT reference (whose own tokens are
transformers' generate), then time the phase in pairs with the frozen model."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture
from torch import Tensor, nn

from bench.families import generation as gen
from bench.families import models
from bench.families.generation import Decoder, GenCase
from bench.harness.runner import Harness
from bench.harness.timing import run_paired, synchronize
from bench.schema.entries import GenerationEntry, Paired
from lora_kernels import IMPLS, MULTI_IMPLS, rel_error

CPU_MEMORY = "tensors: parameters, buffers and the KV cache after the last new token"
CUDA_MEMORY = "torch.cuda.max_memory_allocated over one generation"


@dataclass
class Checked:
    """A variant that passed its check: its decoder (warm) and what the check measured."""

    decoder: Decoder
    tokens_equal: float
    rel_error: float
    build_s: float
    peak_bytes: int
    call_s: float  # one whole generation, as the check ran it


@dataclass
class Built:
    """One case's frozen model, prompt, PEFT references by kind, and their decoders."""

    case: GenCase
    base: nn.Module
    ids: Tensor
    base_decoder: Decoder
    references: dict[str, Decoder] = field(default_factory=dict)
    teacher: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)  # kind: tokens, logits


_LAST: list[Built] = []  # the latest case's models: its variants run one after another


def built(case: GenCase) -> Built:
    """The case's frozen model and its decoder, checked against transformers' generate: the
    loop we time is greedy generation with the KV cache, or the case fails."""
    if _LAST and _LAST[0].case == case:
        return _LAST[0]
    _LAST.clear()
    base = models.hf_model(case.model_case)
    ids = gen.prompt_ids(case)
    d = gen.decoder(base, "frozen", case, ids)
    with torch.no_grad():
        want = gen.hf_tokens(base, case, ids)
    if not torch.equal(d.generate(), want):
        pytest.fail(f"the greedy loop gives other tokens than transformers' generate on {case}")
    b = Built(case, base, ids, d)
    _LAST.append(b)
    return b


def reference(b: Built, kind: str) -> Decoder:
    """The decoder of the PEFT model of `kind`, built once per case."""
    if kind not in b.references:
        case = b.case
        model = gen.peft_mixed(b.base, case) if kind == "multi" else \
            gen.peft_lora(b.base, case, dora=kind == "dora")  # fmt: skip
        b.references[kind] = gen.decoder(model, gen.PEERS[kind], case, b.ids)
    return b.references[kind]


def teacher(b: Built, kind: str, tokens: Tensor) -> Tensor:
    """PEFT's teacher-forced logits over the prompt and `tokens`, kept for the next variant
    of the same kind, which in fp32 generates the same tokens."""
    held = b.teacher.get(kind)
    if held is None or not torch.equal(held[0], tokens):
        b.teacher[kind] = (tokens, gen.teacher_logits(reference(b, kind), tokens))
    return b.teacher[kind][1]


def memory(model: nn.Module, d: Decoder, device: str) -> int:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        d.generate()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return gen.stacked_bytes(model) + gen.cache_bytes(d.last_cache)


def check(b: Built, variant: str) -> Checked:
    """Build the variant, generate, and check it against its PEFT reference: one forward of
    PEFT's model over the prompt and the variant's tokens gives PEFT's logits, whose argmax at
    each position is PEFT's greedy choice. Every token must equal it (fp32; a share in half
    precision, where merged and unmerged round apart) and the variant's own logits over the
    same tokens must be within the model tolerance; pytest.fail, untimed, otherwise."""
    case = b.case
    ref = reference(b, gen.kind_of(variant))
    synchronize(case.device)
    start = time.perf_counter()
    model = gen.build(variant, ref.model, case)
    synchronize(case.device)
    build_s = time.perf_counter() - start
    d = gen.decoder(model, variant, case, b.ids)
    tokens = d.generate()  # also the warm-up: the timed rounds start without one of their own
    want = teacher(b, gen.kind_of(variant), tokens)
    choices = want[:, case.prompt - 1 : -1].argmax(-1)  # PEFT's next token after each prefix
    equal = float((choices == tokens).float().mean())
    error = rel_error(gen.teacher_logits(d, tokens), want)
    tol = models.MODEL_TOLERANCE[case.dtype]
    peer = gen.PEERS[gen.kind_of(variant)]
    if not error <= tol:
        pytest.fail(f"{variant} on {case}: logits rel error {error:.3g} against {peer} > "
                    f"{tol:g}; not timed")  # fmt: skip
    if case.dtype == "fp32" and equal < 1.0:
        pytest.fail(f"{variant} on {case}: {equal:.1%} of its tokens are {peer}'s greedy "
                    "choices; not timed")  # fmt: skip
    call_s = sum(d.phases[-1])
    return Checked(d, equal, error, build_s, memory(model, d, case.device), call_s)


def phase_rounds(paired: Paired, impl: Decoder, base: Decoder, phase: int) -> Paired:
    """The paired rounds of one phase, from the phase clocks of the timed generations (the
    last ones each decoder ran; a round of `inner` calls takes their mean)."""
    n, k = len(paired.impl_s), paired.inner

    def per_round(d: Decoder) -> list[float]:
        calls = [p[phase] for p in d.phases[-n * k :]]
        return [sum(calls[i * k : (i + 1) * k]) / k for i in range(n)]

    return Paired(k, per_round(impl), per_round(base), paired.stopped, paired.target)


def time_generation(
    harness: Harness, benchmark: BenchmarkFixture, case: GenCase, variant: str
) -> None:
    """Check the variant against its PEFT reference, then time whole generations in pairs
    with the frozen model's, each phase on its own clock, and record a GenerationEntry per
    phase: time to first token and time per output token, each a paired ratio."""
    reason = models.missing()
    if reason:
        pytest.skip(reason)
    benchmark.group = f"generation {case}"
    b = built(case)
    c = check(b, variant)
    d, base = c.decoder, b.base_decoder
    if benchmark.disabled:
        d.generate()
        return
    budget = harness.settings.budget(gen.GEN_PROFILES[harness.settings.profile.name].budget)
    base_s = sum(base.phases[-1])
    paired = run_paired(benchmark, [(d.generate, base.generate)], case.device, budget,
                        per_call_s=max(c.call_s, base_s))  # fmt: skip
    for index, phase in enumerate(gen.PHASES):
        steps = 1 if phase == "prefill" else case.new - 1
        entry = GenerationEntry(
            fullname=harness.nodeid,
            **case.fields(),
            variant=variant,
            origin=(MULTI_IMPLS if variant in MULTI_IMPLS else IMPLS)[variant].origin,
            merged=variant in gen.MERGED,
            reference=gen.PEERS[gen.kind_of(variant)],
            phase=phase,
            steps=steps,
            tokens=case.batch * (case.prompt if phase == "prefill" else steps),
            tokens_equal=c.tokens_equal,
            rel_error=c.rel_error,
            build_s=c.build_s,
            threads=harness.settings.threads,
            peak_bytes=c.peak_bytes,
            memory_method=CUDA_MEMORY if torch.device(case.device).type == "cuda" else CPU_MEMORY,
            rounds=phase_rounds(paired, d, base, index),
        )  # fmt: skip
        harness.record(benchmark, entry)
