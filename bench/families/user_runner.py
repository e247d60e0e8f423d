"""`lora-bench model`'s measurement: the user's model and adapter resolved and checked, the
variants built on one set of weights and each checked against PEFT's model, then each timed in
pairs with the frozen model (generation: time to first token and per output token; training:
a step), the adapter's load and merge timed, all as a Run of typed entries.

`measure(Request(...))` is the Python door to the same work as the command."""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from bench.families import generation as gen
from bench.families import models, user_compile, user_profile
from bench.families import user_model as um
from bench.families import user_variants as uv
from bench.families.generation_runner import phase_rounds
from bench.families.model_runner import cuda_peak, tensor_bytes
from bench.harness.cases import DTYPES
from bench.harness.rounds import Budget
from bench.harness.timing import PairedTimer, synchronize
from bench.schema.entries import Paired, ProfileEntry, UserModelEntry, UserModelInfo
from bench.schema.run import Run, RunMeta
from lora_kernels import (
    FuseError,
    adapter_batch,
    delete_adapter,
    from_peft,
    load_adapter,
    merge,
    multi_from_peft,
    random_index,
    rel_error,
)

MODES = ("generate", "train", "all")
SCREEN_SHARE = 0.25  # of --seconds, each candidate's screen
LIFECYCLE_REPEATS = 3
CPU_MEMORY = {"generate": "tensors: parameters, buffers and the KV cache after the last token",
              "train": "tensors: parameters, their gradients, and what autograd saved"}  # fmt: skip
CUDA_MEMORY = "torch.cuda.max_memory_allocated over one call"


@dataclass(frozen=True)
class Request:
    """What `lora-bench model` measures: MODEL, the adapter (a folder, or described), the
    modes and their sizes, dtype, device, blocks kept, and each variant's timing budget."""

    model: str
    adapter: str | None = None
    rank: int | None = None  # a described adapter's (default 16)
    alpha: float | None = None  # default 2 x rank
    targets: str | None = None  # default all-linear
    dora: bool = False
    rslora: bool = False
    mode: str = "all"
    batch: int = 1
    prompt_tokens: int = 128
    new_tokens: int = 32
    tokens: int = 128  # a training step's sequence length
    dtype: str | None = None  # default: fp32 on the CPU, bf16 on CUDA
    device: str = "cpu"
    blocks: int | None = None
    adapters: int = 1  # > 1: also a batch whose sequences take one of this many adapters
    compile: bool = False  # also generation compiled whole (static cache, torch.compile)
    base_dtype: str | None = None  # "nf4" or "int8": the frozen linear weights quantized
    seconds: float = 3.0
    threads: int = 1

    @property
    def modes(self) -> list[str]:
        return ["generate", "train"] if self.mode == "all" else [self.mode]

    @property
    def dtype_name(self) -> str:
        return self.dtype or models.MODEL_DTYPES[torch.device(self.device).type]


@dataclass
class Prepared:
    """A request that passed every check: nothing built yet."""

    request: Request
    source: um.Source
    adapter: um.AdapterSpec
    fit: um.Fit
    notes: list[str]


def _check_request(r: Request) -> None:
    if r.mode not in MODES:
        raise um.UserInputError(f"--mode {r.mode!r}: allowed {', '.join(MODES)}")
    if r.dtype is not None and r.dtype not in DTYPES:
        raise um.UserInputError(f"--dtype {r.dtype!r}: allowed {', '.join(DTYPES)}")
    if torch.device(r.device).type == "cuda" and not torch.cuda.is_available():
        raise um.UserInputError("--device cuda: CUDA is not available on this machine")
    if r.mode != "train" and r.new_tokens < 2:
        raise um.UserInputError(
            f"--new-tokens {r.new_tokens}: at least 2 (the first comes "
            "from the prompt; time per output token needs another)"
        )
    if r.adapters > 1 and (r.mode == "train" or r.batch < 2):
        raise um.UserInputError(f"--adapters {r.adapters}: a mixed batch is served in "
                                "generation: give --mode generate or all, and --batch 2 or more "
                                "(each sequence takes one adapter)")  # fmt: skip
    if r.adapters > 1 and r.dora:
        raise um.UserInputError("--adapters with --dora: a mixed batch serves LoRA adapters")
    if r.base_dtype is not None and (r.dora or r.adapters > 1):
        raise um.UserInputError(f"--base-dtype {r.base_dtype} with "
                                f"{'--dora' if r.dora else '--adapters'}: a quantized base takes "
                                "one plain LoRA adapter here (QLoRA)")  # fmt: skip
    if r.targets is not None and not [t for t in r.targets.split(",") if t.strip()]:
        raise um.UserInputError(f"--targets {r.targets!r}: name modules, comma-separated, or "
                                "all-linear")  # fmt: skip
    described = (r.rank, r.alpha, r.targets, r.dora or None, r.rslora or None)
    if r.adapter is not None and any(v is not None for v in described):
        raise um.UserInputError("--adapter DIR gives the adapter; --rank, --alpha, --targets, "
                                "--dora and --rslora describe one instead: give one or the "
                                "other")  # fmt: skip


def prepare(r: Request) -> Prepared:
    """Every check of the request, before anything is built: the model, the blocks, the
    adapter against the model, and the memory plan against the device."""
    _check_request(r)
    reason = models.missing()
    if reason:
        raise um.UserInputError(reason)
    source = um.resolve(r.model, r.blocks)
    targets = r.targets or "all-linear"
    spec = um.adapter_spec(r.adapter, rank=r.rank or 16, alpha=r.alpha, targets=targets,
                           dora=r.dora, rslora=r.rslora)  # fmt: skip
    meta = um.meta_model(source)
    notes = um.check_adapter(spec, source, meta)
    if r.base_dtype is not None:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise um.UserInputError(f"--base-dtype {r.base_dtype}: bitsandbytes is not "
                                    "installed: pip install 'lora-bench[quant]'")  # fmt: skip
        if spec.use_dora:
            raise um.UserInputError(
                f"--base-dtype {r.base_dtype}: the adapter is DoRA; a "
                "quantized base takes a plain LoRA adapter here (QLoRA)"
            )
        um.check_quantizable(meta, r.base_dtype, r.device, source.label)
    size = DTYPES[r.dtype_name].itemsize
    tokens = max(r.tokens if "train" in r.modes else 0,
                 r.prompt_tokens + r.new_tokens if "generate" in r.modes else 0)  # fmt: skip
    kv = r.prompt_tokens + r.new_tokens if "generate" in r.modes else 0
    copies = 3 if r.compile and "generate" in r.modes else 2
    plan = um.fit(source, meta, size, tokens, r.batch, kv, r.device, r.base_dtype, copies)
    if not plan.fits:
        keep = plan.blocks_that_fit()
        hint = (f"--blocks {keep} would fit" if keep else "not even one block fits: lower "
                "--batch or the token counts")  # fmt: skip
        raise um.UserInputError(
            f"{source.label} with {source.blocks} blocks needs about "
            f"{plan.estimate / 2**30:.1f} GiB by the planner's estimate, and {r.device} has "
            f"{plan.free / 2**30:.1f} GiB free; {hint}"
        )
    return Prepared(r, source, spec, plan, notes)


@dataclass
class Measured:
    """What a run gathers, entry by entry."""

    entries: list[UserModelEntry] = field(default_factory=list)
    profiles: list[ProfileEntry] = field(default_factory=list)  # where the time goes
    screened: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    load_s: dict[str, list[float]] = field(default_factory=dict)
    merge_s: dict[str, list[float]] = field(default_factory=dict)


class FailedError(Exception):
    """A variant that did not compute PEFT's function: not timed."""


Say = Callable[[str], None]


def measure(request: Request, say: Say = lambda line: None) -> Run:
    """Measure the request (see the module's docstring); `say` hears progress lines."""
    p = prepare(request)
    from bench.harness.allocator import fix_malloc
    from bench.harness.session import configure_torch

    configure_torch(request.threads)
    allocator = fix_malloc()
    return run_prepared(p, allocator, say)


def run_prepared(p: Prepared, allocator: str, say: Say) -> Run:
    r, dtype = p.request, DTYPES[p.request.dtype_name]
    say(f"model: {p.source.describe()}")
    say(f"adapter: {p.adapter.describe()}")
    base = um.build(p.source, dtype, r.device, r.base_dtype)
    peft = um.peft_model(base, p.adapter)
    out = Measured(notes=list(p.notes))
    trainable = sum(t.numel() for n, t in peft.named_parameters() if "lora_" in n)
    if "generate" in r.modes:
        Generation(p, base, peft, out, say, trainable).run()
        if r.adapters > 1:
            if p.adapter.use_dora:
                out.screened.append("many adapters: the adapter is DoRA; a mixed batch serves "
                                    "LoRA adapters")  # fmt: skip
            else:
                MixedGeneration(p, base, um.peft_mixed(base, p.adapter, r.adapters), out, say,
                                trainable).run()  # fmt: skip
    if "train" in r.modes:
        Training(p, base, peft, out, say, trainable).run()
    if p.adapter.folder is not None:
        lifecycle(p, peft, out, say)
    adapted = sum(1 for n, _ in peft.named_modules() if n.endswith(".lora_A"))
    info = UserModelInfo(
        model=p.source.label, model_source=p.source.describe(), adapter=p.adapter.label,
        adapter_source=p.adapter.describe(), blocks=p.source.blocks,
        total_blocks=p.source.total_blocks, random_weights=p.source.weights is None,
        adapted_layers=adapted, seconds=r.seconds, estimate_bytes=p.fit.estimate,
        free_bytes=p.fit.free, screened=out.screened, notes=out.notes, load_s=out.load_s,
        merge_s=out.merge_s,
    )  # fmt: skip
    return Run(run_meta(r, allocator), {}, {}, [*out.entries, *out.profiles, info])


def run_meta(r: Request, allocator: str) -> RunMeta:
    from bench.harness.cache import cache_bytes
    from bench.harness.cases import SHAPES
    from bench.harness.session import device_name, impl_infos

    return RunMeta(
        device=torch.device(r.device).type, device_name=device_name(r.device), profile="model",
        threads=r.threads, interop_threads=torch.get_num_interop_threads(),
        tf32=bool(torch.backends.cuda.matmul.allow_tf32), torch=torch.__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        dtypes=[r.dtype_name], only=[], impl_specs=[], cache="warm",
        cache_bytes=cache_bytes(r.device), impls=impl_infos(), shapes=list(SHAPES),
        peaks_start={}, peaks_end={}, allocator=allocator,
    )  # fmt: skip


def case_name(p: Prepared, sizes: str) -> tuple[str, str]:
    """(case, key) of one mode: the model, blocks kept, its base's format when quantized, the
    adapter, sizes, dtype (and device)."""
    r = p.request
    base = f" base={r.base_dtype}" if r.base_dtype else ""
    key = (f"{p.source.label} blocks={p.source.blocks}{base} {p.adapter.label} {sizes} "
           f"{r.dtype_name}")  # fmt: skip
    return f"{key} {torch.device(r.device).type}", key


def timed(works: tuple[Callable[[], object], Callable[[], object]], device: str, seconds: float,
          per_call_s: float, min_pairs: int = 3) -> PairedTimer:  # fmt: skip
    """Paired rounds of (variant, frozen) until the ratio is sure or `seconds` pass."""
    timer = PairedTimer([works], device, per_call_s)
    timer.run(Budget(seconds, min_pairs, 10_000, target=0.01))
    return timer


class Phase:
    """What the generation and training measurements share: checking, the screen, and
    recording each timed variant."""

    mode = ""  # "infer" or "train"
    adapters = 1  # adapters a batch takes
    phases: tuple[str, ...] = ()  # the entries' phases
    case: tuple[str, str] = ("", "")  # (case, key) of the entries

    def __init__(self, p: Prepared, base: nn.Module, peft: nn.Module, out: Measured, say: Say,
                 trainable: int) -> None:  # fmt: skip
        self.p, self.base, self.peft, self.out, self.say = p, base, peft, out, say
        self.r = p.request
        self.trainable = trainable
        self.dtype = DTYPES[self.r.dtype_name]
        self.tolerance = models.MODEL_TOLERANCE[self.r.dtype_name]
        self.timed: dict[str, Any] = {}  # what each timed variant was built as
        self.best: str | None = None  # the screen's pick of ours
        self.plan_names: list[str] = []  # every variant the mode could time
        self.profiled: dict[str, Any] = {}  # PEFT's and the pick's builds, for the profile

    def variants(self) -> list[str]:
        """The fixed variants and the screen's pick of ours, in table order."""
        plan = uv.plan(self.mode, self.r.device, self.dtype, self.p.adapter.use_dora,
                       self.r.base_dtype)  # fmt: skip
        for name, why in plan.left.items():
            self.out.screened.append(f"{self.mode_label} {name}: {why}")
        self.plan_names = [*plan.fixed, *plan.candidates]
        best = self.best = self.screen(plan.candidates)
        return [plan.fixed[0], *([best] if best else []), *plan.fixed[1:]]

    @property
    def mode_label(self) -> str:
        return "generation" if self.mode == "infer" else "training"

    def screen(self, candidates: list[str]) -> str | None:
        """The candidate of ours with the lowest ratio to the frozen model in a short paired
        timing each; the others are said with their screen ratio."""
        scores: dict[str, tuple[float, tuple[float, float]]] = {}
        for name in candidates:
            try:
                built = self.prepare_variant(name)
            except FailedError as err:
                self.out.screened.append(f"{self.mode_label} {name}: {err}")
                continue
            timer = timed(self.works(built), self.r.device, SCREEN_SHARE * self.r.seconds,
                          self.per_call(built))  # fmt: skip
            summary = timer.paired().summary
            scores[name] = (summary.ratio, summary.ci)
            self.say(f"  screen {self.mode_label} {name}: {summary.ratio:.3f} x frozen")
        if not scores:
            return None
        best = min(scores, key=lambda n: scores[n][0])
        for name, (ratio, (lo, hi)) in scores.items():
            if name != best:
                self.out.screened.append(
                    f"{self.mode_label} {name}: screened out at {ratio:.3f} x frozen "
                    f"[{lo:.3f}, {hi:.3f}]; {best} read {scores[best][0]:.3f}"
                )
        return best

    def run(self) -> None:
        for name in self.variants():
            try:
                built = self.prepare_variant(name)
            except (FailedError, FuseError) as err:
                self.out.screened.append(f"{self.mode_label} {name}: {err}")
                continue
            self.say(f"  timing {self.mode_label} {name} ...")
            self.record(name, built)
            if self.r.compile and self.mode == "infer":  # its compiled twin comes after
                self.timed[name] = built
            if name in (uv.PEFT, self.best):
                self.profiled[name] = built
        self.profile()

    def profile(self) -> None:
        """Where the time of one call goes, for the frozen model, PEFT's and the best of
        ours (user_profile), outside every timed round; their paired medians beside."""
        entries = {e.variant: e for e in self.out.entries
                   if e.adapters == 1 and not e.compiled and e.phase in self.phases}  # fmt: skip
        if uv.PEFT not in entries:
            return
        self.say(f"  profiling {self.mode_label} ...")
        dims = user_profile.layer_dims(self.peft, self.dims_tokens)
        case, key = self.case
        ranks = [d.rank for d in dims] or [0]
        fields = {"case": case, "key": key, "shape": self.p.source.label,
                  "tokens": self.dims_tokens[0], "rank": max(set(ranks), key=ranks.count),
                  "dtype": self.r.dtype_name, "device": torch.device(self.r.device).type,
                  "mode": self.mode}  # fmt: skip
        medians = self.call_medians()
        frozen = medians[uv.PEFT][1]
        rows = [(user_profile.BASE_ROW, self.frozen_work(), (frozen, frozen))]
        rows += [(n, self.work_of(b), medians[n]) for n, b in self.profiled.items()
                 if n in medians]  # fmt: skip
        train = self.mode == "train"
        for label, work, paired in rows:
            entry = user_profile.profiled(work, label, self.r.device, dims, train, fields, paired)
            self.out.profiles.append(entry)

    def call_medians(self) -> dict[str, tuple[float, float]]:
        """Each timed variant's median seconds of a whole call, and its frozen model's: a
        generation's is its two phases' added."""
        out: dict[str, tuple[float, float]] = {}
        for e in self.out.entries:
            if e.adapters == 1 and not e.compiled and e.phase in self.phases:
                impl, base = out.get(e.variant, (0.0, 0.0))
                out[e.variant] = (impl + e.rounds.impl_median_s, base + e.rounds.base_median_s)
        return out

    def build(self, name: str) -> nn.Module:
        """The variant's model on PEFT's tensors; FailedError saying why where it cannot be
        built (from_peft's or fuse_modules' refusal: a LoRA layer ours cannot take)."""
        try:
            model, note = uv.build(name, self.peft)
        except FuseError as err:
            raise FailedError(str(err)) from None
        except ValueError as err:  # from_peft refuses the model, naming the layer
            raise FailedError(f"from_peft refuses this model: {err}") from None
        if note:
            self.out.notes.append(f"{self.mode_label} {name}: {note}")
        return model

    # implemented by each phase
    @property
    def dims_tokens(self) -> list[int]:
        """The token counts of the calls the adapted layers run."""
        raise NotImplementedError

    def frozen_work(self) -> Callable[[], object]:
        raise NotImplementedError

    def work_of(self, built: Any) -> Callable[[], object]:
        raise NotImplementedError

    def prepare_variant(self, name: str) -> Any:
        raise NotImplementedError

    def works(self, built: Any) -> tuple[Callable[[], object], Callable[[], object]]:
        raise NotImplementedError

    def per_call(self, built: Any) -> float:
        raise NotImplementedError

    def record(self, name: str, built: Any) -> None:
        raise NotImplementedError

    def entry(self, name: str, case: tuple[str, str], phase: str, rounds: Paired,
              compiled: bool = False, **figures: Any) -> UserModelEntry:  # fmt: skip
        return UserModelEntry(
            fullname=f"lora-bench model {case[0]} {name} {phase}", case=case[0], key=case[1],
            model=self.p.source.label, adapter=self.p.adapter.label, variant=name,
            origin=uv.origin(name), merged=uv.merged(name), compiled=compiled, phase=phase,
            batch=self.r.batch, adapters=self.adapters, dtype=self.r.dtype_name,
            device=torch.device(self.r.device).type, threads=self.r.threads,
            trainable=self.trainable, rounds=rounds, **figures,
        )  # fmt: skip


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
        vocab = int(self.p.source.config.vocab_size)
        g = torch.Generator().manual_seed(2)
        self.ids = torch.randint(0, vocab, (r.batch, r.prompt_tokens), generator=g).to(r.device)
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

    def prepare_variant(self, name: str) -> GenBuilt:
        synchronize(self.r.device)
        start = time.perf_counter()
        model = self.build(name)
        synchronize(self.r.device)
        build_s = time.perf_counter() - start
        d = self.decoder(model, name)
        tokens = d.generate()
        key = str(tokens.tolist())
        if key not in self.teacher:
            self.teacher = {key: gen.teacher_logits(self.reference, tokens)}
        want = self.teacher[key]
        choices = want[:, self.r.prompt_tokens - 1 : -1].argmax(-1)
        equal = float((choices == tokens).float().mean())
        error = rel_error(gen.teacher_logits(d, tokens), want)
        if not error <= self.tolerance:
            raise FailedError(f"logits rel error {error:.3g} against {self.reference_name} > "
                         f"{self.tolerance:g}; not timed")  # fmt: skip
        if self.r.dtype_name == "fp32" and equal < 1.0:
            raise FailedError(f"{equal:.1%} of its greedy tokens are {self.reference_name}'s; not "
                         "timed")  # fmt: skip
        if torch.device(self.r.device).type == "cuda":
            peak = cuda_peak(d.generate)
        else:
            peak = gen.stacked_bytes(model) + gen.cache_bytes(d.last_cache)
        return GenBuilt(model, d, equal, error, build_s, sum(d.phases[-1]), peak)

    def works(self, built: GenBuilt) -> tuple[Callable[[], object], Callable[[], object]]:
        return built.decoder.generate, self.frozen.generate

    def per_call(self, built: GenBuilt) -> float:
        return max(built.call_s, sum(self.frozen.phases[-1]))

    def record(self, name: str, built: GenBuilt, frozen: Any = None, compile_s: float = 0.0
               ) -> None:  # fmt: skip
        """Time the variant's whole generations in pairs with the frozen model's (`frozen`:
        its compiled decoder, for a compiled variant), an entry per phase."""
        frozen = frozen or self.frozen
        per_call = max(built.call_s, sum(frozen.phases[-1]))
        works = (built.decoder.generate, frozen.generate)
        paired = timed(works, self.r.device, self.r.seconds, per_call).paired()
        method = CUDA_MEMORY if torch.device(self.r.device).type == "cuda" else \
            CPU_MEMORY["generate"]  # fmt: skip
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
        peak = gen.stacked_bytes(self.base) + gen.cache_bytes(frozen.cache)
        link = GenBuilt(self.base, frozen, 1.0, 0.0, 0.0, sum(frozen.phases[-1]), peak)
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
            want = gen.teacher_logits(self.reference, tokens)
            choices = want[:, self.r.prompt_tokens - 1 : -1].argmax(-1)
            equal = float((choices == tokens).float().mean())
            if self.r.dtype_name == "fp32" and equal < 1.0:
                self.out.screened.append(
                    f"compiled generation {name}: {equal:.1%} of its greedy "
                    f"tokens are {self.reference_name}'s; not timed"
                )
                continue
            if torch.device(self.r.device).type == "cuda":
                peak = cuda_peak(d.generate)
            else:
                peak = gen.stacked_bytes(eager.model) + gen.cache_bytes(d.cache)
            built = GenBuilt(eager.model, d, equal, eager.error, eager.build_s,
                             sum(d.phases[-1]), peak)  # fmt: skip
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


@dataclass
class TrainBuilt:
    work: Callable[[], object]
    error: float
    build_s: float
    call_s: float
    peak: int


class Training(Phase):
    """A training step: forward, cross-entropy, backward, and AdamW on the adapter (lr 0, so
    the variants keep sharing one adapter)."""

    mode = "train"
    phases = ("train",)

    @property
    def dims_tokens(self) -> list[int]:
        return [self.r.batch * self.r.tokens]

    def frozen_work(self) -> Callable[[], object]:
        return self.frozen

    def work_of(self, built: Any) -> Callable[[], object]:
        return built.work

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        uv.set_trainable(self.peft, True)
        r = self.r
        vocab = int(self.p.source.config.vocab_size)
        g = torch.Generator().manual_seed(2)
        ids = torch.randint(0, vocab, (r.batch, r.tokens), generator=g).to(r.device)
        with torch.no_grad():
            embeds = self.base.get_input_embeddings()(ids)  # type: ignore[operator]
        self.inputs = models.Inputs(embeds, ids)
        self.case = case_name(self.p, f"B={r.batch} T={r.tokens}")
        self.frozen = models.train_work(self.base, self.inputs)
        self.frozen()
        self.frozen_s = _seconds(self.frozen, r.device)
        self.logits = models.forward(self.peft, self.inputs)
        self.peft.zero_grad(set_to_none=True)
        models.backward(self.peft, self.inputs)
        self.grads = {k: g.clone() for k, g in models.lora_grads(self.peft).items()}
        self.peft.zero_grad(set_to_none=True)

    def prepare_variant(self, name: str) -> TrainBuilt:
        synchronize(self.r.device)
        start = time.perf_counter()
        model = self.build(name)
        synchronize(self.r.device)
        build_s = time.perf_counter() - start
        errors = {"logits": rel_error(models.forward(model, self.inputs), self.logits)}
        model.zero_grad(set_to_none=True)
        models.backward(model, self.inputs)
        mine = models.lora_grads(model)
        model.zero_grad(set_to_none=True)
        if mine.keys() != self.grads.keys():
            raise FailedError("its LoRA parameters are not PEFT's; not timed")
        errors.update({k: rel_error(mine[k], g) for k, g in self.grads.items()})
        worst = max(errors, key=lambda k: errors[k])
        if not errors[worst] <= self.tolerance:
            raise FailedError(f"rel error {errors[worst]:.3g} ({worst}) against peft > "
                         f"{self.tolerance:g}; not timed")  # fmt: skip
        work = models.train_work(model, self.inputs)
        work()  # warm: AdamW's state
        if torch.device(self.r.device).type == "cuda":
            peak = cuda_peak(work)
        else:
            peak = tensor_bytes(model, work)
        return TrainBuilt(work, errors[worst], build_s, _seconds(work, self.r.device), peak)

    def works(self, built: TrainBuilt) -> tuple[Callable[[], object], Callable[[], object]]:
        return built.work, self.frozen

    def per_call(self, built: TrainBuilt) -> float:
        return max(built.call_s, self.frozen_s)

    def record(self, name: str, built: TrainBuilt) -> None:
        timer = timed(self.works(built), self.r.device, self.r.seconds, self.per_call(built))
        method = CUDA_MEMORY if torch.device(self.r.device).type == "cuda" else \
            CPU_MEMORY["train"]  # fmt: skip
        self.out.entries.append(self.entry(
            name, self.case, "train", timer.paired(), steps=1,
            tokens=self.r.batch * self.r.tokens, tokens_equal=1.0, rel_error=built.error,
            build_s=built.build_s, compile_s=0.0, peak_bytes=built.peak, memory_method=method,
        ))  # fmt: skip


def _seconds(fn: Callable[[], object], device: str) -> float:
    """Seconds of one call of `fn`, the device synchronized around it."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def lifecycle(p: Prepared, peft: Any, out: Measured, say: Say) -> None:
    """The adapter folder's load onto a model that holds LoRA layers (PEFT's load_adapter,
    ours load_adapter) and a merge into a copy of the weights (PEFT's merge_and_unload, ours
    merge), LIFECYCLE_REPEATS times each."""
    folder, device = p.adapter.folder, p.request.device
    assert folder is not None
    say("  timing the adapter's load and merge ...")
    ours = models.shared_copy(peft)
    from_peft(ours)
    peft_load: list[float] = []
    ours_load: list[float] = []
    why = ""
    if p.source.blocks < p.source.total_blocks:
        why = "with --blocks (the file holds the blocks left out, which PEFT drops and "
        why += "load_adapter refuses)"
    elif p.request.base_dtype:
        why = "on a quantized base (load_adapter takes LoRALinear layers)"
    if why:
        out.notes.append(f"adapter load: not timed {why}")
    for name in (f"load{i}" for i in range(LIFECYCLE_REPEATS)):
        if why:
            break
        peft_load.append(_seconds(functools.partial(peft.load_adapter, folder, name), device))
        peft.delete_adapter(name)
        ours_load.append(_seconds(functools.partial(load_adapter, ours, folder, name), device))
        delete_adapter(ours, name)
    peft_merge, ours_merge = [], []
    for _ in range(LIFECYCLE_REPEATS):
        copied = copy.deepcopy(peft)  # the copy is not the merge's: made before the clock
        peft_merge.append(_seconds(functools.partial(uv.merge_and_unload, copied), device))
        mine = copy.deepcopy(ours)
        ours_merge.append(_seconds(functools.partial(merge, mine), device))
    if peft_load:
        out.load_s.update({uv.PEFT: peft_load, "ours": ours_load})
    out.merge_s.update({uv.PEFT: peft_merge, "ours": ours_merge})
    say(f"  merge {statistics.median(peft_merge) * 1e3:.1f} ms (peft) / "
        f"{statistics.median(ours_merge) * 1e3:.1f} ms (ours)")  # fmt: skip
