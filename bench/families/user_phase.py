"""What the measured modes of `lora-bench model` share (Phase): the variants of a mode, the
short screen that picks the best of ours, building each variant on PEFT's tensors, recording
its paired timing as entries, and where the time goes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bench.families import models, user_profile
from bench.families import user_variants as uv
from bench.families.user_request import FailedError, Measured, Prepared, Say
from bench.harness.cases import DTYPES
from bench.harness.rounds import Budget
from bench.harness.timing import PairedTimer, make_round, synchronize, time_call
from bench.schema.entries import Paired, UserModelEntry
from lora_kernels import FuseError

SCREEN_SHARE = 0.25  # of --seconds, each candidate's screen


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

    def random_ids(self, tokens: int) -> torch.Tensor:
        """Seeded token ids (batch, tokens) from the model's vocabulary, on the device."""
        vocab = int(self.p.source.config.vocab_size)
        g = torch.Generator().manual_seed(2)
        return torch.randint(0, vocab, (self.r.batch, tokens), generator=g).to(self.r.device)

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

    def build_timed(self, name: str) -> tuple[nn.Module, float]:
        """The variant's model (build) and the seconds its build took, synchronized."""
        built: list[nn.Module] = []
        seconds = seconds_of(lambda: built.append(self.build(name)), self.r.device)
        return built[0], seconds

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


def seconds_of(fn: Callable[[], object], device: str) -> float:
    """Seconds of one call of `fn`, the device synchronized around it."""
    synchronize(device)
    return time_call(make_round(fn, 1, device))
