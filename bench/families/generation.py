"""Generation with LoRA: greedy decoding with the KV cache on the whole models of the model
bench, a prompt then new tokens, for one adapter (PEFT's LoRA and DoRA, unmerged and merged,
and ours through from_peft) and for a batch whose sequences each take their own adapter
(PEFT's mixed batch, and ours through multi_from_peft); the variants and the decode loop."""

from __future__ import annotations

import contextlib
import copy
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bench.families import models
from bench.families.models import MODEL_DTYPES, ModelCase
from bench.harness.cases import Keyed
from bench.harness.rounds import Budget
from bench.harness.timing import synchronize
from lora_kernels import IMPLS, MULTI_IMPLS, adapter_batch, from_peft, multi_from_peft
from lora_kernels.multi.index import random_index

PHASES = ("prefill", "decode")  # the prompt to the first token; the other new - 1 tokens
MIXED_RANKS = (4, 8, 16)  # the adapters of a mixed batch take these ranks in turn
BASE_SHARE = 0.125  # of a mixed batch's sequences run on the base model alone
PEERS = {"lora": "peft", "dora": "peft_dora", "multi": "peft_mixed"}  # each kind's reference
MERGED = ("peft_merged", "merged", "dora_merged")  # the variants that fold the adapter into W


@dataclass(frozen=True)
class GenCase(Keyed):
    """`batch` sequences of `prompt` random tokens, then `new` tokens by greedy decoding, on
    `model` with LoRA of `rank` on all linear layers: one adapter (adapters=1) or `adapters`
    of ranks MIXED_RANKS, one per sequence (Zipf, some sequences on the base model), stacked
    to `r_max` (0: the largest rank)."""

    model: str
    batch: int
    prompt: int
    new: int
    adapters: int
    rank: int
    r_max: int
    dtype: str
    device: str

    @property
    def key(self) -> str:
        """The case without its device: how runs of two devices are matched."""
        ranks = f"r={self.rank}" if self.adapters == 1 else "r=mixed"
        pad = f" r_max={self.r_max}" if self.r_max else ""
        return (f"{self.model} B={self.batch} prompt={self.prompt} new={self.new} "
                f"n={self.adapters} {ranks}{pad} {self.dtype}")  # fmt: skip

    @property
    def model_case(self) -> ModelCase:
        return ModelCase(self.model, "all-linear", self.prompt, self.rank, self.dtype, self.device)

    def ranks(self) -> list[int]:
        return [MIXED_RANKS[i % len(MIXED_RANKS)] for i in range(self.adapters)]

    def names(self) -> list[str | None]:
        """Each sequence's adapter ("a0", "a1", ...; None: the base model), Zipf-drawn."""
        index = random_index("zipf", self.batch, self.adapters, base_share=BASE_SHARE, seed=3)
        return [None if i < 0 else f"a{i}" for i in index.tolist()]


@dataclass(frozen=True)
class GenJob:
    """One variant of one case: a test of the generation bench, which times both phases."""

    case: GenCase
    variant: str

    def __str__(self) -> str:
        return f"{self.variant} {self.case}"


@dataclass(frozen=True)
class GenProfile:
    """A profile's generation cases as (model, batch, prompt, new, adapters, r_max), on the
    CPU and on CUDA; which variants run (None: PEFT's and every one of ours that runs on the
    device); the paired rounds' budget (a round: one whole generation)."""

    grid: tuple[tuple[str, int, int, int, int, int], ...]
    cuda_grid: tuple[tuple[str, int, int, int, int, int], ...]
    only: tuple[str, ...] | None
    budget: Budget


GEN_PROFILES: dict[str, GenProfile] = {
    "tiny": GenProfile((("llama-tiny", 1, 16, 4, 1, 0), ("llama-tiny", 4, 16, 4, 2, 0)), (),
                       ("peft", "addmm", "peft_dora", "dora_cached", "peft_mixed", "segments"),
                       Budget(0.05, 3, 5, target=0.05)),
    # The quick cases: one adapter at batch 1, 4 adapters over a batch of 8. PEFT's
    # forms, our fastest eager impl (on CUDA also the graph and the fused kernel), our DoRA
    # for inference and our segmented multi-adapter impl; PEFT's DoRA (which recomputes its
    # norm every step: about 20x the frozen decode here, a minute a round), max-rank padding
    # and the rest run in full.
    "quick": GenProfile(
        (("llama-cpu", 1, 128, 32, 1, 0), ("llama-cpu", 8, 128, 32, 4, 0)),
        (("llama3-8b-2blocks", 1, 512, 64, 1, 0), ("llama3-8b-2blocks", 8, 512, 64, 4, 0)),
        ("peft", "peft_merged", "addmm", "cuda_graph", "triton_fused", "dora_cached",
         "peft_mixed", "segments", "triton_sgmv"),
        Budget(1.0, 3, 11, target=0.02),
    ),
    "full": GenProfile(
        (("llama-cpu", 1, 128, 32, 1, 0), ("llama-cpu", 1, 512, 64, 1, 0),
         ("llama-cpu", 8, 128, 32, 4, 0), ("llama-cpu", 8, 128, 32, 4, 128),
         ("llama-cpu", 16, 128, 32, 16, 0), ("gpt2-2blocks", 1, 128, 32, 1, 0)),
        (("llama3-8b-2blocks", 1, 512, 64, 1, 0), ("llama3-8b-2blocks", 8, 512, 64, 4, 0),
         ("llama3-8b-2blocks", 8, 512, 64, 4, 128)),
        None, Budget(6.0, 7, 21, target=0.01),
    ),
}  # fmt: skip
RANK = models.RANK


def gen_cases(profile: str, devices: list[str]) -> list[GenCase]:
    spec = GEN_PROFILES[profile]
    return [
        GenCase(model, batch, prompt, new, n, RANK, r_max, MODEL_DTYPES[device], device)
        for device in devices
        for model, batch, prompt, new, n, r_max in spec.grid
        + (spec.cuda_grid if device == "cuda" else ())
    ]


def kind_of(variant: str) -> str:
    """ "lora", "dora" or "multi": which reference the variant is checked against."""
    if variant in MULTI_IMPLS:
        return "multi"
    return "dora" if variant == "peft_dora" or IMPLS[variant].variant == "dora" else "lora"


def gen_variants(case: GenCase, only: tuple[str, ...] | None) -> list[str]:
    """PEFT's variants, then each of ours that runs on the device; those in `only`. A case
    padded to r_max runs ours alone (PEFT keeps each adapter at its rank)."""
    dtype = models.DTYPES[case.dtype]

    def ours(registry: dict[str, Any], variant: str | None) -> list[str]:
        return [
            name for name, impl in registry.items()
            if impl.origin == "ours" and (variant is None or impl.variant == variant)
            and getattr(impl, "lora_equivalent", True)
            and not impl.unavailable_reason(case.device, dtype, "infer")
        ]  # fmt: skip

    if case.adapters > 1:
        names = ([] if case.r_max else ["peft_mixed"]) + ours(MULTI_IMPLS, None)
    else:
        names = ["peft", "peft_merged", *ours(IMPLS, "lora"), "peft_dora", *ours(IMPLS, "dora")]
    return [n for n in names if only is None or n in only]


def gen_jobs(profile: str, devices: list[str]) -> list[GenJob]:
    """Every (case, variant) of the profile."""
    only = GEN_PROFILES[profile].only
    return [
        GenJob(case, variant)
        for case in gen_cases(profile, devices)
        for variant in gen_variants(case, only)
    ]


# --- the models ------------------------------------------------------------------------------


def peft_lora(base: nn.Module, case: GenCase, dora: bool = False) -> nn.Module:
    """PEFT's LoRA of the case's rank on every linear layer of a shared copy of `base`, A and
    B random; with DoRA a magnitude off the norms (so DoRA's own term counts)."""
    from peft import LoraConfig, get_peft_model

    gpt2 = models.MODELS[case.model].hf["model_type"] == "gpt2"  # Conv1D: W stored (in, out)
    config = LoraConfig(r=case.rank, lora_alpha=2 * case.rank, target_modules="all-linear",
                        init_lora_weights=False, use_dora=dora, fan_in_fan_out=gpt2)  # fmt: skip
    torch.manual_seed(1)
    model = get_peft_model(models.shared_copy(base), config, autocast_adapter_dtype=False)
    if dora:
        gen = torch.Generator().manual_seed(4)
        for name, p in model.named_parameters():
            if "magnitude" in name:
                p.data.mul_((torch.rand(p.shape, generator=gen) + 0.5).to(p.device, p.dtype))
    return model.eval().requires_grad_(False)


def peft_mixed(base: nn.Module, case: GenCase) -> nn.Module:
    """PEFT's model holding adapters a0..a{n-1} of MIXED_RANKS on every linear layer."""
    from peft import LoraConfig, get_peft_model

    model: Any = None
    for i, r in enumerate(case.ranks()):
        config = LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear",
                            init_lora_weights=False)  # fmt: skip
        torch.manual_seed(10 + i)
        if model is None:
            model = get_peft_model(models.shared_copy(base), config, adapter_name=f"a{i}",
                                   autocast_adapter_dtype=False)  # fmt: skip
        else:
            model.add_adapter(f"a{i}", config)
    return model.eval().requires_grad_(False)


def build(variant: str, reference: nn.Module, case: GenCase) -> nn.Module:
    """The model of one variant, from its kind's PEFT reference (sharing its tensors, but a
    merge, which takes its own copy of the weights)."""
    if variant in PEERS.values():
        return reference
    if variant == "peft_merged":
        peft: Any = copy.deepcopy(reference)  # a PeftModel
        return peft.merge_and_unload()
    model = models.shared_copy(reference)
    if variant in MULTI_IMPLS:
        multi_from_peft(model, impl=variant, r_max=case.r_max or None)
    else:
        from_peft(model, impl=variant)
    return model


# --- greedy decoding -------------------------------------------------------------------------


def _cache_arg(model: nn.Module) -> str:
    """The cache's keyword: "cache" in recent transformers, "past_key_values" before."""
    inner: Any = model
    while hasattr(inner, "base_model") and inner.base_model is not inner:
        inner = inner.base_model
    forward = getattr(getattr(inner, "model", inner), "forward", inner.forward)
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


@dataclass
class Decoder:
    """Greedy decoding of one model with the KV cache: `prefill` runs the prompt and gives the
    first token, `decode` the next new - 1 from a copy of the prompt's cache. `context` wraps
    every call (an adapter batch), `kwargs` go to every forward (PEFT's adapter_names)."""

    model: nn.Module
    ids: Tensor  # (batch, prompt)
    new: int
    kwargs: dict[str, Any]
    context: Callable[[], Any]
    device: str = "cpu"
    cache_arg: str = ""
    prompt_cache: Any = None
    first: Tensor | None = None
    last_cache: Any = None  # the cache after the latest decode: prompt and new tokens
    phases: list[tuple[float, float]] = field(default_factory=list)  # (prefill, decode) s

    def __post_init__(self) -> None:
        self.cache_arg = self.cache_arg or _cache_arg(self.model)

    def _forward(self, ids: Tensor, cache: Any) -> tuple[Tensor, Any]:
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1,
                         **{self.cache_arg: cache}, **self.kwargs)  # fmt: skip
        cache = getattr(out, "cache", None) or out.past_key_values
        return out.logits[:, -1].argmax(-1), cache

    @torch.no_grad()
    def prefill(self) -> Tensor:
        """The first new token (batch,); keeps the prompt's cache for `decode`."""
        with self.context():
            self.first, self.prompt_cache = self._forward(self.ids, None)
        return self.first

    @torch.no_grad()
    def decode(self) -> Tensor:
        """Tokens 2..new (batch, new - 1) from the prompt's cache (copied, kept as it was)."""
        if self.first is None:
            self.prefill()
        token, cache, out = self.first, copy.deepcopy(self.prompt_cache), []
        with self.context():
            for _ in range(self.new - 1):
                token, cache = self._forward(token[:, None], cache)  # type: ignore[index]
                out.append(token)
        self.last_cache = cache
        return torch.stack(out, 1)

    def generate(self) -> Tensor:
        """All new tokens (batch, new); each phase's seconds are appended to `phases` (the
        device synchronized around each)."""
        synchronize(self.device)
        start = time.perf_counter()
        first = self.prefill()
        synchronize(self.device)
        middle = time.perf_counter()
        rest = self.decode()
        synchronize(self.device)
        self.phases.append((middle - start, time.perf_counter() - middle))
        return torch.cat([first[:, None], rest], 1)


def decoder(model: nn.Module, variant: str, case: GenCase, ids: Tensor) -> Decoder:
    """The decoder of a variant: PEFT's mixed batch passes adapter_names to each forward, ours
    runs inside adapter_batch; the others run as they are."""
    names = case.names()
    kwargs: dict[str, Any] = {}
    context: Callable[[], Any] = contextlib.nullcontext
    if variant == "peft_mixed":
        kwargs["adapter_names"] = ["__base__" if n is None else n for n in names]
    elif variant in MULTI_IMPLS:
        context = lambda: adapter_batch(model, names)  # noqa: E731
    return Decoder(model, ids, case.new, kwargs, context, case.device)


def prompt_ids(case: GenCase) -> Tensor:
    gen = torch.Generator().manual_seed(2)
    vocab = models.MODELS[case.model].vocab
    return torch.randint(0, vocab, (case.batch, case.prompt), generator=gen).to(case.device)


def hf_tokens(model: Any, case: GenCase, ids: Tensor) -> Tensor:  # a transformers model
    """New tokens (batch, new) of transformers' generate, greedy, with no stop token."""
    config = copy.deepcopy(model.generation_config)
    config.eos_token_id = None
    mask = torch.ones_like(ids)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, pad_token_id=0,
                         max_new_tokens=case.new, generation_config=config)  # fmt: skip
    return out[:, ids.shape[1] :]


def teacher_logits(d: Decoder, tokens: Tensor) -> Tensor:
    """Logits (batch, prompt + new, vocab) of one forward over the prompt and `tokens`."""
    with torch.no_grad(), d.context():
        full = torch.cat([d.ids, tokens], 1)
        return d.model(input_ids=full, use_cache=False, **d.kwargs).logits


def stacked_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers, each storage once."""
    return models.unique_bytes([*model.parameters(), *model.buffers()])


def cache_bytes(cache: Any) -> int:
    """Bytes of the tensors a KV cache holds."""
    seen: list[Tensor] = []

    def visit(obj: Any, depth: int) -> None:
        if isinstance(obj, Tensor):
            seen.append(obj)
        elif depth < 4 and isinstance(obj, (list, tuple)):
            for item in obj:
                visit(item, depth + 1)
        elif depth < 4 and hasattr(obj, "__dict__"):
            for item in vars(obj).values():
                visit(item, depth + 1)

    visit(cache, 0)
    return models.unique_bytes(seen)
