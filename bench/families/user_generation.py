"""Generation on the user's model: greedy decoding with the KV cache, the prompt then new
tokens, of one adapter (PEFT's variants and ours, checked against PEFT's greedy tokens and
logits), compiled whole with --compile, and of a batch whose sequences take several adapters."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from bench.families import generation as gen
from bench.families import models, user_compile
from bench.families import user_model as um
from bench.families import user_variants as uv
from bench.families.generation_runner import phase_rounds
from bench.families.model_runner import cuda_peak
from bench.families.user_phase import Phase, case_name, timed
from bench.families.user_request import FailedError, Prepared
from lora_kernels import adapter_batch, multi_from_peft, random_index, rel_error

CPU_MEMORY = "tensors: parameters, buffers and the KV cache after the last token"
CUDA_MEMORY = "torch.cuda.max_memory_allocated over one generation"


@dataclass
class GenBuilt:
    model: nn.Module
    decoder: Any  # generation's Decoder, or a StaticDecoder (compiled)
    tokens_equal: float
    error: float
    build_s: float
    call_s: float
    peak: int


class Generation(Phase):
    """Greedy generation with the KV cache: the prompt, then new tokens."""

    mode = "infer"
    reference_name = uv.PEFT
    phases = gen.PHASES

    @property
    def dims_tokens(self) -> list[int]:
        return [self.r.batch * self.r.prompt_tokens, self.r.batch]

    def frozen_work(self) -> Callable[[], object]:
        return self.frozen.generate

    def work_of(self, built: Any) -> Callable[[], object]:
        return built.decoder.generate

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        uv.set_trainable(self.peft, False)
        r = self.r
        self.ids = self.random_ids(r.prompt_tokens)
        mixed = f" n={self.adapters}" if self.adapters > 1 else ""
        self.case = case_name(self.p, f"B={r.batch}{mixed} prompt={r.prompt_tokens} "
                              f"new={r.new_tokens}")  # fmt: skip
        self.frozen = gen.Decoder(self.base, self.ids, r.new_tokens, {}, contextlib.nullcontext,
                                  r.device)  # fmt: skip
        tokens = self.frozen.generate()
        with torch.no_grad():
            want = gen.hf_tokens(self.base, SimpleNamespace(new=r.new_tokens), self.ids)  # type: ignore[arg-type]
        if not torch.equal(tokens, want):
            raise um.UserInputError(
                f"{self.p.source.label}: the greedy loop with the KV cache "
                "gives other tokens than transformers' generate; this "
                "architecture's cache is not the one lora-bench drives"
            )
        self.reference = self.decoder(self.peft, self.reference_name)
        self.teacher: dict[str, Tensor] = {}  # PEFT's logits over the latest tokens

    def decoder(self, model: nn.Module, name: str) -> gen.Decoder:
        """Greedy decoding of the prompt with `model` (variant `name`)."""
        return gen.Decoder(model, self.ids, self.r.new_tokens, {}, contextlib.nullcontext,
                           self.r.device)  # fmt: skip

    def teacher_of(self, tokens: Tensor) -> Tensor:
        """PEFT's teacher-forced logits over the prompt and `tokens`, kept for the next
        variant, which in fp32 generates the same tokens."""
        key = str(tokens.tolist())
        if key not in self.teacher:
            self.teacher = {key: gen.teacher_logits(self.reference, tokens)}
        return self.teacher[key]

    def tokens_equal(self, tokens: Tensor, want: Tensor) -> float:
        """The share of `tokens` that are PEFT's greedy choices after the same prefix (the
        argmax of its logits `want`); FailedError in fp32 unless every one is."""
        choices = want[:, self.r.prompt_tokens - 1 : -1].argmax(-1)
        equal = float((choices == tokens).float().mean())
        if self.r.dtype_name == "fp32" and equal < 1.0:
            raise FailedError(f"{equal:.1%} of its greedy tokens are {self.reference_name}'s; "
                              "not timed")  # fmt: skip
        return equal

    def peak(self, model: nn.Module, d: Any) -> int:
        """CUDA: the peak over one generation; CPU: the model's tensors and its KV cache."""
        if torch.device(self.r.device).type == "cuda":
            return cuda_peak(d.generate)
        return gen.stacked_bytes(model) + gen.cache_bytes(d.last_cache)

    def prepare_variant(self, name: str) -> GenBuilt:
        model, build_s = self.build_timed(name)
        d = self.decoder(model, name)
        tokens = d.generate()
        want = self.teacher_of(tokens)
        error = rel_error(gen.teacher_logits(d, tokens), want)
        if not error <= self.tolerance:
            raise FailedError(f"logits rel error {error:.3g} against {self.reference_name} > "
                              f"{self.tolerance:g}; not timed")  # fmt: skip
        equal = self.tokens_equal(tokens, want)
        return GenBuilt(model, d, equal, error, build_s, sum(d.phases[-1]), self.peak(model, d))

    def works(self, built: GenBuilt, frozen: Any = None
              ) -> tuple[Callable[[], object], Callable[[], object]]:  # fmt: skip
        """The variant's whole generation and the frozen model's (`frozen`: its compiled
        decoder, for a compiled variant)."""
        return built.decoder.generate, (frozen or self.frozen).generate

    def per_call(self, built: GenBuilt, frozen: Any = None) -> float:
        return max(built.call_s, sum((frozen or self.frozen).phases[-1]))

    def record(self, name: str, built: GenBuilt, frozen: Any = None, compile_s: float = 0.0
               ) -> None:  # fmt: skip
        """Time the variant's whole generations in pairs with the frozen model's (`frozen`:
        its compiled decoder, for a compiled variant), an entry per phase."""
        frozen = frozen or self.frozen
        works, per_call = self.works(built, frozen), self.per_call(built, frozen)
        paired = timed(works, self.r.device, self.r.seconds, per_call).paired()
        method = CUDA_MEMORY if torch.device(self.r.device).type == "cuda" else CPU_MEMORY
        case = self.compiled_case if compile_s and name != uv.FROZEN else self.case
        for index, phase in enumerate(gen.PHASES):
            steps = 1 if phase == "prefill" else self.r.new_tokens - 1
            rounds = phase_rounds(paired, built.decoder, frozen, index)
            self.out.entries.append(self.entry(
                name, case, phase, rounds, compiled=bool(compile_s), steps=steps,
                tokens=self.r.batch * (self.r.prompt_tokens if phase == "prefill" else steps),
                tokens_equal=built.tokens_equal, rel_error=built.error, build_s=built.build_s,
                compile_s=compile_s, peak_bytes=built.peak, memory_method=method,
            ))  # fmt: skip

    @property
    def compiled_case(self) -> tuple[str, str]:
        case, key = self.case
        return case.replace(f" {self.r.dtype_name} ", f" compiled {self.r.dtype_name} "), \
            f"{key.removesuffix(self.r.dtype_name)}compiled {self.r.dtype_name}"  # fmt: skip

    def run(self) -> None:
        super().run()
        if self.r.compile:
            self.run_compiled()

    def run_compiled(self) -> None:
        """The frozen model and each timed variant compiled whole (user_compile), each
        checked to give PEFT's greedy tokens, then timed in pairs with the compiled frozen
        model; the compile is timed apart."""
        say = self.say
        try:
            say("  compiling the frozen model ...")
            frozen, frozen_s, graphs = user_compile.compiled_decoder(
                self.base, self.ids, self.r.new_tokens, self.r.device)  # fmt: skip
        except ValueError as err:
            self.out.screened.append(f"compiled generation: the frozen model {err}")
            return
        if not torch.equal(frozen.generate(), self.frozen.generate()):
            self.out.screened.append(
                "compiled generation: the compiled frozen model's greedy "
                "tokens differ from its eager ones; nothing compiled timed"
            )
            return
        self.out.notes.append(f"compiled generation frozen: {frozen_s:.1f} s to compile, "
                              f"{graphs}")  # fmt: skip
        say("  timing the compiled frozen model against the eager one ...")
        link = GenBuilt(self.base, frozen, 1.0, 0.0, 0.0, sum(frozen.phases[-1]),
                        self.peak(self.base, frozen))  # fmt: skip
        self.record(uv.FROZEN, link, self.frozen, frozen_s)
        twins = dict(self.timed)
        for name in list(twins):
            why = uv.compile_refusal(name)
            if why:
                self.out.screened.append(f"compiled generation {name}: {why}")
                del twins[name]
        if not any(uv.origin(n) == "ours" for n in twins) and uv.COMPILE_OURS in self.plan_names:
            try:  # the screen's pick does not compile whole: ours compiled is this one
                twins[uv.COMPILE_OURS] = self.prepare_variant(uv.COMPILE_OURS)
            except FailedError as err:
                self.out.screened.append(f"compiled generation {uv.COMPILE_OURS}: {err}")
        for name, eager in twins.items():
            try:
                say(f"  compiling {name} ...")
                d, compile_s, graphs = user_compile.compiled_decoder(
                    eager.model, self.ids, self.r.new_tokens, self.r.device)  # fmt: skip
            except ValueError as err:
                self.out.screened.append(f"compiled generation {name}: {err}")
                continue
            self.out.notes.append(f"compiled generation {name}: {compile_s:.1f} s to compile, "
                                  f"{graphs}")  # fmt: skip
            tokens = d.generate()
            try:
                equal = self.tokens_equal(tokens, self.teacher_of(tokens))
            except FailedError as err:
                self.out.screened.append(f"compiled generation {name}: {err}")
                continue
            built = GenBuilt(eager.model, d, equal, eager.error, eager.build_s,
                             sum(d.phases[-1]), self.peak(eager.model, d))  # fmt: skip
            say(f"  timing compiled generation {name} ...")
            self.record(name, built, frozen, compile_s)


class MixedGeneration(Generation):
    """Greedy generation of a batch whose sequences each take one of `adapters` adapters
    (Zipf-drawn, some on the base model alone): PEFT's mixed batch (adapter_names) and our
    multi-adapter impls (multi_from_peft, adapter_batch)."""

    reference_name = uv.PEFT_MIXED

    def __init__(self, *args: Any) -> None:
        p: Prepared = args[0]
        self.adapters = p.request.adapters
        index = random_index("zipf", p.request.batch, self.adapters,
                             base_share=gen.BASE_SHARE, seed=3)  # fmt: skip
        self.names = [None if i < 0 else f"a{i}" for i in index.tolist()]
        super().__init__(*args)

    @property
    def mode_label(self) -> str:
        return f"{self.adapters} adapters"

    def profile(self) -> None:
        """A mixed batch is not profiled: its routing is in the generation table."""

    def run_compiled(self) -> None:
        self.out.notes.append(f"{self.mode_label}: runs eager; --compile compiles the "
                              "single-adapter generation (a mixed batch routes each sequence "
                              "in Python)")  # fmt: skip

    def variants(self) -> list[str]:
        plan = uv.mixed_plan(self.r.device, self.dtype)
        for name, why in plan.left.items():
            self.out.screened.append(f"{self.mode_label} {name}: {why}")
        best = self.screen(plan.candidates)
        return [*plan.fixed, *([best] if best else [])]

    def decoder(self, model: nn.Module, name: str) -> gen.Decoder:
        kwargs: dict[str, Any] = {}
        context: Callable[[], Any] = contextlib.nullcontext
        if name == uv.PEFT_MIXED:
            kwargs["adapter_names"] = ["__base__" if n is None else n for n in self.names]
        else:
            context = lambda: adapter_batch(model, self.names)  # noqa: E731
        return gen.Decoder(model, self.ids, self.r.new_tokens, kwargs, context, self.r.device)

    def build(self, name: str) -> nn.Module:
        if name == uv.PEFT_MIXED:
            return self.peft
        model = models.shared_copy(self.peft)
        multi_from_peft(model, impl=name)
        return model
